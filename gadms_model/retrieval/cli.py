"""`gadms search --checkpoint CKPT --gallery CATALOG|DIR "a woman in a red coat" [-k 10]`.

Embeds the gallery once (cached index file), prints rank, score, id and caption of the top k, and writes a
contact sheet PNG of their crops.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="text description of the person")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by `gadms train`")
    parser.add_argument("--gallery", required=True,
                        help="WebPerson output root or its catalog.duckdb, a public-release Parquet folder, or an image folder")
    parser.add_argument("-k", type=int, default=10, help="results to show (default 10)")
    parser.add_argument("--index", default=None, help="index file (default: ~/.cache/gadms/index/<checkpoint>-<gallery>.pt)")
    parser.add_argument("--sheet", default="search_results.png", help="contact sheet PNG to write")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print results as JSON lines")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from gadms_model.retrieval import search

    from storage.devices import default_device, existing_device
    from storage.errors import GadmsError, check_range
    from storage.fs import make_folder, refuse_folder

    if not args.query.strip():
        raise GadmsError('the query is empty: describe the person, e.g. "a woman in a red coat"')
    check_range("-k", args.k, 1, 100_000)
    check_range("--batch-size", args.batch_size, 1, 65536)
    # The contact sheet is written last, after the gallery is embedded: its path is checked first.
    refuse_folder(args.sheet, "contact sheet (--sheet)")
    make_folder(os.path.dirname(os.path.abspath(args.sheet)), "contact sheet's folder")
    device = existing_device(args.device, "--device") if args.device else default_device()
    results = search(args.checkpoint, args.gallery, args.query, args.k, device=device, index_path=args.index,
                     sheet_path=args.sheet, batch_size=args.batch_size)
    for hit in results.hits:
        if args.json:
            print(json.dumps(hit))
        else:
            print(f"{hit['rank']:>3}  {hit['score']:.4f}  {hit['id']}  {hit['caption']}")
    if not args.json:
        built = "built" if results.index_built else "cached"
        print(f"index: {results.index_path} ({built}); contact sheet: {results.sheet_path}")
    return 0
