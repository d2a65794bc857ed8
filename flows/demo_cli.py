"""`gadms demo`: run the whole system offline on a synthetic web (see flows/demo.py)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (must be empty or absent)")
    parser.add_argument("--images", type=int, default=2000, help="scenes rendered into the synthetic web")
    parser.add_argument("--train-steps", type=int, default=1000, help="optimiser steps of the small GA-DMS")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.demo import run_demo
    from storage.fs import refuse_file

    refuse_file(args.out, "demo output folder")
    run_demo(args.out, images=args.images, seed=args.seed, train_steps=args.train_steps)
    return 0
