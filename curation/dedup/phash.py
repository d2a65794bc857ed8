"""The 64-bit perceptual hash of a crop (imagehash's pHash), as an unsigned integer."""
from __future__ import annotations

import io

import imagehash
import numpy as np
from PIL import Image, ImageOps


def phash64(rgb: np.ndarray | Image.Image) -> int:
    """imagehash.phash (8×8 DCT signs of a 32×32 grey thumbnail), bits row-major, first bit most significant."""
    image = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    bits = imagehash.phash(image).hash.ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def mirrored_phash64(jpeg: bytes) -> int:
    """phash64 of a crop's left-right mirror image: a mirrored copy of a kept crop is near this, while its own
    pHash is far from the kept one's (the DCT's horizontal terms change sign, and the median with them)."""
    with Image.open(io.BytesIO(jpeg)) as image:
        return phash64(ImageOps.mirror(image.convert("RGB")))
