"""The person and pose rules as pure functions of a box, its score and keypoints (no model, no image).

Each returns None when the person passes, else (reason, detail) for the rejects table.
COCO-17 keypoint order: 0 nose, 1-2 eyes, 3-4 ears, 5-6 shoulders, 7-8 elbows, 9-10 wrists, 11-12 hips,
13-14 knees, 15-16 ankles.
"""
from __future__ import annotations

import numpy as np

from curation.detect.config import DetectConfig

HEAD_KEYPOINTS = (0, 1, 2, 3, 4)
HIP_KEYPOINTS = (11, 12)
Box = tuple[float, float, float, float]


def score_reject(score: float, config: DetectConfig) -> tuple[str, str] | None:
    """Confidence rule (strictly greater than the threshold): min_conf for yolo, hog_min_score for hog."""
    threshold = config.min_conf if config.backend == "yolo" else config.hog_min_score
    if not score > threshold:
        return "low_conf", f"score {score:.3f} <= {threshold}"
    return None


def box_reject(box: Box, image_size: tuple[int, int], config: DetectConfig) -> tuple[str, str] | None:
    """Size, aspect and the optional border and share rules for a box (x1, y1, x2, y2) in an image (w, h)."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    if not min(width, height) > config.min_short_side:
        return "too_small", f"shorter side {min(width, height):.1f}px <= {config.min_short_side}"
    aspect = width / height
    if not config.min_aspect <= aspect <= config.max_aspect:
        return "bad_aspect", f"width/height {aspect:.3f} outside [{config.min_aspect}, {config.max_aspect}]"
    image_w, image_h = image_size
    if config.border_margin is not None:
        gap = min(x1, y1, image_w - x2, image_h - y2)
        if gap < config.border_margin:
            return "truncated", f"box {gap:.1f}px from the image edge < {config.border_margin}"
    if config.min_box_share is not None:
        share = width * height / float(image_w * image_h)
        if share < config.min_box_share:
            return "small_share", f"box covers {share:.3f} of the image < {config.min_box_share}"
    return None


def pose_reject(keypoints: np.ndarray, config: DetectConfig) -> tuple[str, str] | None:
    """Pose rules on 17×3 keypoints (x, y, confidence): enough visible keypoints, a hip, a head."""
    visible = np.asarray(keypoints, dtype=np.float32)[:, 2] >= config.keypoint_conf
    count = int(visible.sum())
    if count < config.min_keypoints:
        return "few_keypoints", f"{count} visible keypoints < {config.min_keypoints}"
    hips = int(visible[list(HIP_KEYPOINTS)].sum())
    if hips < config.min_hips:
        return "no_hip", f"{hips} visible hip keypoints < {config.min_hips}"
    head = int(visible[list(HEAD_KEYPOINTS)].sum())
    if head < config.min_head_keypoints:
        return "no_head", f"{head} visible head keypoints < {config.min_head_keypoints}"
    return None


def crowd_reject(confident_persons: int, config: DetectConfig) -> tuple[str, str] | None:
    """Optional max_persons rule, applied to the persons that passed the confidence rule."""
    if config.max_persons is not None and confident_persons > config.max_persons:
        return "too_many_persons", f"{confident_persons} confident persons > {config.max_persons}"
    return None
