"""`gadms synthweb ACTION`: the synthetic web's actions (curation.synthweb.cli) plus `train-clip`, which trains a
model on it and so is wired here, where both curation and gadms_model may be imported."""
from __future__ import annotations

import argparse
from pathlib import Path

from curation.synthweb.cli import add_arguments as add_site_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = add_site_arguments(parser)
    clip = sub.add_parser("train-clip", help="align the demo CLIP on coarse captions of synthetic identities")
    clip.add_argument("--out", required=True, help="work folder: rendered identities, model/, synthweb-clip-demo/")
    clip.add_argument("--identities", type=int, default=3000, help="training identities (default 3000)")
    clip.add_argument("--images-per-identity", type=int, default=4)
    clip.add_argument("--val-identities", type=int, default=100, help="model selection identities (coarse too)")
    clip.add_argument("--steps", type=int, default=3000, help="optimiser steps (default 3000)")
    clip.add_argument("--batch-size", type=int, default=64)
    clip.add_argument("--lr", type=float, default=5e-4)
    clip.add_argument("--num-workers", type=int, default=1, help="data-loader workers")
    clip.add_argument("--seed", type=int, default=0)
    clip.add_argument("--clip-model", default="gadms-tiny",
                      help="open_clip model config (default gadms-tiny, the demo CLIP; ViT-B-16 on a GPU host)")
    clip.add_argument("--image-size", type=int, nargs=2, default=[128, 64], metavar=("H", "W"))
    clip.set_defaults(func=_train_clip)


def _train_clip(args) -> int:
    from flows.demo_clip import DEMO_CLIP_DIR, DemoClipConfig, train_demo_clip
    from storage.configfile import validate_config

    options = {name: getattr(args, name) for name in DemoClipConfig.model_fields if hasattr(args, name)}
    report = train_demo_clip(validate_config(options, DemoClipConfig, "train-clip options"))
    val = report["val_coarse"] or {}
    print(f"demo CLIP: {report['steps']} steps, val (coarse captions) R@1 {val.get('R1', float('nan')):.1f} "
          f"mAP {val.get('mAP', float('nan')):.1f}; {report['weights']} ({report['weights_bytes']:,} bytes)")
    if Path(report["weights"]).parent.name == DEMO_CLIP_DIR.name:
        print(f"to ship it: copy {Path(report['weights']).parent}/* to {DEMO_CLIP_DIR}/")
    return 0
