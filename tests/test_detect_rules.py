"""Every person and pose rule on hand-made boxes and keypoints, at and around its boundary."""
from __future__ import annotations

import numpy as np
import pytest

from curation.detect import DetectConfig
from curation.detect.rules import HEAD_KEYPOINTS, HIP_KEYPOINTS, box_reject, crowd_reject, pose_reject, score_reject

PAPER = DetectConfig(weights="unused.pt")
IMAGE = (1000, 800)  # width, height


def keypoints(visible: list[int], conf: float = 0.9) -> np.ndarray:
    points = np.zeros((17, 3), dtype=np.float32)
    points[:, 0] = np.arange(17) * 3.0
    points[:, 1] = np.arange(17) * 5.0
    points[visible, 2] = conf
    return points


def test_paper_defaults():
    assert (PAPER.min_conf, PAPER.min_short_side, PAPER.min_aspect, PAPER.max_aspect) == (0.85, 90.0, 0.25, 0.5)
    assert (PAPER.min_keypoints, PAPER.min_hips, PAPER.min_head_keypoints, PAPER.keypoint_conf) == (8, 1, 2, 0.5)
    assert PAPER.person_class == 0 and PAPER.max_persons is None and PAPER.border_margin is None


@pytest.mark.parametrize("score, expected", [(0.86, None), (0.851, None), (0.85, "low_conf"), (0.2, "low_conf")])
def test_confidence_is_strictly_above_085(score, expected):
    failed = score_reject(score, PAPER)
    assert (failed and failed[0]) == expected
    if failed:
        assert failed[1] == f"score {score:.3f} <= 0.85"


def test_hog_scores_use_their_own_threshold():
    hog = DetectConfig(backend="hog", hog_min_score=0.3)
    assert score_reject(0.31, hog) is None
    assert score_reject(0.3, hog) == ("low_conf", "score 0.300 <= 0.3")


@pytest.mark.parametrize(
    "box, expected",
    [
        ((100, 100, 191, 300), None),  # 91 × 200: shorter side 91 > 90, w/h 0.455
        ((100, 100, 190, 300), "too_small"),  # shorter side exactly 90
        ((100, 100, 150, 400), "too_small"),  # 50 wide
        ((100, 100, 200, 500), None),  # w/h exactly 1/4 (inclusive)
        ((100, 100, 200, 300), None),  # w/h exactly 1/2 (inclusive)
        ((100, 100, 200, 501), "bad_aspect"),  # w/h just under 1/4: a thin sliver
        ((100, 100, 201, 300), "bad_aspect"),  # w/h just over 1/2
        ((100, 100, 400, 400), "bad_aspect"),  # a square: a sitting person or a face
    ],
)
def test_box_size_and_aspect(box, expected):
    failed = box_reject(box, IMAGE, PAPER)
    assert (failed and failed[0]) == expected


def test_box_details_name_the_measured_value():
    assert box_reject((0, 0, 90, 200), IMAGE, PAPER) == ("too_small", "shorter side 90.0px <= 90.0")
    assert box_reject((0, 0, 100, 100), IMAGE, PAPER) == ("bad_aspect", "width/height 1.000 outside [0.25, 0.5]")


def test_optional_border_truncation():
    config = DetectConfig(weights="unused.pt", border_margin=2)
    assert box_reject((1, 100, 101, 300), IMAGE, config) == ("truncated", "box 1.0px from the image edge < 2.0")
    assert box_reject((100, 499, 200, 799), IMAGE, config)[0] == "truncated"  # 1 px from the bottom
    assert box_reject((2, 2, 102, 202), IMAGE, config) is None
    assert box_reject((1, 100, 101, 300), IMAGE, PAPER) is None  # off by default


def test_optional_min_box_share():
    config = DetectConfig(weights="unused.pt", min_box_share=0.05)
    # 100 × 300 = 30,000 px of 800,000 = 0.0375
    assert box_reject((0, 0, 100, 300), IMAGE, config) == ("small_share", "box covers 0.037 of the image < 0.05")
    assert box_reject((0, 0, 200, 400), IMAGE, config) is None  # 0.1


def test_optional_max_persons():
    config = DetectConfig(weights="unused.pt", max_persons=2)
    assert crowd_reject(2, config) is None
    assert crowd_reject(3, config) == ("too_many_persons", "3 confident persons > 2")
    assert crowd_reject(50, PAPER) is None


def test_pose_passes_with_exactly_the_minimum():
    # 8 visible: 2 head (nose, left eye), 1 hip, and 5 others
    assert pose_reject(keypoints([0, 1, 11, 5, 6, 7, 8, 13]), PAPER) is None


def test_pose_few_keypoints():
    assert pose_reject(keypoints([0, 1, 11, 5, 6, 7, 8]), PAPER) == ("few_keypoints", "7 visible keypoints < 8")
    assert pose_reject(keypoints([]), PAPER) == ("few_keypoints", "0 visible keypoints < 8")


def test_pose_no_hip():
    points = keypoints([0, 1, 2, 5, 6, 7, 8, 13, 14])  # 9 visible, no hip
    assert pose_reject(points, PAPER) == ("no_hip", "0 visible hip keypoints < 1")
    points[12, 2] = 0.9  # the right hip alone is enough
    assert pose_reject(points, PAPER) is None


def test_pose_no_head():
    points = keypoints([0, 5, 6, 7, 8, 11, 12, 13, 14])  # only the nose of the head
    assert pose_reject(points, PAPER) == ("no_head", "1 visible head keypoints < 2")
    points[4, 2] = 0.9  # an ear counts as head
    assert pose_reject(points, PAPER) is None


def test_keypoint_visibility_threshold_is_inclusive_and_configurable():
    at_threshold = keypoints([0, 1, 11, 5, 6, 7, 8, 13], conf=0.5)
    assert pose_reject(at_threshold, PAPER) is None
    below = keypoints([0, 1, 11, 5, 6, 7, 8, 13], conf=0.49)
    assert pose_reject(below, PAPER)[0] == "few_keypoints"
    assert pose_reject(below, DetectConfig(weights="unused.pt", keypoint_conf=0.3)) is None


def test_keypoint_groups_are_coco():
    assert HEAD_KEYPOINTS == (0, 1, 2, 3, 4) and HIP_KEYPOINTS == (11, 12)


def test_config_is_validated_and_records_the_rules():
    with pytest.raises(ValueError, match="extra"):
        DetectConfig(weights="x.pt", min_confidence=0.9)
    with pytest.raises(ValueError, match="min_aspect"):
        DetectConfig(weights="x.pt", min_aspect=0.6)
    with pytest.raises(ValueError, match="cuda:N"):
        DetectConfig(weights="x.pt", device="gpu")
    assert PAPER.rules_used()["pose"]["min_keypoints"] == 8
    assert DetectConfig(backend="hog").rules_used()["pose"] == "skipped (hog backend: boxes only)"
    assert DetectConfig(weights="x.pt", pose_check=False).rules_used()["pose"] == "skipped (pose_check: false)"
