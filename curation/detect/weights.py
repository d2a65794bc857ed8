"""Detector weights are untrusted input: check an ultralytics checkpoint without running it, before YOLO() does.

ultralytics unpickles `*.pt` files in full, so a crafted file runs its payload before anything can reject it.
`check_yolo_weights` first reads the file with torch's weights-only unpickler, which builds only allow-listed
types and calls no other function. The allow list is the torch and ultralytics network classes (every
`nn.Module` subclass they define) and the plain containers a training run stores (its argument namespace, a
set); no function. A file that needs anything else is refused with one line naming the global it asked for.
A model YAML (a config, not weights) is not a pickle and is left to ultralytics.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import pickle
import pkgutil
import re
import threading
import zipfile
from pathlib import Path

from storage.errors import GadmsError, unpickling_reason

# Packages walked for nn.Module classes, and single modules. Not all of ultralytics.nn: its text_model module
# tries to pip-install CLIP on import.
_NETWORK_PACKAGES = ("torch.nn.modules", "ultralytics.nn.modules")
_NETWORK_MODULES = ("ultralytics.nn.tasks",)
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_SAFE_GLOBALS_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def allowed_types() -> tuple[type, ...]:
    """nn.Module subclasses of torch.nn and ultralytics.nn, plus the containers ultralytics checkpoints hold."""
    import torch
    from ultralytics.utils import IterableSimpleNamespace

    names = list(_NETWORK_MODULES)
    for package_name in _NETWORK_PACKAGES:
        package = importlib.import_module(package_name)
        names += [package_name] + [m.name for m in pkgutil.walk_packages(package.__path__, package_name + ".")]
    found: set[type] = {IterableSimpleNamespace, set}
    for name in names:
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, torch.nn.Module) and value.__module__.startswith(("torch.nn", "ultralytics.nn")):
                found.add(value)
    return tuple(sorted(found, key=lambda t: f"{t.__module__}.{t.__qualname__}"))


def check_yolo_weights(weights: str, field: str) -> None:
    """Raise GadmsError unless `weights` is a model YAML, a name for ultralytics to resolve, or a checkpoint that
    holds nothing but network modules, tensors and plain data."""
    path = Path(weights)
    if path.suffix.lower() in (".yaml", ".yml") or not path.is_file():
        return
    from storage.compat import ensure_torchvision_ops

    ensure_torchvision_ops()  # before ultralytics imports torchvision
    import torch

    try:
        # safe_globals edits one process-wide list: the build flow's chunk threads must not interleave here.
        with _SAFE_GLOBALS_LOCK, torch.serialization.safe_globals(list(allowed_types())):
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        if found:
            raise GadmsError(f"{field} {weights!r}: refused: the checkpoint asks for {found.group(1)}, which is not "
                             "a torch or ultralytics network class (loading it could run code)") from None
        # torch's own message goes on to advise weights_only=False: pass on only what the unpickler found.
        raise GadmsError(f"{field} {weights!r}: refused: not a weights-only PyTorch checkpoint: "
                         f"{unpickling_reason(exc)}") from None
    except (zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise GadmsError(f"{field} {weights!r}: not a PyTorch checkpoint ({unpickling_reason(exc)})") from None

