"""`gadms stats`: caption statistics of a catalog."""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", default="catalog.duckdb", help="catalog file (default: ./catalog.duckdb)")
    parser.add_argument("--top", type=int, default=10, help="how many top words/templates/domains to list")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from storage.catalog import connect
    from storage.errors import check_range
    from storage.stats import caption_stats, format_stats

    check_range("--top", args.top, 1, 100_000)
    con = connect(args.catalog, read_only=True)
    try:
        stats = caption_stats(con, top=args.top)
    finally:
        con.close()
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0
