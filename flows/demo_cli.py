"""`gadms demo`: run the whole system offline on a synthetic web (see flows/demo.py)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (must be empty or absent)")
    parser.add_argument("--images", type=int, default=2000, help="scenes rendered into the synthetic web")
    parser.add_argument("--train-steps", type=int,
                        help="optimiser steps of the small GA-DMS (default: the demo's budget, "
                             "flows.demo.DEMO_TRAIN_STEPS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.demo import run_demo
    from storage.fs import refuse_file

    refuse_file(args.out, "demo output folder")
    steps = {} if args.train_steps is None else {"train_steps": args.train_steps}
    run_demo(args.out, images=args.images, seed=args.seed, **steps)
    return 0
