"""Cut a person out of its decoded source image and encode the crop."""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image


def crop_region(box: tuple[float, float, float, float], image_size: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """Integer pixel region (x1, y1, x2, y2) of `box` grown by `margin` × its size on each side, clipped to the image."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    width, height = image_size
    left, top = max(0, math.floor(x1 - dx)), max(0, math.floor(y1 - dy))
    right, bottom = min(width, math.ceil(x2 + dx)), min(height, math.ceil(y2 + dy))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
