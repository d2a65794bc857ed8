"""Faces in a person crop: OpenCV's Haar cascade `haarcascade_frontalface_alt2.xml`, bundled with opencv-python.

Why this detector: the weights must ship with an installed package (nothing is downloaded at run time). What
ships here: opencv-python's Haar cascades (frontal face default / alt / alt2 / alt_tree, profile face) and
scikit-image's LBP frontal-face cascade (its copy does not load in OpenCV; skimage's own detector took 30–130 ms
a crop). No DNN face model (YuNet, RetinaFace) ships with any installed package. Of the Haar cascades, alt2
found every clear face of ultralytics' bus.jpg and zidane.jpg and scikit-image's astronaut with no false hit;
`default` found false faces in zidane.jpg, `alt` and `alt_tree` missed some (README, "Faces").

Cheap by construction: the cascade runs on the upper `face_search_share` of the crop only (the person rules keep
upright persons: the head is in the upper half), downscaled so its longer side is at most `face_max_side` px. So
faces smaller than about 20 px at that scale (2/9 of the crop's width for a typical 1:2.5 crop at the default 112 px)
are not found, nor are faces in the crop's lower half. Frontal faces only: a face turned away or in profile is not
counted. The defaults (112 px, pyramid step 1.12, 2 neighbours) cost 0.6 of the earlier 144 px / 1.15 / 3 and found
as many faces or more on synthetic crops (README, "Faces").
"""
from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from curation.detect.config import DetectConfig

CASCADE_FILE = Path(cv2.data.haarcascades) / "haarcascade_frontalface_alt2.xml"
CASCADE_MIN_SIZE = 20  # px: alt2 is trained on 20 × 20 windows


class FaceCounter:
    """Face boxes of RGB crops. Safe to share between threads: each thread gets its own cascade (an OpenCV
    CascadeClassifier keeps scratch buffers, so one instance must not run in two threads at once)."""

    def __init__(self, config: DetectConfig):
        self.max_side = config.face_max_side
        self.search_share = config.face_search_share
        self.scale_factor = config.face_scale_factor
        self.min_neighbors = config.face_min_neighbors
        self._local = threading.local()

    def _cascade(self) -> cv2.CascadeClassifier:
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = cv2.CascadeClassifier(str(CASCADE_FILE))
            if cascade.empty():
                raise RuntimeError(f"{CASCADE_FILE}: OpenCV could not load the face cascade")
            self._local.cascade = cascade
        return cascade

    def boxes(self, rgb: np.ndarray) -> list[list[float]]:
        """[x1, y1, x2, y2] of each face found in `rgb` (H × W × 3 uint8), in its pixels, top to bottom."""
        height, width = rgb.shape[:2]
        region = rgb[: max(1, round(height * self.search_share))]
        grey = cv2.cvtColor(np.ascontiguousarray(region), cv2.COLOR_RGB2GRAY)
        scale = min(1.0, self.max_side / max(grey.shape))
        if scale < 1.0:
            size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        if min(grey.shape) < CASCADE_MIN_SIZE:
            return []
        found = self._cascade().detectMultiScale(
            cv2.equalizeHist(grey), scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(CASCADE_MIN_SIZE, CASCADE_MIN_SIZE))
        # Back to crop pixels: the region starts at the crop's top-left corner, so only the scale is undone.
        sx, sy = region.shape[1] / grey.shape[1], region.shape[0] / grey.shape[0]
        boxes = [[float(x * sx), float(y * sy), float(min(width, (x + w) * sx)), float(min(height, (y + h) * sy))]
                 for x, y, w, h in (found if len(found) else [])]
        return sorted(boxes, key=lambda b: (b[1], b[0]))
