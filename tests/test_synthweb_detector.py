"""The demo detector: its YOLO dataset, a tiny real training run, and the committed weights on rendered persons."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from curation.detect.config import DetectConfig
from curation.detect.rules import box_reject
from curation.synthweb import render_site
from curation.synthweb.detector import (
    DEMO_WEIGHTS,
    DetectorTrainConfig,
    count_persons_check,
    prepare_ultralytics,
    train_detector,
    write_yolo_dataset,
)
from flows.cli import main


def test_yolo_dataset_labels_match_the_rendered_persons(tmp_path):
    data_yaml = write_yolo_dataset(tmp_path / "ds", train_images=12, val_images=4, seed=5)
    text = data_yaml.read_text()
    assert "kpt_shape: [17, 3]" in text and "flip_idx: [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]" in text
    labels = sorted((tmp_path / "ds" / "labels" / "train").glob("*.txt"))
    assert len(labels) == 12 and len(list((tmp_path / "ds" / "labels" / "val").glob("*.txt"))) == 4
    persons = 0
    for label in labels:
        image = Image.open(tmp_path / "ds" / "images" / "train" / (label.stem + ".jpg"))
        assert image.size[0] >= 256
        for line in label.read_text().splitlines():
            values = line.split()
            assert values[0] == "0" and len(values) == 1 + 4 + 17 * 3
            numbers = [float(v) for v in values[1:]]
            assert all(0.0 <= v <= 1.0 for v in numbers[:4])
            assert all(v in (0.0, 1.0, 2.0) for v in numbers[4 + 2::3])
            persons += 1
    assert persons > 0
    again = write_yolo_dataset(tmp_path / "again", train_images=12, val_images=4, seed=5)
    assert again.parent.joinpath("labels/train", labels[3].name).read_text() == labels[3].read_text()


@pytest.mark.slow
def test_train_detector_runs_offline_end_to_end(tmp_path):
    config = DetectorTrainConfig(out=str(tmp_path / "run"), train_images=8, val_images=4, epochs=1, imgsz=64,
                                 batch=4, nbs=4, workers=0)
    metrics = train_detector(config)
    assert (tmp_path / "run" / "synthweb-pose-demo.pt").stat().st_size > 1_000_000
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["box_map50"] == metrics["box_map50"] and 0.0 <= saved["pose_map50"] <= 1.0
    assert saved["config"]["imgsz"] == 64
    assert main(["synthweb", "train-detector", "--out", str(tmp_path / "bad"), "--train-images", "0"]) == 2


@pytest.mark.slow
def test_demo_weights_count_the_persons_that_pass_the_size_rules(tmp_path):
    site = render_site(tmp_path / "web", images=40, seed=2024)
    samples = []
    for line in site.ground_truth.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["fault"] is None and record["duplicate_of"] is None:
            image = Image.open(site.docroot / record["path"].lstrip("/")).convert("RGB")
            samples.append((record["path"], image, [p["bbox"] for p in record["persons"]]))
    assert len(samples) == 40
    rules = DetectConfig(weights=str(DEMO_WEIGHTS))  # the paper's rules: the detect stage's defaults
    expected = sum(box_reject(tuple(box), image.size, rules) is None for _, image, boxes in samples for box in boxes)
    assert expected >= 25  # the set has persons to keep, not only rejects
    model = prepare_ultralytics()(str(DEMO_WEIGHTS))
    check = count_persons_check(model, samples, rules)
    assert check.images == 40
    assert check.accuracy >= 0.9, check.mismatches
