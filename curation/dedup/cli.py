"""`gadms dedup seed-benchmark`: put a benchmark's val and test images into a root's dedup index (the benchmark
contamination guard, curation.dedup.benchmark)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    seed = sub.add_parser("seed-benchmark", help="seed the dedup index with a benchmark's val and test images")
    seed.add_argument("--dataset", required=True, help="cuhk-pedes, icfg-pedes or rstpreid (any case)")
    seed.add_argument("--root", required=True, help="folder holding the benchmark's released layout (or its parent)")
    seed.add_argument("--index", required=True, metavar="DIR",
                      help="the dedup index folder of an output root: <output_root>/dedup (created if missing)")
    seed.set_defaults(func=run_seed)


def run_seed(args: argparse.Namespace) -> int:
    from curation.dedup.benchmark import seed_benchmark
    from curation.dedup.index import DedupIndex

    seed = seed_benchmark(DedupIndex.open(args.index), args.dataset, args.root)
    state = "already seeded from the same annotation file" if seed.skipped else "seeded"
    print(f"{seed.dataset}: {seed.images} val/test image(s) {state} in {args.index}")
    return 0
