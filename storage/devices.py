"""Devices, in one place: the default one, and the one check of a `--device` / `device:` value (a torch device
that exists on this machine). torch is imported inside: storage is imported by commands that never load it."""
from __future__ import annotations

from storage.errors import GadmsError


def default_device():
    """cuda when a GPU is there, else cpu."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def existing_device(name: str, field: str):
    """`torch.device(name)` for cpu, cuda or cuda:N, checked before any work: `--device 'cuda:99': this machine
    has 1 GPU (cuda:0)`, not a CUDA traceback once the model is loaded or the first batch is sent."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise GadmsError(f"{field} {name!r}: not a device (expected cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise GadmsError(f"{field} {name!r}: not a device gadms runs on (expected cpu, cuda or cuda:N)")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if (device.index or 0) >= gpus:
        found = f"this machine has {gpus} GPU(s) (cuda:0..cuda:{gpus - 1})" if gpus else "no GPU is available"
        raise GadmsError(f"{field} {name!r}: {found}")
    return device
