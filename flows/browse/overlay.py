"""Where a sample's box and keypoints fall on its crop, for the detail page's drawing.

Shards keep the crop, not the source image, with the box and keypoints in source pixels. The crop's top-left
corner in the source follows from the box and the crop margin the run recorded, by the detect stage's own
`crop_region` (its left and top edges do not depend on the source's size).
"""
from __future__ import annotations

from curation.detect.config import DetectConfig
from curation.detect.crop import crop_region

# COCO-17 limbs, as keypoint index pairs (0 nose, 5/6 shoulders, 11/12 hips, 15/16 ankles).
SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
            (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
UNBOUNDED = (2**31, 2**31)


def overlay(bbox: list[float], keypoints: list[float] | None, crop_margin: float | None) -> dict:
    """{"box": (x, y, w, h), "points": [(x, y)], "limbs": [(x1, y1, x2, y2)]} in crop pixels; keypoints with
    confidence below the pose rules' `keypoint_conf` default are left out."""
    margin = DetectConfig.model_fields["crop_margin"].default if crop_margin is None else crop_margin
    left, top, _, _ = crop_region(tuple(bbox), UNBOUNDED, margin)
    x1, y1, x2, y2 = bbox
    visible: dict[int, tuple[float, float]] = {}
    threshold = DetectConfig.model_fields["keypoint_conf"].default
    for k in range(len(keypoints or []) // 3):
        x, y, conf = keypoints[3 * k: 3 * k + 3]
        if conf >= threshold:
            visible[k] = (x - left, y - top)
    limbs = [(*visible[a], *visible[b]) for a, b in SKELETON if a in visible and b in visible]
    return {"box": (x1 - left, y1 - top, x2 - x1, y2 - y1), "points": list(visible.values()), "limbs": limbs}
