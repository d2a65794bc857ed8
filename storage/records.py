"""In-memory records passed between the curation stages (crawl → detect → dedup → caption → shard).

Stages are plain functions over these dataclasses; `storage.schema` maps them to Parquet columns.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

# Stage names used in the rejects table.
STAGES = ("crawl", "decode", "detect", "pose", "dedup", "filter", "caption", "quality", "write")


@dataclass(frozen=True)
class UrlRecord:
    """One input row: an image URL with the alt text / caption the source gave it."""

    url: str
    alt_text: str = ""
    page_url: str = ""
    source_meta: str | None = None  # the list's extra columns as a JSON object string (crawl's extra_columns)


@dataclass
class Download:
    """An image fetched by the crawl stage: raw bytes, checked by magic bytes and header dimensions only."""

    url: str
    page_url: str
    alt_text: str
    data: bytes
    sha256: str
    mime: str
    width: int
    height: int
    source_meta: str | None = None
    # Provenance of the fetch (None in downloads files written before schema v2).
    fetched_at: datetime | None = None  # UTC, when the response arrived
    http_status: int | None = None  # of the final response, after redirects
    x_robots_tag: str | None = None  # the X-Robots-Tag values served with the image, ", "-joined; None if none


@dataclass
class PersonCrop:
    """One kept person from the detection stage, cropped from its decoded source image."""

    sample_id: str
    source_url: str
    page_url: str
    alt_text: str
    source_sha256: str
    image: bytes  # JPEG bytes of the crop
    width: int
    height: int
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in source-image pixels
    det_score: float
    keypoints: list[float] | None  # 17 COCO keypoints as x, y, conf (51 floats), source pixels; None if no pose
    phash: int  # 64-bit perceptual hash as an unsigned int
    crop_sha256: str
    source_meta: str | None = None  # of the source image's URL-list row
    fetched_at: datetime | None = None  # the source image's Download provenance
    http_status: int | None = None
    x_robots_tag: str | None = None
    num_faces: int | None = None  # faces found in the crop; None when face counting was off
    face_boxes: list[list[float]] | None = None  # [x1, y1, x2, y2] per face, crop pixels


@dataclass
class Captions:
    """Captioning-stage output for one crop."""

    sample_id: str
    caption1: str
    caption2: str
    caption_model: str
    caption_backend: str  # "openai", "transformers" or "alt-text"
    template_id: str
    prompt_version: str
    # The MLLM filter's verdict on the crop (storage keeps only kept crops, so keep is True where it ran); all
    # None when no filter ran (filter off, alt-text backend). Rejected crops' verdicts are in the rejects table.
    filter_keep: bool | None = None
    filter_reason: str | None = None
    filter_model: str | None = None


@dataclass
class Reject:
    """Why an URL, image or person did not become a sample. Exactly one per rejected item."""

    stage: str
    reason: str  # short snake_case, e.g. http_404, robots_disallowed, no_person, near_duplicate
    url: str = ""
    sample_id: str = ""
    detail: str = ""
    extra: dict = field(default_factory=dict)
    # The person's box (source pixels) when the item is a person: audits match it to what the image shows.
    bbox: tuple[float, float, float, float] | None = None


def make_sample_id(source_sha256: str, bbox: tuple[float, float, float, float]) -> str:
    """Stable id of a person crop: the same source bytes and box give the same id on every rebuild."""
    box = ",".join(str(int(round(v))) for v in bbox)
    return hashlib.sha256(f"{source_sha256}:{box}".encode()).hexdigest()[:20]
