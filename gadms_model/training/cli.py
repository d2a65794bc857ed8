"""`gadms train --config FILE [--resume]`: pre-train or fine-tune from a YAML config.

Under torchrun every process runs this command: `torchrun --nproc-per-node 8 -m flows.cli train --config ...`.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config (YAML); see gadms_model/training/config.py")
    parser.add_argument("--resume", action="store_true", help="continue exactly from the latest checkpoint of output_dir")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from gadms_model.training import TrainConfig, train
    from gadms_model.training.distributed import shutdown
    from storage.configfile import load_config

    config = load_config(args.config, TrainConfig)
    try:
        result = train(config, resume=args.resume)
    finally:
        shutdown()
    if result.best_metrics:
        print(json.dumps({"checkpoint": result.checkpoint_path, "validation": result.best_metrics}))
    return 0
