"""Make torchvision importable on CPU-only torch.

The only torchvision build for torch 2.13 on the package registry is a CUDA build. On a CPU torch its
compiled `_C` library fails to load, and `import torchvision` then dies with
`operator torchvision::nms does not exist` (its fake-tensor registrations need the op schemas). That also
breaks importing open_clip, timm and ultralytics prediction.

`ensure_torchvision_ops()` runs before torchvision is imported: only when torchvision's compiled library cannot
be loaded does it define the `torchvision::nms` and `torchvision::qnms` schemas with a pure-torch CPU kernel,
import torchvision, and let `torchvision.ops.nms` use that kernel (the other compiled ops, such as roi_align,
stay unavailable and say so).
On a machine where torchvision's own library loads (a CUDA host), it changes nothing.
"""
from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import torch

_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
# Keep a reference: a torch.library.Library deregisters its definitions when garbage-collected.
_LIBRARIES: list = []
# Check-then-define must be one step: the build flow's chunk threads create their detectors at the same time,
# and a second definition of the namespace is an error.
_DEFINE_LOCK = threading.Lock()


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's semantics: indices of kept boxes (x1, y1, x2, y2), by decreasing score.

    A box is dropped when its IoU with an already kept, higher-scoring box is strictly greater than the threshold.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.float()
    order = torch.argsort(scores.float(), descending=True, stable=True)
    sorted_boxes = boxes[order]
    x1, y1, x2, y2 = sorted_boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    # Loops over kept boxes only; each step is one vectorised IoU row against the lower-scoring boxes.
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = slice(i + 1, None)
        inter_w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        inter_h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = inter_w * inter_h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest] |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def _qnms_reference(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return nms_reference(dets.dequantize(), scores.dequantize(), iou_threshold)


def _torchvision_library_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd"))
    for library in candidates:
        try:
            torch.ops.load_library(str(library))
            return True
        except (OSError, RuntimeError):
            return False
    return False


def _nms_schema_exists() -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return True
    except RuntimeError:
        return False


def ensure_torchvision_ops() -> bool:
    """Define the missing torchvision ops if needed. Returns True when the pure-torch kernels were installed.

    Call it before the first `import torchvision` (directly or through open_clip, timm or ultralytics).
    Idempotent and thread-safe.
    """
    with _DEFINE_LOCK:
        if "torchvision" in sys.modules or _nms_schema_exists() or _torchvision_library_loads():
            return False
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms" + _NMS_SCHEMA)
        library.define("qnms" + _NMS_SCHEMA)
        library.impl("nms", nms_reference, "CPU")
        library.impl("qnms", _qnms_reference, "QuantizedCPU")
        _LIBRARIES.append(library)
        import torchvision.extension

        # torchvision.ops.nms asserts its compiled library loaded; the ops it needs now exist.
        torchvision.extension._has_ops = lambda: True
        return True
