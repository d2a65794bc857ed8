"""In-memory records passed between the curation stages (crawl → detect → dedup → caption → shard).

Stages are plain functions over these dataclasses; `storage.schema` maps them to Parquet columns.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

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


@dataclass
class Reject:
    """Why an URL, image or person did not become a sample. Exactly one per rejected item."""

    stage: str
    reason: str  # short snake_case, e.g. http_404, robots_disallowed, no_person, near_duplicate
    url: str = ""
    sample_id: str = ""
    detail: str = ""
    extra: dict = field(default_factory=dict)  # in memory only, e.g. {"box": [...]} of a detect/pose reject


def make_sample_id(source_sha256: str, bbox: tuple[float, float, float, float]) -> str:
    """Stable id of a person crop: the same source bytes and box give the same id on every rebuild."""
    box = ",".join(str(int(round(v))) for v in bbox)
    return hashlib.sha256(f"{source_sha256}:{box}".encode()).hexdigest()[:20]
