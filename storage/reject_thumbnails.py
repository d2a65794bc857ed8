"""Small JPEGs of a bounded sample of a chunk's rejects, so a person can see what each rule throws away.

Per shard, the first `per_reason` rejects of every (stage, reason) of the image stages get a thumbnail no side of
which exceeds `max_side`: the crop for person rejects (its JPEG, or the source cut to the box in
`Reject.bbox` for persons the detect and pose rules dropped before cropping), the whole image for
`detect/no_person`. URL-level rejects (crawl, decode) have no picture to show; a `takedown` reject never gets
one (its picture is what was asked to be removed).
"""
from __future__ import annotations

import io
from collections import Counter
from typing import Iterable

import pyarrow as pa
from PIL import Image, ImageOps

from storage.records import Download, PersonCrop, Reject
from storage.schema import REJECT_THUMBNAIL_SCHEMA

IMAGE_STAGES = ("detect", "pose", "dedup", "filter", "caption", "quality")
JPEG_QUALITY = 80
TAKEDOWN_REASON = "takedown"


def reject_thumbnails_table(
    rejects: list[Reject], downloads: Iterable[Download], crops: Iterable[PersonCrop], shard_id: str,
    per_reason: int, max_side: int,
) -> pa.Table:
    """Thumbnails of the first `per_reason` rejects per (stage, reason) of the image stages, as
    REJECT_THUMBNAIL_SCHEMA rows; `reject_row` is the reject's position in `rejects` (= in its rejects file)."""
    sources = {d.url: d.data for d in downloads}
    crop_images = {c.sample_id: c.image for c in crops}
    taken: Counter = Counter()
    rows = []
    for position, reject in enumerate(rejects):
        key = (reject.stage, reject.reason)
        if reject.stage not in IMAGE_STAGES or reject.reason == TAKEDOWN_REASON or taken[key] >= per_reason:
            continue
        picture = _picture(reject, sources, crop_images)
        if picture is None:
            continue
        data, (width, height) = _thumbnail(picture, max_side)
        taken[key] += 1
        rows.append({"shard_id": shard_id, "reject_row": position, "stage": reject.stage, "reason": reject.reason,
                     "detail": reject.detail or None, "image": data, "width": width, "height": height})
    return pa.Table.from_pylist(rows, schema=REJECT_THUMBNAIL_SCHEMA)


def _picture(reject: Reject, sources: dict[str, bytes], crop_images: dict[str, bytes]) -> Image.Image | None:
    """The rejected crop or image, or None when the chunk no longer holds it."""
    if reject.sample_id in crop_images:
        return Image.open(io.BytesIO(crop_images[reject.sample_id]))
    source = sources.get(reject.url)
    if source is None:
        return None
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(source)))  # boxes are in the upright pixels detect saw
    box = reject.bbox
    if box is None:
        return image
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return image.crop((max(0, x1), max(0, y1), max(x1 + 1, x2), max(y1 + 1, y2)))


def _thumbnail(image: Image.Image, max_side: int) -> tuple[bytes, tuple[int, int]]:
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), image.size
