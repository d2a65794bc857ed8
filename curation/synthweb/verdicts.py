"""The filter verdict a careful VLM gives the detect stage's crop of each rendered figure: ground truth the renderer
writes into `ground_truth.jsonl` (`expected_verdict`) and the simulated VLM answers with.

Reasons come from the filter prompt's vocabulary (curation.caption.prompts.VERDICT_REASONS).
"""
from __future__ import annotations

from curation.detect.config import DetectConfig
from curation.detect.crop import crop_region

KEEP = "one_clear_person"
# What a figure of this kind is, whatever surrounds it.
KIND_VERDICTS = {
    "small": "too_blurry",
    "truncated": "heavily_occluded",
    "occluded": "heavily_occluded",
    "mannequin": "mannequin",
    "statue": "mannequin",
    "poster": "drawing_or_render",
}
# Kinds that are no person at all: they never make a crop "several people".
NOT_PERSON_KINDS = ("mannequin", "statue", "poster")
# Another person "shares the crop" when this share of their box lies inside it and they are at least
# PROMINENT as tall as the figure.
SHARED_SHARE = 0.4
PROMINENT = 0.6
CROP_MARGIN = DetectConfig.model_fields["crop_margin"].default  # the crop the detect stage cuts by default

Box = tuple[float, float, float, float]


def expected_verdict(kind: str, bbox: Box, others: list[tuple[str, Box]], image_size: tuple[int, int],
                     crop_margin: float = CROP_MARGIN) -> str:
    """The verdict for the crop of a figure of `kind` at `bbox`; `others`: (kind, bbox) of the image's other
    figures."""
    if kind in KIND_VERDICTS:
        return KIND_VERDICTS[kind]
    region = crop_region(bbox, image_size, crop_margin)
    height = bbox[3] - bbox[1]
    for other_kind, other in others:
        if (other_kind not in NOT_PERSON_KINDS and share_inside(other, region) >= SHARED_SHARE
                and other[3] - other[1] >= PROMINENT * height):
            return "several_people"
    return KEEP


def share_inside(box: Box, region: Box) -> float:
    """The share of `box`'s area that lies inside `region`."""
    x1, y1, x2, y2 = box
    w = max(0.0, min(x2, region[2]) - max(x1, region[0]))
    h = max(0.0, min(y2, region[3]) - max(y1, region[1]))
    area = (x2 - x1) * (y2 - y1)
    return w * h / area if area > 0 else 0.0
