"""The retrieval towers of a GA-DMS checkpoint as a folder that `open_clip.create_model("local-dir:OUT")` loads.

A checkpoint nests the weights under "model" with the CLIP under "towers.clip." beside the training heads
(mtp_head, classifier), so open_clip cannot read it directly. The folder holds what open_clip reads from the
Hub: open_clip_model.safetensors (the CLIP state dict in open_clip's key layout) and open_clip_config.json
(model_cfg with the trained image size and the activation, preprocess_cfg), plus a short README.md.
"""
from __future__ import annotations

import json
from pathlib import Path

from storage.errors import GadmsError

WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"


def open_clip_config(model) -> dict:
    """open_clip_config.json of a GADMS model: its CLIP config at the trained image size and context length,
    the activation it was built with, and the eval preprocessing (CLIP mean/std, squash-resize to H×W)."""
    from gadms_model.data.transforms import CLIP_MEAN, CLIP_STD
    from gadms_model.towers import load_model_config

    config = model.config
    model_cfg = load_model_config(config.clip_model)
    model_cfg = dict(model_cfg,
                     vision_cfg=dict(model_cfg["vision_cfg"], image_size=list(config.image_size)),
                     text_cfg=dict(model_cfg["text_cfg"], context_length=config.context_length),
                     quick_gelu=config.quick_gelu)
    # eval_transform is Resize((H, W)) (bilinear, aspect not kept) then Normalize: open_clip's "squash".
    preprocess_cfg = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bilinear",
                      "resize_mode": "squash"}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def model_card(checkpoint: Path, config: dict) -> str:
    vision, text = config["model_cfg"]["vision_cfg"], config["model_cfg"]["text_cfg"]
    height, width = vision["image_size"]
    activation = "QuickGELU" if config["model_cfg"]["quick_gelu"] else "GELU"
    return f"""# GA-DMS retrieval towers (open_clip format)

Exported by `gadms export-model` from `{checkpoint.name}`: the CLIP image and text towers of a GA-DMS
text-to-person retrieval model, without its training heads.

- images: {height}×{width} (height × width), resized without keeping the aspect ratio, CLIP mean/std
- text: context length {text["context_length"]}; activation: {activation}

```python
import open_clip
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:THIS_FOLDER")
tokenizer = open_clip.get_tokenizer("local-dir:THIS_FOLDER")
```

GA-DMS's tokenizer gives id 49405 to `<|mask|>` in place of CLIP's last BPE merge ("jekyll"); open_clip's
tokenizer gives the same ids for any caption without that word.
"""


def export_open_clip(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write the checkpoint's CLIP towers to `out_dir` (created); returns the weights file."""
    from safetensors.torch import save_file

    from gadms_model.checkpoint import load_model

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    model = load_model(checkpoint)  # weights only; a bad file fails with one line naming it
    config = open_clip_config(model)
    if out_dir.exists() and not out_dir.is_dir():
        raise GadmsError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {key: value.contiguous() for key, value in model.towers.clip.state_dict().items()}
    weights = out_dir / WEIGHTS_FILE
    save_file(state, str(weights), metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(model_card(checkpoint, config), encoding="utf-8")
    return weights
