"""`gadms export`: complete shards → the public WebPerson layout of the Hugging Face Hub."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="output root with shards/ and manifest/")
    parser.add_argument("--out", required=True, help="folder outside the root for data/train-*.parquet and README.md")
    parser.add_argument("--license", help="Hugging Face license id for the dataset card, e.g. cc-by-4.0 or other")
    parser.add_argument("--blur-faces", action="store_true",
                        help="blur the face boxes the detect stage stored (face_boxes) in the exported images")
    parser.add_argument("--takedown-list", metavar="FILE", action="append", default=[],
                        help="blocklist whose samples are never written, besides the lists applied to the root "
                             "(<root>/takedown/); repeatable")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from storage.export import export_public

    paths = export_public(args.root, args.out, license=args.license, blur_faces=args.blur_faces,
                          takedown_lists=tuple(args.takedown_list))
    blurred = ", faces blurred" if args.blur_faces else ""
    print(f"exported {len(paths)} shard(s) to {args.out} (data/ and README.md{blurred})")
    if not args.license:
        print("gadms export: warning: no --license given; the card says `license: unknown`: set it before publishing",
              file=sys.stderr)
    return 0
