"""The demo person detector: a YOLO pose dataset rendered from the synthetic web, its training, and checks.

Demo weights only: trained from scratch on rendered figures, they find the synthetic web's persons and nothing
else. Real runs use COCO-pretrained `yolo11*-pose.pt` weights through the same code path.

Train and validation scenes come from different seeds (other backgrounds) and disjoint identity ranges, so the
validation split is held out. Ultralytics runs offline: YOLO_OFFLINE=1, a local font in its config folder
(its plots would download Arial.ttf), no AMP check on GPU (bf16 autocast skips the check that downloads weights).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.detect.config import DetectConfig
from curation.detect.rules import box_reject, score_reject
from curation.detect.weights import check_yolo_weights
from curation.synthweb.figure import FLIP_INDEX, KEYPOINT_NAMES
from curation.synthweb.hostile import jpeg_bytes
from curation.synthweb.scene import render_scene
from storage.fs import refuse_file

DEMO_WEIGHTS = Path(__file__).parent / "weights" / "synthweb-pose-demo.pt"
DEMO_IMGSZ = 384  # the image size the demo weights were trained at: predict at it too
TRAIN_IDENTITIES = range(0, 2000)
VAL_IDENTITIES = range(100_000, 100_400)
VAL_SEED_OFFSET = 1_000  # validation scenes use texture bank `seed + VAL_SEED_OFFSET`


class DetectorTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Bounded as `synthweb render --images`, detect's imgsz and the data-loader workers are: a typo must not
    # fill the disk or spawn processes until the machine stops.
    out: str
    train_images: int = Field(6000, ge=1, le=1_000_000)
    val_images: int = Field(400, ge=1, le=1_000_000)
    epochs: int = Field(40, ge=1, le=100_000)
    imgsz: int = Field(256, ge=32, le=4096)
    batch: int = Field(16, ge=1, le=65536)
    nbs: int = Field(16, ge=1, le=65536)  # ultralytics' default 64 gives too few optimiser steps on small datasets
    device: str = "cpu"
    workers: int = Field(2, ge=0, le=256)
    render_workers: int = Field(1, ge=1, le=256)
    seed: int = 0
    model: str = "yolo11n-pose.yaml"
    time_hours: float | None = Field(None, gt=0)  # overrides epochs: ultralytics fits its schedule into it

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?|\d+(,\d+)*", value):
            raise ValueError("must be cpu, cuda, cuda:N or GPU indices as ultralytics takes them (0, or 0,1)")
        return value

    def torch_devices(self) -> list[str]:
        """The torch devices `device` names (ultralytics' "0,1" is cuda:0 and cuda:1), to check they exist."""
        if self.device == "cpu" or self.device.startswith("cuda"):
            return [self.device]
        return [f"cuda:{index}" for index in self.device.split(",")]


# ---------------------------------------------------------------- dataset

def _render_yolo_image(job: tuple[str, str, int, int, int]) -> int:
    root, split, seed, index, identity_start = job
    identities = list(range(identity_start, identity_start + 400))
    rng = random.Random(f"synthweb-yolo-{seed}-{split}-{index}")
    scene = render_scene(rng, seed, identities)
    w, h = scene.image.size
    stem = f"{split}-{index:06d}"
    (Path(root) / "images" / split / f"{stem}.jpg").write_bytes(jpeg_bytes(scene.image))
    lines = []
    for person in scene.persons:
        x1, y1, x2, y2 = person.bbox
        values = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
        for x, y, v in person.keypoints:
            values += [x / w, y / h, v] if v else [0.0, 0.0, 0]
        lines.append("0 " + " ".join(f"{v:.5f}" if isinstance(v, float) else str(v) for v in values))
    (Path(root) / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


def write_yolo_dataset(root: str | Path, train_images: int, val_images: int, seed: int, workers: int = 1) -> Path:
    """Render a YOLO pose dataset (box + 17 keypoints per person, one class) and its data.yaml; returns the yaml.

    Every image is a function of (seed, split, index), so the dataset is the same for any number of workers.
    """
    root = Path(root)
    jobs = []
    for split, count, split_seed, identities in (("train", train_images, seed, TRAIN_IDENTITIES),
                                                 ("val", val_images, seed + VAL_SEED_OFFSET, VAL_IDENTITIES)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        # Each scene draws from a window of 400 identities that moves through the split's identity range.
        jobs += [(str(root), split, split_seed, i, identities.start + (i * 7) % (len(identities) - 399))
                 for i in range(count)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_render_yolo_image, jobs, chunksize=64))
    else:
        for job in jobs:
            _render_yolo_image(job)
    data_yaml = root / "data.yaml"
    data_yaml.write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\n"
        f"kpt_shape: [17, 3]\nflip_idx: {list(FLIP_INDEX)}\nnames:\n  0: person\n"
        f"kpt_names:\n  0: [{', '.join(KEYPOINT_NAMES)}]\n",
        encoding="utf-8",
    )
    return data_yaml


# ---------------------------------------------------------------- ultralytics, offline

def prepare_ultralytics(config_dir: str | Path | None = None):
    """Import ultralytics offline, with a local font in its config folder; returns the YOLO class.

    `config_dir` is used as YOLO_CONFIG_DIR unless the variable is set already (the tests set it).
    """
    os.environ["YOLO_OFFLINE"] = "1"
    if config_dir is not None:
        os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    from storage.compat import ensure_torchvision_ops

    ensure_torchvision_ops()
    import matplotlib
    from ultralytics import YOLO
    from ultralytics.utils import USER_CONFIG_DIR

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (USER_CONFIG_DIR / name).exists():
            USER_CONFIG_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(font, USER_CONFIG_DIR / name)
    return YOLO


def train_detector(config: DetectorTrainConfig) -> dict:
    """Render the dataset, train from scratch, validate the best weights on the held-out split.

    Writes <out>/synthweb-pose-demo.pt and <out>/metrics.json; returns the metrics.
    """
    out = Path(config.out)
    refuse_file(str(out), "detector work folder")
    YOLO = prepare_ultralytics(out / "ultralytics-config")
    check_yolo_weights(config.model, "model")  # before anything is rendered
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data_yaml = write_yolo_dataset(out / "dataset", config.train_images, config.val_images, config.seed,
                                   config.render_workers)
    render_seconds = time.perf_counter() - started
    on_cpu = config.device == "cpu"
    model = YOLO(config.model, task="pose")
    model.train(
        data=str(data_yaml), epochs=config.epochs, imgsz=config.imgsz, batch=config.batch, nbs=config.nbs,
        device=config.device, workers=config.workers, seed=config.seed, time=config.time_hours,
        project=str((out / "runs").resolve()), name="pose", exist_ok=True, plots=False,
        amp=False if on_cpu else "bf16", pretrained=False, verbose=False,
    )
    train_seconds = time.perf_counter() - started - render_seconds
    best = out / "runs" / "pose" / "weights" / "best.pt"
    weights = out / "synthweb-pose-demo.pt"
    shutil.copyfile(best, weights)
    metrics = evaluate_detector(weights, data_yaml, config.imgsz, config.device, out / "runs")
    metrics.update({
        "weights": str(weights),
        "config": config.model_dump(),
        "render_seconds": round(render_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "device": _device_name(config.device),
    })
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    return metrics


def evaluate_detector(weights: str | Path, data_yaml: str | Path, imgsz: int, device: str, project: Path) -> dict:
    """Box and pose mAP50 / mAP50-95 of `weights` on the validation split of `data_yaml`."""
    YOLO = prepare_ultralytics()
    result = YOLO(str(weights)).val(data=str(data_yaml), split="val", imgsz=imgsz, device=device, plots=False,
                                    project=str(Path(project).resolve()), name="val", exist_ok=True,
                                    verbose=False)
    return {
        "box_map50": round(float(result.box.map50), 4),
        "box_map50_95": round(float(result.box.map), 4),
        "pose_map50": round(float(result.pose.map50), 4),
        "pose_map50_95": round(float(result.pose.map), 4),
    }


def _device_name(device: str) -> str:
    import platform

    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"


# ---------------------------------------------------------------- person counts after the size rules

@dataclass
class CountCheck:
    images: int
    correct: int
    mismatches: list[tuple[str, int, int]]  # (image, expected, detected)

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else 0.0


def count_persons_check(model, samples: list[tuple[str, object, list]], rules: DetectConfig,
                        imgsz: int = DEMO_IMGSZ) -> CountCheck:
    """For each (name, image, ground-truth boxes): does the number of detections passing the detect stage's
    confidence and box rules equal the number of ground-truth boxes passing its box rules? `model` is a loaded
    ultralytics YOLO model."""
    correct, mismatches = 0, []
    for name, image, boxes in samples:
        result = model.predict(image, imgsz=imgsz, conf=min(0.25, rules.min_conf), verbose=False)[0]
        size = (result.orig_shape[1], result.orig_shape[0])
        expected = sum(box_reject(tuple(box), size, rules) is None for box in boxes)
        detected = sum(score_reject(conf, rules) is None and box_reject(tuple(box), size, rules) is None
                       for box, conf in zip(result.boxes.xyxy.tolist(), result.boxes.conf.tolist()))
        if detected == expected:
            correct += 1
        else:
            mismatches.append((name, expected, detected))
    return CountCheck(len(samples), correct, mismatches)
