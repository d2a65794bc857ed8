"""The 64-bit perceptual hash of a crop (imagehash's pHash), as an unsigned integer."""
from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image


def phash64(rgb: np.ndarray | Image.Image) -> int:
    """imagehash.phash (8×8 DCT signs of a 32×32 grey thumbnail), bits row-major, first bit most significant."""
    image = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    bits = imagehash.phash(image).hash.ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")
