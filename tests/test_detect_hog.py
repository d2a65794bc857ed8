"""The OpenCV HOG backend (no weights at all) on the person photos ultralytics and scikit-image ship."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import skimage.data
from PIL import Image
from ultralytics.utils import ASSETS

from curation.detect import DetectConfig, PersonDetector, detect_persons
from storage.records import Download

# Hand-annotated from bus.jpg (810 × 1080): the man in the light coat on the left, head to shoes.
BUS_COAT_MAN = (50.0, 400.0, 245.0, 905.0)


def _download(url: str, data: bytes) -> Download:
    return Download(url=url, page_url="", alt_text="", data=data, sha256=hashlib.sha256(data).hexdigest(),
                    mime="image/jpeg", width=0, height=0)


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def results():
    downloads = [_download(p.name, p.read_bytes()) for p in (ASSETS / "bus.jpg", ASSETS / "zidane.jpg")]
    downloads += [_download(name, _jpeg(getattr(skimage.data, name)()[:, :, :3]))
                  for name in ("astronaut", "coffee", "chelsea")]
    detector = PersonDetector(DetectConfig(backend="hog"))
    return detect_persons(downloads, detector)


def test_hog_keeps_the_whole_standing_person_in_bus_jpg(results):
    crops, rejects = results
    (crop,) = crops
    assert crop.source_url == "bus.jpg"
    assert _iou(crop.bbox, BUS_COAT_MAN) >= 0.8
    assert crop.keypoints is None  # boxes only: the pose check is skipped
    assert crop.det_score > 0.5
    assert Image.open(io.BytesIO(crop.image)).size == (crop.width, crop.height)
    bus_rejects = [r for r in rejects if r.url == "bus.jpg"]
    assert bus_rejects and all(r.stage == "detect" and r.sample_id for r in bus_rejects)


def test_hog_rejects_on_the_other_photos(results):
    crops, rejects = results
    by_url = {}
    for reject in rejects:
        by_url.setdefault(reject.url, []).append(reject.reason)
    assert by_url["coffee"] == ["no_person"] and by_url["chelsea"] == ["no_person"]
    # The astronaut is a half-body portrait: HOG (trained on whole pedestrians) finds at most a small window.
    assert set(by_url["astronaut"]) <= {"no_person", "too_small", "low_conf"}
    # zidane.jpg shows two persons cut at the waist: nothing a whole-body detector should keep.
    assert "zidane.jpg" not in {c.source_url for c in crops}
    assert all(r.stage != "pose" for r in rejects)


def test_hog_boxes_are_in_source_pixels_whatever_the_working_scale():
    image = np.asarray(Image.open(ASSETS / "bus.jpg").convert("RGB"))
    full = PersonDetector(DetectConfig(backend="hog", hog_max_side=1080)).detect([image])[0]
    scaled = PersonDetector(DetectConfig(backend="hog", hog_max_side=800)).detect([image])[0]
    best_full = max(full, key=lambda c: _iou(c.box, BUS_COAT_MAN))
    best_scaled = max(scaled, key=lambda c: _iou(c.box, BUS_COAT_MAN))
    assert _iou(best_full.box, BUS_COAT_MAN) >= 0.6 and _iou(best_scaled.box, BUS_COAT_MAN) >= 0.8
