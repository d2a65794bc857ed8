"""`gadms browse --root R [--checkpoint CKPT] [--port 8080] [--host 127.0.0.1]`: look at a built WebPerson root
(its samples, rejects and runs, and with a checkpoint a text search) in a browser."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="WebPerson output root (with catalog.duckdb)")
    parser.add_argument("--checkpoint", default=None, help="a `gadms train` checkpoint: enables the search page")
    parser.add_argument("--index", default=None,
                        help="gallery index file (default: the cache `gadms search` uses, ~/.cache/gadms/index/)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.browse.server import open_root, serve
    from storage.errors import check_range

    check_range("--port", args.port, 0, 65535)
    con, searcher = open_root(args.root, args.checkpoint, args.index)
    try:
        serve(con, args.root, searcher, args.host, args.port)
    finally:
        con.close()
    return 0
