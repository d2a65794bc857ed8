"""The one decoder of image bytes from the web or from shards (hostile input): pixel limit checked from the
header before decoding, EXIF orientation applied, transparency on white, RGB. Detection takes the pixels as an
array, training and search as a PIL image."""
from __future__ import annotations

import io
import sys
import warnings

import numpy as np
from PIL import Image, ImageOps

# Pillow's own decompression-bomb threshold: the default pixel limit of the crawl and detect stages and of readers.
DEFAULT_MAX_PIXELS = 89_478_485

# Transparent areas become white rather than the black that a plain RGB conversion gives.
_BACKGROUND = (255, 255, 255)


def _pil_open():
    """PIL's own Image.open.

    Importing ultralytics replaces Image.open with a wrapper that, on any unidentified image, tries to pip-install
    a HEIF plugin. Hostile web bytes must not trigger installs, so decoding goes around that wrapper.
    """
    opener = Image.open
    module = sys.modules.get(getattr(opener, "__module__", "") or "")
    if module is not None and module.__name__.startswith("ultralytics"):
        return getattr(module, "_image_open", opener)
    return opener


class DecodeError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """H×W×3 uint8 RGB pixels of `data`. Raises DecodeError("too_many_pixels" | "decode_error", detail)."""
    return np.ascontiguousarray(np.asarray(decode_rgb(data, max_pixels)))


def decode_rgb(data: bytes, max_pixels: int) -> Image.Image:
    """`data` as an upright RGB PIL image. Raises DecodeError("too_many_pixels" | "decode_error", detail)."""
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces Pillow's warning; Pillow still refuses images above twice its
            # MAX_IMAGE_PIXELS (~179 Mpx) on open, which is reported the same way.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _pil_open()(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise DecodeError("too_many_pixels", f"{width}x{height} = {width * height} pixels > {max_pixels}")
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError("too_many_pixels", str(exc)[:300]) from None
    except Image.UnidentifiedImageError:
        # Its message names the BytesIO object's address: a detail that differed between two runs of one input.
        raise DecodeError("decode_error", "UnidentifiedImageError: not an image format Pillow reads") from None
    except Exception as exc:
        # PIL reports truncation as OSError, some malformed headers as SyntaxError / ValueError; a format plugin
        # may raise anything on crafted bytes.
        raise DecodeError("decode_error", f"{type(exc).__name__}: {exc}"[:300]) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        image = Image.alpha_composite(canvas, rgba)
    if image.mode in ("I;16", "I"):  # 16-bit grey: keep the high byte, as ultralytics and OpenCV do
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int64) >> 8, 0, 255).astype(np.uint8))
    return image.convert("RGB")
