"""`gadms catalog refresh|info`: (re)build the DuckDB catalog of an output root, or summarise it."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    refresh = sub.add_parser("refresh", help="rebuild the views over the complete shards of an output root")
    refresh.add_argument("--root", required=True, help="output root (local folder or fsspec URL)")
    refresh.add_argument("--catalog", default=None, help="catalog file (default: <root>/catalog.duckdb)")
    refresh.set_defaults(func=run_refresh)
    info = sub.add_parser("info", help="shards, samples, rejects and runs in a catalog")
    info.add_argument("--catalog", default="catalog.duckdb")
    info.set_defaults(func=run_info)


def run_refresh(args: argparse.Namespace) -> int:
    from storage.catalog import refresh

    path = refresh(args.root, args.catalog)
    print(f"catalog refreshed: {path}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from storage.catalog import connect

    con = connect(args.catalog)
    try:
        samples, = con.execute("SELECT count(*) FROM samples").fetchone()
        rejects, = con.execute("SELECT count(*) FROM rejects").fetchone()
        shards, size = con.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM manifest").fetchone()
        runs = con.execute("SELECT run_id, flow, status, finished_at FROM runs ORDER BY started_at").fetchall()
    finally:
        con.close()
    print(f"shards   {shards} ({size / 1e6:.1f} MB)\nsamples  {samples}\nrejects  {rejects}\nruns     {len(runs)}")
    for run_id, flow, status, finished in runs:
        print(f"  {run_id}  {flow}  {status}  {finished}")
    return 0
