"""`gadms export-model CKPT OUT`: a checkpoint's retrieval towers as a folder open_clip loads
(`open_clip.create_model_and_transforms("local-dir:OUT")`)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint written by `gadms train` (best.pt, final.pt, step-*.pt)")
    parser.add_argument("out", help="output folder: open_clip_model.safetensors, open_clip_config.json, README.md")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gadms_model.export.open_clip_dir import export_open_clip

    weights = export_open_clip(args.checkpoint, args.out)
    print(f"wrote {weights.parent} (open_clip: create_model_and_transforms('local-dir:{weights.parent}'))")
    return 0
