"""Which MLP activation the CLIP towers use: QuickGELU (x·σ(1.702x), OpenAI's CLIP weights) or GELU (open_clip's
LAION/DataComp weights, unless the model name ends in -quickgelu).

A state-dict file does not say which its weights were trained with, and the wrong one changes embeddings by
about 1e-3 without any error. So the choice comes from where it is known (the model config, an exported folder's
open_clip_config.json, open_clip's pretrained tag); an explicit `quick_gelu` that contradicts them fails, and a
bare file with no explicit choice is loaded as QuickGELU with a warning naming that assumption.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from storage.compat import ensure_torchvision_ops
from storage.errors import GadmsError

# The paper fine-tunes OpenAI's CLIP; random-init models (tests, the demo) follow it.
DEFAULT_QUICK_GELU = True


def known_quick_gelu(clip_model: str, model_config: dict, pretrained: str | None) -> tuple[bool, str] | None:
    """(quick_gelu, where it was read) when the model config or the pretrained weights say; else None."""
    if "quick_gelu" in model_config:
        return bool(model_config["quick_gelu"]), f"clip_model {clip_model!r}"
    if pretrained is None:
        return None
    path = Path(pretrained)
    if path.exists():
        sidecar = path.parent / "open_clip_config.json"  # written beside the weights by open_clip / export-model
        if sidecar.is_file():
            try:
                model_cfg = json.loads(sidecar.read_text(encoding="utf-8")).get("model_cfg", {})
            except (OSError, json.JSONDecodeError, AttributeError) as exc:
                raise GadmsError(f"{sidecar}: not a readable open_clip config: {exc}") from None
            return bool(model_cfg.get("quick_gelu", False)), str(sidecar)  # open_clip's default is GELU
        return None
    ensure_torchvision_ops()
    import open_clip

    tag_config = open_clip.get_pretrained_cfg(clip_model, pretrained)
    if tag_config:
        return bool(tag_config.get("quick_gelu", False)), f"open_clip tag {pretrained!r} of {clip_model!r}"
    return None


def resolve_quick_gelu(clip_model: str, model_config: dict, pretrained: str | None, quick_gelu: bool | None
                       ) -> bool:
    """The activation to build with: the configured one, checked against what is known, else the known one."""
    known = known_quick_gelu(clip_model, model_config, pretrained)
    if known is not None:
        value, source = known
        if quick_gelu is not None and quick_gelu != value:
            raise GadmsError(f"quick_gelu {str(quick_gelu).lower()} contradicts {source} "
                             f"(quick_gelu {str(value).lower()}); drop the setting or fix it")
        return value
    if quick_gelu is not None:
        return quick_gelu
    if pretrained is not None:
        warnings.warn(f"pretrained {pretrained}: the file does not say which activation its weights use; assuming "
                      "QuickGELU (OpenAI's CLIP weights). Set quick_gelu: false for open_clip's LAION/DataComp "
                      "weights, or quick_gelu: true to silence this", UserWarning, stacklevel=3)
    return DEFAULT_QUICK_GELU
