"""A small built WebPerson root for the browse page: the synthetic search benchmark's 12 train images as
crops in two shards and two runs, rejects of every image stage with their thumbnails, and one sample whose alt
text and caption hold markup."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from curation.synthweb.identities import clean_caption, identity_attributes
from storage.catalog import refresh, write_run_record
from storage.layout import OutputLayout
from storage.records import Captions, Download, PersonCrop, Reject, make_sample_id
from storage.reject_thumbnails import reject_thumbnails_table
from storage.shards import commit_shard

IDENTITIES, IMAGES_PER_IDENTITY = 4, 3
NICKNAMES = ("alpha", "bravo", "charlie", "delta")  # caption2 of identity i says "walker NICKNAMES[i]"
MARKUP = "<script>document.title='pwned';window.pwned=1</script><img src=x onerror=\"document.title='pwned'\">"
BUDGET = {"per_reason": 8, "max_side": 96}
FETCHED_AT = datetime(2025, 1, 1, 9, 30, tzinfo=timezone.utc)  # the provenance of the kept twin, its faces and verdict
TOO_SMALL = {"shard-00000": 10, "shard-00001": 2}  # detect/too_small rejects per shard (the budget keeps 8 + 2)


@dataclass
class BrowseRoot:
    root: Path
    by_identity: dict[int, list[str]]  # identity → its sample ids
    markup_sample: tuple[str, str]  # (shard_id, sample_id) of the sample with markup in alt text and caption2
    kept_twin: tuple[str, str]  # a sample with a near-duplicate in the rejects, provenance, a face and a verdict


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _crop(path: Path, identity: int, number: int) -> PersonCrop:
    data = path.read_bytes()
    with Image.open(path) as image:
        width, height = image.size
    source = hashlib.sha256(f"scene-{identity}-{number}".encode()).hexdigest()
    # The box sits inside the crop by the detect stage's default 5 % margin.
    left, top = 300.0 + 40 * number, 100.0
    bbox = (left + 0.05 * width / 1.1, top + 0.05 * height / 1.1, left + width - 0.05 * width / 1.1,
            top + height - 0.05 * height / 1.1)
    keypoints = []
    for k in range(17):
        keypoints += [bbox[0] + (bbox[2] - bbox[0]) * (0.3 + 0.4 * (k % 2)), bbox[1] + (bbox[3] - bbox[1]) * k / 17, 0.9]
    return PersonCrop(
        sample_id=make_sample_id(source, bbox), source_url=f"https://id{identity}.example/scene/{number}.jpg",
        page_url=f"https://id{identity}.example/page/{number}.html", alt_text=f"walker {NICKNAMES[identity]} outdoors",
        source_sha256=source, image=data, width=width, height=height, bbox=bbox, det_score=0.93,
        keypoints=keypoints, phash=identity * 1000 + number, crop_sha256=hashlib.sha256(data).hexdigest())


def _captions(crop: PersonCrop, identity: int, number: int, model: str) -> Captions:
    template = "t001,t003" if (identity, number) == (1, 0) else f"t00{identity % 2 + 1}"
    return Captions(crop.sample_id, clean_caption(identity_attributes(identity)),
                    f"Photo {number} of walker {NICKNAMES[identity]}.", model, "openai", template, "v1")


def _rejects(shard_id: str, kept: PersonCrop, twin: PersonCrop) -> tuple[list[Reject], list[Download], list[PersonCrop]]:
    scene = Image.new("RGB", (320, 200), (90, 140, 90))
    scene.paste(Image.new("RGB", (12, 30), (200, 40, 40)), (150, 120))
    scene_bytes = jpeg(scene)
    empty = Download("https://x.example/empty.jpg", "", "", jpeg(Image.new("RGB", (200, 150), (30, 60, 200))), "e" * 64,
                     "image/jpeg", 200, 150)
    crowd = Download("https://x.example/crowd.jpg", "", "", scene_bytes, "c" * 64, "image/jpeg", 320, 200)
    rejects = [Reject("crawl", "http_404", url=f"https://x.example/missing-{i}.jpg", detail="HTTP 404") for i in range(2)]
    if shard_id == "shard-00000":
        rejects.append(Reject("detect", "no_person", url=empty.url))
        rejects.append(Reject("dedup", "near_duplicate", url=twin.source_url, sample_id=twin.sample_id,
                              detail=kept.sample_id, extra={"distance": 2}))
        rejects.append(Reject("quality", "too_short", url=twin.source_url, sample_id="q" * 20, detail="3 words < 5"))
    for i in range(TOO_SMALL[shard_id]):
        box = [150.0, 120.0, 162.0, 150.0 - i]
        rejects.append(Reject("detect", "too_small", url=crowd.url, sample_id=f"{i:020d}",
                              detail=f"shorter side {box[2] - box[0]:.1f}px <= 90.0", bbox=tuple(box)))
    return rejects, [empty, crowd], [twin]


def build_browse_root(root: Path, benchmark: Path) -> BrowseRoot:
    layout = OutputLayout(str(root))
    by_identity: dict[int, list[str]] = {}
    for shard, (run_id, model) in enumerate((("run-a", "model-a"), ("run-b", "model-b"))):
        shard_id = f"shard-{shard:05d}"
        crops, captions = [], []
        for identity in (2 * shard, 2 * shard + 1):
            for number in range(IMAGES_PER_IDENTITY):
                c = _crop(benchmark / "imgs" / "train" / f"{identity:05d}_{number:02d}.jpg", identity, number)
                crops.append(c)
                captions.append(_captions(c, identity, number, model))
                by_identity.setdefault(identity, []).append(c.sample_id)
        if shard == 0:
            crops[0].alt_text = MARKUP
            captions[0].caption2 = f"Photo 0 {MARKUP}"
            markup = (shard_id, crops[0].sample_id)
            kept_twin = (shard_id, crops[1].sample_id)
            crops[1].fetched_at, crops[1].http_status, crops[1].x_robots_tag = FETCHED_AT, 200, "noimageai"
            crops[1].num_faces, crops[1].face_boxes = 1, [[8.0, 6.0, 24.0, 22.0]]
            captions[1].filter_keep, captions[1].filter_model = True, "synthweb-sim-vlm"
            twin = _crop(benchmark / "imgs" / "train" / "00000_01.jpg", 0, 7)
        rejects, downloads, rejected_crops = _rejects(shard_id, crops[1] if shard == 0 else crops[0], twin)
        thumbnails = reject_thumbnails_table(rejects, downloads, rejected_crops, shard_id, **BUDGET)
        commit_shard(layout, shard_id, run_id, crops, captions, rejects, thumbnails)
        write_run_record(str(root), {
            "run_id": run_id, "flow": "build-webperson", "status": "Completed", "output_root": str(root),
            "started_at": f"2025-01-0{shard + 1}T10:00:00+00:00", "finished_at": f"2025-01-0{shard + 1}T11:00:00+00:00",
            "config": {"detect": {"crop_margin": 0.05}},
            "summary": {"urls": 20, "downloaded": 18, "persons": 8, "unique": 7, "kept": len(crops)},
        })
    refresh(str(root))
    return BrowseRoot(root, by_identity, markup, kept_twin)
