"""Training checkpoints: everything needed to resume exactly, and to rebuild the model for eval/search.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads with
`torch.load(weights_only=True)` (a checkpoint from elsewhere is untrusted input):
    format, version, model_config (ModelConfig fields), model (state dict),
    and in training checkpoints also: optimizer, scheduler, score_store, step, epoch, step_in_epoch,
    rng (torch CPU / CUDA / python random states of each rank), train_config.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import torch

from storage.errors import GadmsError, unpickling_reason

FORMAT = "gadms-checkpoint"
VERSION = 1
_STEP_NAME = re.compile(r"^step-(\d{8})\.pt$")


class CheckpointError(GadmsError):
    pass


def rng_state() -> dict:
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(state), gauss],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save(payload: dict, path: Path) -> None:
    """Write atomically: a run killed while saving keeps its previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    os.replace(tmp, path)


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # unpickling errors of a foreign or damaged file come in many types
        raise CheckpointError(f"{path}: not a loadable checkpoint: {unpickling_reason(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gadms checkpoint (no format tag {FORMAT!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')}, this version reads {VERSION}")
    for key in ("model_config", "model"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return payload


def step_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}.pt"


def step_checkpoints(directory: Path) -> list[Path]:
    """Training checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _STEP_NAME.match(p.name))


def model_config_of(payload: dict):
    from gadms_model.model import ModelConfig

    return ModelConfig.model_validate(payload["model_config"])


def inference_config(config):
    """The stored config without its pretrained-weights source: the checkpoint's own weights replace them."""
    return config.model_copy(update={"pretrained": None})


def load_model(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuild the model stored in a checkpoint (training or best-model) for inference."""
    from gadms_model.model import build_model

    payload = load(path)
    config = model_config_of(payload)
    model = build_model(inference_config(config))
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit its model config: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval()
