"""Person detectors behind one interface: ultralytics YOLO (boxes, optionally keypoints) and OpenCV HOG (boxes).

`detect(images)` takes H×W×3 RGB uint8 arrays and returns, per image, the person candidates the model reported
(boxes in source pixels). The rules (curation.detect.rules) decide afterwards which of them are kept.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from curation.detect.config import DetectConfig
from curation.detect.weights import check_yolo_weights
from storage.devices import existing_device
from storage.errors import GadmsError


class InferenceThreads:
    """torch's thread count while detection runs, and the count from before put back when the last one ends.

    ultralytics' select_device (run when a predictor is set up) sets torch's thread count to its NUM_THREADS
    (cpu_count - 1). Inference runs with that count, which leaves a core to the stages running beside it in a
    build (with 2 threads on 2 cores the demo's detection took 358 s, not 266 s). torch keeps the count in a
    process-wide setting that each thread reads when it first runs parallel work, and a build detects in chunk
    threads, so a per-call save and restore let one call save the count another had lowered and put that back
    last: the demo's main thread then trained on one core of two. One object per process keeps the count."""

    def __init__(self):
        self._lock = threading.Lock()
        self._active = 0
        self._outside = 0

    @contextmanager
    def held(self, count: int) -> Iterator[None]:
        import torch

        with self._lock:
            if self._active == 0:
                self._outside = torch.get_num_threads()
            self._active += 1
            torch.set_num_threads(count)
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    torch.set_num_threads(self._outside)


# One per process, as torch's setting is.
INFERENCE_THREADS = InferenceThreads()


@dataclass
class Candidate:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2, source pixels
    score: float
    keypoints: np.ndarray | None = None  # 17×3 (x, y, confidence) in source pixels; None: the model has no pose


class YoloBackend:
    """ultralytics YOLO: one pose model for boxes and keypoints, or a box model plus a pose model run on crops."""

    def __init__(self, config: DetectConfig):
        from storage.compat import ensure_torchvision_ops

        ensure_torchvision_ops()
        self.config = config
        # None: ultralytics picks cuda:0 or cpu. Checked before the weights load, which takes seconds.
        self.device = None if config.device == "auto" else str(existing_device(config.device, "detect.device"))
        self.model = _load_yolo(config.weights, "weights")
        self.pose_model = _load_yolo(config.pose_weights, "pose_weights") if config.pose_weights else None
        if self.pose_model is not None and self.pose_model.task != "pose":
            raise GadmsError(f"pose_weights {config.pose_weights!r}: a {self.pose_model.task!r} model, not a pose model")
        self.keypoints_from_detector = self.pose_model is None and self.model.task == "pose"
        if config.pose_check and self.pose_model is None and not self.keypoints_from_detector:
            raise GadmsError(
                f"weights {config.weights!r}: a {self.model.task!r} model has no keypoints; "
                "set pose_weights to a pose model, or pose_check: false to skip the pose rules"
            )

    def _predict(self, model, images: list[np.ndarray]) -> list:
        # ultralytics reads numpy arrays as BGR (OpenCV order). rect=False: every image is letterboxed to the
        # same square whatever its batch mates, so its boxes (and sample id) do not depend on which images share
        # its batch; ultralytics pads to the square anyway whenever a batch mixes shapes, as web batches do.
        from ultralytics.utils import NUM_THREADS

        bgr = [np.ascontiguousarray(image[..., ::-1]) for image in images]
        with INFERENCE_THREADS.held(NUM_THREADS):
            return model.predict(
                bgr, imgsz=self.config.imgsz, conf=self.config.candidate_conf, iou=self.config.iou,
                classes=[self.config.person_class], device=self.device, verbose=False, rect=False,
            )

    def detect(self, images: list[np.ndarray]) -> list[list[Candidate]]:
        if not images:
            return []
        per_image = []
        for result in self._predict(self.model, images):
            boxes = result.boxes.xyxy.cpu().numpy().astype(float)
            scores = result.boxes.conf.cpu().numpy().astype(float)
            keypoints = _keypoints(result) if self.keypoints_from_detector else [None] * len(boxes)
            per_image.append([Candidate(tuple(b), float(s), k) for b, s, k in zip(boxes, scores, keypoints)])
        return per_image

    def pose(self, crops: list[np.ndarray]) -> list[np.ndarray | None]:
        """Keypoints (crop pixels) of the most confident person the pose model finds in each crop, or None."""
        if not crops:
            return []
        found = []
        for result in self._predict(self.pose_model, crops):
            if not len(result.boxes):
                found.append(None)
                continue
            best = int(np.argmax(result.boxes.conf.cpu().numpy()))
            found.append(_keypoints(result)[best])
        return found


def _load_yolo(weights: str, field: str):
    from ultralytics import YOLO

    check_yolo_weights(weights, field)
    try:
        return YOLO(weights)
    except Exception as exc:  # ultralytics raises many types (missing file, offline download, bad checkpoint)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GadmsError(f"{field} {weights!r}: cannot load YOLO model: {message}") from None


def _keypoints(result) -> list[np.ndarray]:
    """17×3 keypoints per box; models with (x, y) keypoints only count every non-zero point as visible."""
    if result.keypoints is None:
        return [None] * len(result.boxes)
    data = result.keypoints.data.cpu().numpy().astype(np.float32)
    if data.shape[-1] == 2:
        visible = np.any(data != 0, axis=-1, keepdims=True).astype(np.float32)
        data = np.concatenate([data, visible], axis=-1)
    return list(data)


class HogBackend:
    """OpenCV's HOG + linear SVM people detector (Dalal & Triggs): no weights needed, boxes only.

    Its scores are SVM margins, judged by `hog_min_score` instead of `min_conf`. It runs on a copy scaled down to
    `hog_max_side` (HOG cost grows with pixels), and boxes are scaled back to source pixels. A detection window
    is 64×128 with the person ~40×96 in its middle (the INRIA training layout), so each window is shrunk to
    that extent: the box then bounds the person, as a YOLO box does, instead of the window's margin.
    """

    PERSON_INSET = (12 / 64, 16 / 128)  # share of the window's width / height outside the person, per side

    def __init__(self, config: DetectConfig):
        import cv2

        self.config = config
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def detect(self, images: list[np.ndarray]) -> list[list[Candidate]]:
        import cv2

        per_image = []
        for image in images:
            height, width = image.shape[:2]
            scale = min(1.0, self.config.hog_max_side / max(height, width))
            small = image if scale == 1.0 else cv2.resize(
                image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
            )
            window_width, window_height = self.hog.winSize
            if small.shape[0] < window_height or small.shape[1] < window_width:
                per_image.append([])  # smaller than one HOG window: no person fits, and OpenCV would crash
                continue
            bgr = np.ascontiguousarray(small[..., ::-1])
            rects, weights = self.hog.detectMultiScale(bgr, winStride=(8, 8), padding=(8, 8), scale=1.05)
            candidates = []
            for (x, y, w, h), score in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).ravel()):
                inset_x, inset_y = w * self.PERSON_INSET[0], h * self.PERSON_INSET[1]
                box = ((x + inset_x) / scale, (y + inset_y) / scale, (x + w - inset_x) / scale, (y + h - inset_y) / scale)
                clipped = (max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3]))
                candidates.append(Candidate(clipped, float(score)))
            per_image.append(candidates)
        return per_image
