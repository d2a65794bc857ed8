"""Byte-level hostile files of the synthetic web, and the near-duplicate transforms with their ground truth."""
from __future__ import annotations

import functools
import io
import struct
import zlib

from PIL import Image

from curation.synthweb.figure import FLIP_INDEX

BOMB_SIDE = 30000


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def truncated_jpeg(data: bytes) -> bytes:
    """The first 40 % of a JPEG: valid header and dimensions, no end-of-image marker."""
    return data[: max(200, int(len(data) * 0.4))]


def html_disguised_as_image() -> bytes:
    return (b"<!DOCTYPE html><html><head><title>Image not found</title></head>"
            b"<body><h1>Sorry, this image is no longer available.</h1></body></html>\n")


@functools.lru_cache(maxsize=1)
def decompression_bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 1-bit PNG of side×side black pixels: about 110 KB on disk, 900 megapixels once decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(row * 1000) for _ in range(side // 1000)]
    chunks.append(compressor.compress(row * (side % 1000)))
    chunks.append(compressor.flush())
    idat = b"".join(chunks)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def transform_persons(persons: list[dict], kind: str, size: tuple[int, int], amount: float) -> list[dict]:
    """Ground truth of a near-duplicate: boxes and keypoints after resize (amount = scale), crop (amount = pixels
    cut from each side), mirror or re-encode."""
    out = []
    w, h = size
    for person in persons:
        box = list(person["bbox"])
        kps = [list(k) for k in person["keypoints"]]
        if kind == "resized":
            box = [v * amount for v in box]
            kps = [[x * amount, y * amount, v] for x, y, v in kps]
        elif kind == "cropped":
            inner_w, inner_h = w - 2 * amount, h - 2 * amount
            box = [min(max(box[0] - amount, 0), inner_w), min(max(box[1] - amount, 0), inner_h),
                   min(max(box[2] - amount, 0), inner_w), min(max(box[3] - amount, 0), inner_h)]
            kps = [[x - amount, y - amount, v] if v and 0 <= x - amount < inner_w and 0 <= y - amount < inner_h
                   else [0.0, 0.0, 0] for x, y, v in kps]
        elif kind == "mirrored":
            box = [w - box[2], box[1], w - box[0], box[3]]
            kps = [[w - kps[j][0], kps[j][1], kps[j][2]] if kps[j][2] else [0.0, 0.0, 0] for j in FLIP_INDEX]
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            continue
        out.append({**person, "bbox": [round(v, 1) for v in box],
                    "keypoints": [[round(x, 1), round(y, 1), v] for x, y, v in kps]})
    return out


def near_duplicate(image: Image.Image, kind: str, amount: float) -> bytes:
    if kind == "reencoded":
        return jpeg_bytes(image, quality=int(amount))
    if kind == "resized":
        return jpeg_bytes(image.resize((round(image.width * amount), round(image.height * amount)), Image.BILINEAR))
    if kind == "cropped":
        a = int(amount)
        return jpeg_bytes(image.crop((a, a, image.width - a, image.height - a)))
    if kind == "mirrored":
        return jpeg_bytes(image.transpose(Image.FLIP_LEFT_RIGHT))
    raise ValueError(f"unknown near-duplicate kind {kind!r}")
