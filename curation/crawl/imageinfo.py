"""What a downloaded body is, judged by its bytes: format by magic bytes, dimensions from the header, truncation.

Nothing here decodes pixels (a 30000×30000 bomb is a few KB of header); the detection stage decodes once.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

MIME = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp", "bmp": "image/bmp"}

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT (C4), JPG (C8), DAC (CC).
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0–7
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageCheckError(ValueError):
    """The body is not an acceptable image; `reason` goes to the rejects table."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def mime(self) -> str:
        return MIME[self.format]


def sniff_format(data: bytes) -> str | None:
    """The image format named by the magic bytes, "other:<name>" for a recognised unsupported one, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM" and len(data) >= 26:
        return "bmp"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"):
        return "other:" + data[8:12].decode()
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "other:tiff"
    if data[:4] == b"\x00\x00\x01\x00":
        return "other:ico"
    return None


def _jpeg(data: bytes) -> tuple[int, int]:
    size = None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageCheckError("decode_error", f"jpeg: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:  # no length field
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            raise ImageCheckError("decode_error", f"jpeg: bad segment length at byte {pos}")
        if marker in _SOF_MARKERS and size is None:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size = (width, height)
        if marker == 0xDA:  # start of scan: the image data follows, and must end with EOI
            if size is None:
                raise ImageCheckError("decode_error", "jpeg: scan before any frame header")
            ends_clean = data.endswith(b"\xff\xd9")  # the usual case; else look for EOI before trailing bytes
            if not ends_clean and data.find(b"\xff\xd9", pos + 2 + length) < 0:
                raise ImageCheckError("truncated", f"jpeg: no end-of-image marker in {len(data)} bytes")
            return size
        pos += 2 + length
    raise ImageCheckError("truncated", f"jpeg: header ends at byte {len(data)} before the image data")


def _png(data: bytes) -> tuple[int, int]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageCheckError("decode_error", "png: no IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    if data.rfind(b"IEND", 33) < 0:
        raise ImageCheckError("truncated", f"png: no IEND chunk in {len(data)} bytes")
    return width, height


def _gif(data: bytes) -> tuple[int, int]:
    if len(data) < 13:
        raise ImageCheckError("truncated", "gif: header shorter than 13 bytes")
    width, height = struct.unpack("<HH", data[6:10])
    if not data.rstrip(b"\x00").endswith(b";"):
        raise ImageCheckError("truncated", f"gif: no trailer in {len(data)} bytes")
    return width, height


def _webp(data: bytes) -> tuple[int, int]:
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 > len(data):
        raise ImageCheckError("truncated", f"webp: RIFF says {riff_size + 8} bytes, got {len(data)}")
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise ImageCheckError("decode_error", f"webp: unknown chunk {chunk!r}")


def _bmp(data: bytes) -> tuple[int, int]:
    (file_size,) = struct.unpack("<I", data[2:6])
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    if file_size > len(data):
        raise ImageCheckError("truncated", f"bmp: header says {file_size} bytes, got {len(data)}")
    return abs(width), abs(height)


_PARSERS = {"jpeg": _jpeg, "png": _png, "gif": _gif, "webp": _webp, "bmp": _bmp}


def describe_start(data: bytes) -> str:
    """The first bytes of a body, printable, for a reject's detail."""
    return repr(data[:16])[2:-1] if data else "empty body"


def inspect_image(data: bytes, allowed_formats: list[str], max_pixels: int) -> ImageInfo:
    """Format and size of an image body, or ImageCheckError(not_an_image | unsupported_format | decode_error |
    truncated | too_many_pixels)."""
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageCheckError("not_an_image", f"starts with {describe_start(data)}")
    if fmt.startswith("other:") or fmt not in allowed_formats:
        raise ImageCheckError("unsupported_format", fmt.removeprefix("other:"))
    try:
        width, height = _PARSERS[fmt](data)
    except struct.error:
        raise ImageCheckError("truncated", f"{fmt}: header cut short at {len(data)} bytes") from None
    if width <= 0 or height <= 0:
        raise ImageCheckError("decode_error", f"{fmt}: header says {width}x{height}")
    if width * height > max_pixels:
        raise ImageCheckError("too_many_pixels", f"{fmt}: {width}x{height} = {width * height} pixels > {max_pixels}")
    return ImageInfo(fmt, width, height)
