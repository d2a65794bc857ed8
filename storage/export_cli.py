"""`gadms export`: complete shards → the public WebPerson layout."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="output root with shards/ and manifest/")
    parser.add_argument("--out", required=True, help="folder for the public-layout Parquet files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from storage.export import export_public

    paths = export_public(args.root, args.out)
    print(f"exported {len(paths)} shard(s) to {args.out}")
    return 0
