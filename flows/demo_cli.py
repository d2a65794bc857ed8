"""`gadms demo`: run the whole system offline on a synthetic web (see flows/demo.py)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder: empty or absent, or an interrupted demo's folder to continue it")
    parser.add_argument("--images", type=int, default=2000, help="scenes rendered into the synthetic web")
    parser.add_argument("--train-steps", type=int,
                        help="optimiser steps of the small GA-DMS (default: the demo's budget, "
                             "flows.demo.DEMO_TRAIN_STEPS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shlex

    from flows.demo import DEMO_TRAIN_STEPS, demo_progress, run_demo
    from flows.interrupt import leave_promptly_on_ctrl_c
    from storage.fs import refuse_file

    refuse_file(args.out, "demo output folder")
    steps = DEMO_TRAIN_STEPS if args.train_steps is None else args.train_steps
    demo_progress(args.out, args.images, args.seed, steps)  # a bad argument fails here, before Prefect starts
    leave = leave_promptly_on_ctrl_c(
        "demo", f"rerun `gadms demo --out {shlex.quote(str(args.out))}` with the same arguments to continue")
    try:
        run_demo(args.out, images=args.images, seed=args.seed, train_steps=steps)
    except KeyboardInterrupt:
        leave()
    return 0
