"""Settings of the detection stage: detector, the paper's person/pose rules, cropping and decoding limits.

Defaults are the paper's rules (WebPerson, GA-DMS): person class only, confidence > 0.85, shorter box side
> 90 px, width/height within [1/4, 1/2]; pose: ≥ 8 visible keypoints, ≥ 1 hip, ≥ 2 head keypoints.
The paper does not say when a keypoint counts as visible: here it is keypoint confidence ≥ `keypoint_conf`
(default 0.5: the model rates the keypoint more likely visible than not; ultralytics' plots draw keypoints
from 0.25, a looser choice).
The config is saved with every run, so it records which rules were used.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from storage.images import DEFAULT_MAX_PIXELS


class DetectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Detector
    backend: Literal["yolo", "hog"] = "yolo"
    # Name, .pt path, or .yaml (random init, tests only). No default: the yolo backend needs it named, so a real
    # run cannot silently use the synthetic-only demo weights.
    weights: str | None = Field(None, validate_default=True)
    pose_weights: str | None = None  # a separate pose model run on each box's crop; None: `weights` does both
    pose_check: bool = True  # the yolo backend needs pose keypoints for it; hog always skips it
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    batch_size: int = Field(16, ge=1)
    imgsz: int = Field(640, ge=32, le=4096)  # ultralytics allocates imgsz² per image: 10^9 is out of memory
    candidate_conf: float = Field(0.25, ge=0.0, le=1.0)  # boxes below this are never reported at all
    iou: float = Field(0.7, gt=0.0, le=1.0)  # NMS
    person_class: int = Field(0, ge=0)
    hog_min_score: float = 0.5  # hog SVM margin (not a probability); replaces min_conf for hog
    hog_max_side: int = Field(800, ge=128)  # hog runs on a copy downscaled to this longest side

    # The paper's person rules (strict > on conf and side, inclusive aspect range)
    min_conf: float = Field(0.85, ge=0.0, le=1.0)
    min_short_side: float = Field(90.0, ge=0.0)
    min_aspect: float = Field(0.25, gt=0.0)  # box width / height
    max_aspect: float = Field(0.5, gt=0.0)
    # The paper's pose rules (COCO-17 keypoints)
    keypoint_conf: float = Field(0.5, ge=0.0, le=1.0)
    min_keypoints: int = Field(8, ge=0, le=17)
    min_hips: int = Field(1, ge=0, le=2)
    min_head_keypoints: int = Field(2, ge=0, le=5)
    # Optional limits (None: off)
    max_persons: int | None = Field(None, ge=1)  # more confident persons than this: the whole image is rejected
    border_margin: float | None = Field(None, ge=0.0)  # a box within this many px of an image edge is truncated
    min_box_share: float | None = Field(None, gt=0.0, le=1.0)  # box area / image area

    # Face counting on each kept crop (curation.detect.faces: a Haar cascade bundled with opencv-python)
    face_count: bool = True
    face_max_side: int = Field(112, ge=20)  # the searched region is downscaled to this longest side (cost bound)
    face_search_share: float = Field(0.5, gt=0.0, le=1.0)  # the upper share of the crop that is searched
    face_scale_factor: float = Field(1.12, gt=1.0, le=2.0)  # cascade pyramid step
    face_min_neighbors: int = Field(2, ge=0)  # overlapping hits a face needs; higher: fewer false faces

    # Cropping and decoding
    crop_margin: float = Field(0.05, ge=0.0, le=1.0)  # each side grows by this share of the box size, clipped
    jpeg_quality: int = Field(90, ge=1, le=100)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)  # same default as the crawl stage

    @field_validator("weights")
    @classmethod
    def _weights_named(cls, value: str | None, info) -> str | None:
        if value is None and info.data.get("backend", "yolo") == "yolo":
            raise ValueError("required for the yolo backend: a .pt file or ultralytics name, e.g. yolo11x-pose.pt")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _aspect_range(self) -> "DetectConfig":
        if self.min_aspect > self.max_aspect:
            raise ValueError(f"min_aspect {self.min_aspect} is above max_aspect {self.max_aspect}")
        return self

    @property
    def uses_pose(self) -> bool:
        """Whether the pose rules run (the hog backend has no keypoints)."""
        return self.backend == "yolo" and self.pose_check

    def rules_used(self) -> dict:
        """The rules this run applied, for run records (the pose check is marked skipped where it is)."""
        rules = {
            "backend": self.backend,
            "person_class": self.person_class,
            "min_conf": self.min_conf if self.backend == "yolo" else None,
            "hog_min_score": self.hog_min_score if self.backend == "hog" else None,
            "min_short_side": self.min_short_side,
            "aspect": [self.min_aspect, self.max_aspect],
            "max_persons": self.max_persons,
            "border_margin": self.border_margin,
            "min_box_share": self.min_box_share,
            "faces": {"detector": "opencv haarcascade_frontalface_alt2", "max_side": self.face_max_side,
                      "search_share": self.face_search_share, "scale_factor": self.face_scale_factor,
                      "min_neighbors": self.face_min_neighbors} if self.face_count else "skipped (face_count: false)",
        }
        if self.uses_pose:
            rules["pose"] = {
                "keypoint_conf": self.keypoint_conf,
                "min_keypoints": self.min_keypoints,
                "min_hips": self.min_hips,
                "min_head_keypoints": self.min_head_keypoints,
            }
        else:
            reason = "hog backend: boxes only" if self.backend == "hog" else "pose_check: false"
            rules["pose"] = f"skipped ({reason})"
        return rules
