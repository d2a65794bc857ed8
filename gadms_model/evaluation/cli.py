"""`gadms eval --checkpoint CKPT --dataset NAME --root DIR [--json]`: the standard text→image protocol.

Repeat --dataset/--root pairs to fill the paper's whole table in one call. `--model-config FILE` instead of
`--checkpoint` evaluates an untrained model built from a ModelConfig YAML (zero-shot CLIP from its weights).
"""
from __future__ import annotations

import argparse

DATASETS = ("cuhk-pedes", "icfg-pedes", "rstpreid")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint written by `gadms train` (best.pt, final.pt, step-*.pt)")
    source.add_argument("--model-config", help="zero-shot: a ModelConfig YAML (e.g. clip_model + pretrained)")
    parser.add_argument("--dataset", action="append", required=True, choices=DATASETS, help="benchmark (repeatable)")
    parser.add_argument("--root", action="append", required=True, help="its root folder (one per --dataset)")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--i2t", action="store_true", help="also report image→text metrics")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--name", default=None, help="row label of the table (default: the checkpoint path)")
    parser.add_argument("--json", action="store_true", help="print {dataset: metrics} as JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from gadms_model.evaluation.runner import evaluate_model, format_table
    from storage.devices import default_device, existing_device
    from storage.errors import GadmsError, check_range

    check_range("--batch-size", args.batch_size, 1, 65536)
    check_range("--num-workers", args.num_workers, 0, 256)
    if len(args.dataset) != len(args.root):
        raise GadmsError(f"give one --root per --dataset ({len(args.dataset)} datasets, {len(args.root)} roots)")
    device = existing_device(args.device, "--device") if args.device else default_device()
    if args.checkpoint:
        from gadms_model.checkpoint import load_model

        model = load_model(args.checkpoint, device)
    else:
        from gadms_model.model import ModelConfig, build_model
        from storage.configfile import load_config

        model = build_model(load_config(args.model_config, ModelConfig)).to(device).eval()
    results = {
        name: evaluate_model(model, name, root, args.split, device, args.batch_size, args.num_workers,
                             progress=True, i2t=args.i2t)
        for name, root in zip(args.dataset, args.root)
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table({args.name or args.checkpoint or args.model_config: results}))
    return 0
