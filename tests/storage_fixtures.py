"""Small hand-made records for storage tests (exact values, so expected statistics can be computed by hand)."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

from storage.layout import OutputLayout
from storage.records import Captions, PersonCrop, Reject, make_sample_id
from storage.shards import commit_shard


def jpeg(colour: tuple[int, int, int], size=(32, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def crop(n: int, domain: str = "a.example") -> PersonCrop:
    source = hashlib.sha256(f"source-{n}".encode()).hexdigest()
    bbox = (10.0 * n, 20.0, 10.0 * n + 50.0, 150.0)
    image = jpeg((n * 40 % 256, 80, 120))
    return PersonCrop(
        sample_id=make_sample_id(source, bbox),
        source_url=f"https://{domain}/img/{n}.jpg",
        page_url=f"https://{domain}/page/{n}.html",
        alt_text=f"alt {n}",
        source_sha256=source,
        image=image,
        width=32,
        height=64,
        bbox=bbox,
        det_score=0.5 + n / 100,
        keypoints=[float(i) for i in range(51)] if n % 2 == 0 else None,
        phash=(2**64 - 1) - n,
        crop_sha256=hashlib.sha256(image).hexdigest(),
        source_meta=f'{{"key": "{n:09d}"}}' if n % 2 == 0 else None,
    )


def captions_for(c: PersonCrop, caption1: str, caption2: str, template_id: str = "t001") -> Captions:
    return Captions(
        sample_id=c.sample_id,
        caption1=caption1,
        caption2=caption2,
        caption_model="test-model",
        caption_backend="alt-text",
        template_id=template_id,
        prompt_version="v1",
    )


def rejects(*reasons: tuple[str, str]) -> list[Reject]:
    return [Reject(stage=stage, reason=reason, url=f"https://x.example/{i}") for i, (stage, reason) in enumerate(reasons)]


def build_root(root: Path | str) -> OutputLayout:
    """Two committed shards under `root` (a local folder or an fsspec URL)."""
    layout = OutputLayout(str(root))
    c0, c1, c2 = crop(0, "a.example"), crop(1, "a.example"), crop(2, "b.example:8080")
    commit_shard(
        layout, "shard-00000", "run-1", [c0, c1],
        [captions_for(c0, "A woman in a red coat and black boots.", "She carries a red bag.", "t001"),
         captions_for(c1, "A man wears a blue shirt.", "", "t002,t003")],
        rejects(("crawl", "http_404"), ("crawl", "http_404"), ("detect", "no_person")),
    )
    commit_shard(
        layout, "shard-00001", "run-1", [c2],
        [captions_for(c2, "The man in black jeans and a white t-shirt.", "He has red shoes.", "t001")],
        rejects(("dedup", "near_duplicate"),),
    )
    return layout
