"""The detection stage end to end on hand-made detector outputs (real ultralytics Results objects), decoding,
cropping, and the real ultralytics inference path on a randomly initialised pose model."""
from __future__ import annotations

import hashlib
import io
import time

import numpy as np
import pytest
import torch
from PIL import Image
from ultralytics.engine.results import Results
from ultralytics.utils import ASSETS

import curation.detect.pipeline as pipeline_module
from curation.dedup import phash64
from curation.detect import DetectConfig, PersonDetector, detect_persons
from storage.images import DecodeError, decode_image
from storage.errors import GadmsError
from storage.records import Download, make_sample_id

GOOD_POSE = [0, 1, 2, 5, 6, 11, 12, 13, 14]  # 9 visible: 3 head, both hips


def _download(url: str, data: bytes) -> Download:
    return Download(url=url, page_url=f"{url}.html", alt_text=f"alt of {url}", data=data,
                    sha256=hashlib.sha256(data).hexdigest(), mime="image/jpeg", width=0, height=0,
                    source_meta=f'{{"key": "{url}"}}')


def _jpeg(pixels: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, **save)
    return buffer.getvalue()


def _scene(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 20, width // 20, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def _keypoints(box, visible: list[int]) -> list[list[float]]:
    x1, y1, x2, y2 = box
    points = []
    for k in range(17):
        points.append([x1 + (x2 - x1) * 0.5, y1 + (y2 - y1) * (k + 1) / 18, 0.9 if k in visible else 0.1])
    return points


def _results(image: np.ndarray, persons: list[tuple]) -> Results:
    """A real ultralytics Results for `image` with (box, conf, visible keypoints) persons, as a pose model gives."""
    boxes = torch.tensor([[*box, conf, 0.0] for box, conf, _ in persons], dtype=torch.float32).reshape(-1, 6)
    keypoints = torch.tensor([_keypoints(box, vis) for box, _, vis in persons], dtype=torch.float32).reshape(-1, 17, 3)
    return Results(image, path="image.jpg", names={0: "person"}, boxes=boxes, keypoints=keypoints)


@pytest.fixture(scope="module")
def pose_detector():
    """The real YoloBackend over a randomly initialised yolo11n-pose (tests replace its predict where needed)."""
    return PersonDetector(DetectConfig(weights="yolo11n-pose.yaml", imgsz=128, device="cpu"))


class FakePredict:
    """Stands in for model.predict: hand-made Results chosen by image width; records what it was given."""

    def __init__(self, persons_by_width: dict[int, list[tuple]]):
        self.persons_by_width = persons_by_width
        self.calls = []

    def __call__(self, images, **kwargs):
        self.calls.append((len(images), kwargs))
        return [_results(image, self.persons_by_width.get(image.shape[1], [])) for image in images]


KEEP_BOX = (100.0, 100.0, 200.0, 400.0)  # 100 × 300
SCENE_PERSONS = [
    (KEEP_BOX, 0.95, GOOD_POSE),
    ((300.0, 100.0, 400.0, 400.0), 0.60, GOOD_POSE),  # low_conf
    ((420.0, 100.0, 480.0, 250.0), 0.95, GOOD_POSE),  # too_small (60 wide)
    ((500.0, 100.0, 700.0, 400.0), 0.95, GOOD_POSE),  # bad_aspect (2/3)
    ((100.0, 420.0, 200.0, 720.0), 0.90, [0, 1, 5, 6, 11, 12, 13]),  # few_keypoints (7)
    ((300.0, 420.0, 400.0, 720.0), 0.90, [0, 1, 2, 5, 6, 7, 8, 13, 14]),  # no_hip
    ((500.0, 420.0, 600.0, 720.0), 0.90, [0, 5, 6, 7, 8, 11, 12, 13, 14]),  # no_head
]


def test_every_rule_and_the_kept_crop(pose_detector, monkeypatch):
    scene = _scene(800, 760, seed=1)
    empty = _scene(640, 480, seed=2)
    fake = FakePredict({800: SCENE_PERSONS, 640: []})
    monkeypatch.setattr(pose_detector.backend.model, "predict", fake)
    downloads = [_download("https://x.example/scene.jpg", _jpeg(scene)),
                 _download("https://x.example/empty.jpg", _jpeg(empty)),
                 _download("https://x.example/broken.jpg", _jpeg(empty)[:1000])]
    decoded_data = []
    monkeypatch.setattr(pipeline_module, "decode_image", lambda data, limit: decoded_data.append(data) or decode_image(data, limit))

    crops, rejects = detect_persons(downloads, pose_detector)

    assert decoded_data == [d.data for d in downloads]  # each download decoded exactly once
    assert fake.calls[0][0] == 2 and fake.calls[0][1]["classes"] == [0] and fake.calls[0][1]["imgsz"] == 128
    sha = downloads[0].sha256
    assert [(r.stage, r.reason, r.url, r.sample_id) for r in rejects] == [
        ("decode", "decode_error", downloads[2].url, ""),
        ("detect", "low_conf", downloads[0].url, make_sample_id(sha, SCENE_PERSONS[1][0])),
        ("detect", "too_small", downloads[0].url, make_sample_id(sha, SCENE_PERSONS[2][0])),
        ("detect", "bad_aspect", downloads[0].url, make_sample_id(sha, SCENE_PERSONS[3][0])),
        ("detect", "no_person", downloads[1].url, ""),
        ("pose", "few_keypoints", downloads[0].url, make_sample_id(sha, SCENE_PERSONS[4][0])),
        ("pose", "no_hip", downloads[0].url, make_sample_id(sha, SCENE_PERSONS[5][0])),
        ("pose", "no_head", downloads[0].url, make_sample_id(sha, SCENE_PERSONS[6][0])),
    ]
    assert rejects[0].detail.startswith("OSError: image file is truncated")
    # A rejected person carries its box (the audit against ground truth matches it); an image carries none.
    assert [r.bbox for r in rejects] == [None, *(tuple(map(float, SCENE_PERSONS[k][0])) for k in (1, 2, 3)),
                                         None, *(tuple(map(float, SCENE_PERSONS[k][0])) for k in (4, 5, 6))]

    (crop,) = crops
    decoded = np.asarray(Image.open(io.BytesIO(downloads[0].data)).convert("RGB"))
    # margin 0.05 of 100 × 300: 5 px left/right, 15 px top/bottom
    expected_pixels = decoded[85:415, 95:205]
    assert crop.sample_id == make_sample_id(sha, KEEP_BOX)
    assert (crop.source_url, crop.page_url, crop.alt_text, crop.source_sha256, crop.source_meta) == (
        downloads[0].url, downloads[0].page_url, downloads[0].alt_text, sha, downloads[0].source_meta)
    assert crop.bbox == KEEP_BOX and crop.det_score == pytest.approx(0.95)
    assert (crop.width, crop.height) == (110, 330)
    assert Image.open(io.BytesIO(crop.image)).size == (110, 330)
    assert crop.crop_sha256 == hashlib.sha256(crop.image).hexdigest()
    assert crop.phash == phash64(expected_pixels)
    assert 0 <= crop.phash < 2**64
    expected_keypoints = np.array(_keypoints(KEEP_BOX, GOOD_POSE), dtype=np.float32).ravel()
    np.testing.assert_allclose(crop.keypoints, expected_keypoints, rtol=1e-6)


def test_max_persons_border_and_share_limits(pose_detector, monkeypatch):
    scene = _scene(800, 760, seed=3)
    persons = [((0.0, 100.0, 100.0, 400.0), 0.95, GOOD_POSE), ((300.0, 100.0, 400.0, 400.0), 0.95, GOOD_POSE)]
    monkeypatch.setattr(pose_detector.backend.model, "predict", FakePredict({800: persons}))
    downloads = [_download("https://x.example/two.jpg", _jpeg(scene))]
    base = pose_detector.config

    pose_detector.config = base.model_copy(update={"max_persons": 1})
    crops, rejects = detect_persons(downloads, pose_detector)
    assert crops == [] and [r.reason for r in rejects] == ["too_many_persons", "too_many_persons"]

    pose_detector.config = base.model_copy(update={"border_margin": 1.0})
    crops, rejects = detect_persons(downloads, pose_detector)
    assert [c.bbox[0] for c in crops] == [300.0] and [r.reason for r in rejects] == ["truncated"]

    pose_detector.config = base.model_copy(update={"min_box_share": 0.1})  # each box is 30,000 / 608,000 px
    crops, rejects = detect_persons(downloads, pose_detector)
    assert crops == [] and [r.reason for r in rejects] == ["small_share", "small_share"]
    pose_detector.config = base


@pytest.mark.slow
def test_separate_pose_model_runs_on_crops_and_maps_keypoints_back(monkeypatch):
    detector = PersonDetector(DetectConfig(weights="yolo11n.yaml", pose_weights="yolo11n-pose.yaml", imgsz=128, device="cpu"))
    assert detector.separate_pose_model
    scene = _scene(800, 760, seed=4)
    box_a, box_b = (100.0, 100.0, 200.0, 400.0), (400.0, 100.0, 520.0, 400.0)  # crops 110 and 132 wide
    boxes_only = FakePredict({800: [(box_a, 0.95, []), (box_b, 0.95, [])]})
    crop_box = (10.0, 20.0, 100.0, 300.0)  # where the pose model finds the person inside crop A (110 × 330)
    on_crops = FakePredict({110: [(crop_box, 0.9, GOOD_POSE)]})
    monkeypatch.setattr(detector.backend.model, "predict", boxes_only)
    monkeypatch.setattr(detector.backend.pose_model, "predict", on_crops)
    download = _download("https://x.example/pair.jpg", _jpeg(scene))
    crops, rejects = detect_persons([download], detector)
    assert [count for count, _ in on_crops.calls] == [2]
    (crop,) = crops
    assert crop.bbox == box_a
    expected = np.array(_keypoints(crop_box, GOOD_POSE), dtype=np.float32)
    expected[:, 0] += 95  # crop A starts at (95, 85) in the source
    expected[:, 1] += 85
    np.testing.assert_allclose(np.reshape(crop.keypoints, (17, 3)), expected, rtol=1e-6)
    assert [(r.stage, r.reason, r.sample_id) for r in rejects] == [
        ("pose", "no_pose", make_sample_id(download.sha256, box_b))]


@pytest.mark.slow
def test_box_model_without_pose_needs_pose_weights_or_pose_check_off():
    with pytest.raises(GadmsError, match="has no keypoints; set pose_weights"):
        PersonDetector(DetectConfig(weights="yolo11n.yaml", device="cpu"))
    detector = PersonDetector(DetectConfig(weights="yolo11n.yaml", pose_check=False, device="cpu"))
    assert not detector.config.uses_pose and not detector.separate_pose_model


def test_unloadable_weights_are_one_line_errors(tmp_path):
    with pytest.raises(GadmsError, match=r"^weights '.*missing\.pt': cannot load YOLO model") as info:
        PersonDetector(DetectConfig(weights=str(tmp_path / "missing.pt")))
    assert "\n" not in str(info.value)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(GadmsError, match="bad.pt"):
        PersonDetector(DetectConfig(weights=str(bad)))


@pytest.mark.slow
def test_real_ultralytics_path_on_a_random_model(pose_detector):
    """Real inference (no stand-in): random weights give low scores, and every candidate is accounted for."""
    config = pose_detector.config
    pose_detector.config = config.model_copy(update={"candidate_conf": 0.0, "batch_size": 2})
    try:
        downloads = [_download(p.name, p.read_bytes()) for p in sorted(ASSETS.iterdir())]
        images = [decode_image(d.data, config.max_pixels) for d in downloads]
        candidates = pose_detector.detect(images)
        crops, rejects = detect_persons(downloads, pose_detector)
    finally:
        pose_detector.config = config
    for image, found in zip(images, candidates):
        height, width = image.shape[:2]
        for candidate in found:
            x1, y1, x2, y2 = candidate.box
            assert -1 <= x1 <= x2 <= width + 1 and -1 <= y1 <= y2 <= height + 1  # source pixels, not imgsz
            assert candidate.keypoints.shape == (17, 3)
    assert crops == []
    expected = sum(len(found) or 1 for found in candidates)  # a reject per candidate, or no_person per image
    assert len(rejects) == expected
    assert {r.reason for r in rejects} <= {"low_conf", "no_person"}


def test_decode_applies_exif_orientation():
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    decoded = decode_image(_jpeg(pixels, exif=exif), max_pixels=10_000)
    assert decoded.shape == (40, 20, 3)
    assert decoded[2, 10, 0] > 200 and decoded[37, 10, 0] < 60  # red is now on top


def test_decode_composites_transparency_on_white_and_converts_modes():
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[:, :5] = (0, 0, 255, 255)
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue(), max_pixels=1000)
    assert decoded.dtype == np.uint8 and decoded.shape == (10, 10, 3)
    assert tuple(decoded[0, 0]) == (0, 0, 255) and tuple(decoded[0, 9]) == (255, 255, 255)
    grey16 = io.BytesIO()
    Image.fromarray(np.full((4, 4), 0x8000, dtype=np.uint16)).save(grey16, format="PNG")
    assert tuple(decode_image(grey16.getvalue(), max_pixels=1000)[0, 0]) == (128, 128, 128)


def test_decode_rejects_garbage_truncation_and_too_many_pixels():
    import ultralytics.utils.patches  # noqa: F401  (wraps PIL's Image.open with a plugin installer)

    with pytest.raises(DecodeError) as info:
        decode_image(b"<html>not an image</html>", max_pixels=1000)
    assert info.value.reason == "decode_error" and "UnidentifiedImageError" in info.value.detail
    with pytest.raises(DecodeError) as info:
        decode_image(_jpeg(_scene(200, 200, 5))[:600], max_pixels=10**6)
    assert info.value.reason == "decode_error"
    big = io.BytesIO()
    Image.new("L", (3000, 2000)).save(big, format="PNG")
    with pytest.raises(DecodeError) as info:
        decode_image(big.getvalue(), max_pixels=5_999_999)
    assert (info.value.reason, info.value.detail) == ("too_many_pixels", "3000x2000 = 6000000 pixels > 5999999")


def test_detection_leaves_torchs_thread_count_as_it_was(pose_detector):
    """ultralytics' predictor setup sets torch's process-wide thread count to its NUM_THREADS (cpu_count - 1);
    training later in the same process must keep the count the process had."""
    import torch
    from ultralytics.utils import NUM_THREADS

    before = torch.get_num_threads()
    wanted = NUM_THREADS + 1  # never the count ultralytics would set
    torch.set_num_threads(wanted)
    try:
        fresh = PersonDetector(pose_detector.config)  # a new predictor: its setup runs select_device
        fresh.detect([decode_image((ASSETS / "bus.jpg").read_bytes(), pose_detector.config.max_pixels)])
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_detections_in_overlapping_threads_leave_torchs_thread_count_as_it_was(pose_detector, monkeypatch):
    """A build detects in chunk threads. torch keeps the thread count in a process-wide setting that a thread
    reads when it first runs parallel work: after two detections that overlap in two threads, a new thread (as
    the demo's main thread, which trains after the build) must still get the count from before."""
    import threading

    import torch
    from ultralytics.utils import NUM_THREADS

    def count_in_a_new_thread() -> int:
        seen = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        return seen[0]

    before = torch.get_num_threads()
    wanted = NUM_THREADS + 1  # never the count ultralytics sets
    image = decode_image((ASSETS / "bus.jpg").read_bytes(), pose_detector.config.max_pixels)
    detectors = [PersonDetector(pose_detector.config) for _ in range(2)]
    for order, detector in enumerate(detectors):
        def overlapping_predict(images, order=order, **kwargs):
            torch.set_num_threads(NUM_THREADS)  # what ultralytics' select_device does
            time.sleep(0.2 + 0.3 * order)  # the second starts while the first runs, and ends after it
            return []
        monkeypatch.setattr(detector.backend.model, "predict", overlapping_predict)

    def detect(detector, delay):
        time.sleep(delay)
        detector.detect([image])

    torch.set_num_threads(wanted)
    try:
        assert count_in_a_new_thread() == wanted
        threads = [threading.Thread(target=detect, args=(d, 0.1 * i)) for i, d in enumerate(detectors)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert count_in_a_new_thread() == wanted
    finally:
        torch.set_num_threads(before)
