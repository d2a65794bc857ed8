"""The detection stage: downloads → decoded once → person candidates → rules → crops, and a reject per loss."""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from curation.dedup.phash import phash64
from curation.detect.backends import Candidate, HogBackend, YoloBackend
from curation.detect.config import DetectConfig
from curation.detect.crop import crop_region, encode_jpeg
from curation.detect.faces import FaceCounter
from curation.detect.rules import box_reject, crowd_reject, pose_reject, score_reject
from storage.images import DecodeError, decode_image
from storage.records import Download, PersonCrop, Reject, make_sample_id


class PersonDetector:
    """The configured detector (yolo or hog), loaded once and reused for every chunk.

    Safe to share between threads (the build flow's task runner shares one per process): calls into the backend
    take turns. Ultralytics documents its models as not thread-safe; it locks the inference loop itself, but
    `Model.predict` creates the predictor on first use and rewrites its args outside that lock. Detection already
    uses every core through torch's own threads, so taking turns costs little; a loaded copy per thread would
    cost its memory (GPU memory too) for no gain.
    """

    def __init__(self, config: DetectConfig):
        self.config = config
        self.backend = YoloBackend(self.config) if self.config.backend == "yolo" else HogBackend(self.config)
        self._turn = threading.Lock()
        self.faces = FaceCounter(self.config) if self.config.face_count else None

    @property
    def separate_pose_model(self) -> bool:
        return self.config.uses_pose and not self.backend.keypoints_from_detector

    def detect(self, images: list[np.ndarray]) -> list[list[Candidate]]:
        """Person candidates per RGB image (boxes in source pixels, keypoints when the detector has them)."""
        with self._turn:
            return self.backend.detect(images)

    def pose(self, crops: list[np.ndarray]) -> list[np.ndarray | None]:
        """Keypoints (crop pixels) from the separate pose model, batched."""
        found = []
        for start in range(0, len(crops), self.config.batch_size):
            with self._turn:
                found += self.backend.pose(crops[start : start + self.config.batch_size])
        return found


@dataclass
class _Person:
    """A person that passed the box rules and waits for the pose check."""

    download: Download
    candidate: Candidate
    pixels: np.ndarray  # the crop, a view into the decoded source
    origin: tuple[int, int]  # crop's top-left corner in source pixels


def detect_persons(
    downloads: list[Download], detector: PersonDetector, on_image: Callable[[int], None] | None = None
) -> tuple[list[PersonCrop], list[Reject]]:
    """One PersonCrop per kept person, one Reject per lost image or person, in download order.

    Works through `batch_size` downloads at a time, so memory holds one batch of decoded images.
    `on_image(n)` is called as images finish (for progress bars).
    """
    crops: list[PersonCrop] = []
    rejects: list[Reject] = []
    size = detector.config.batch_size
    for start in range(0, len(downloads), size):
        batch = downloads[start : start + size]
        batch_crops, batch_rejects = _detect_batch(batch, detector)
        crops += batch_crops
        rejects += batch_rejects
        if on_image is not None:
            on_image(len(batch))
    return crops, rejects


def _detect_batch(downloads: list[Download], detector: PersonDetector) -> tuple[list[PersonCrop], list[Reject]]:
    config = detector.config
    rejects: list[Reject] = []
    decoded: list[tuple[Download, np.ndarray]] = []
    for download in downloads:
        try:
            decoded.append((download, decode_image(download.data, config.max_pixels)))
        except DecodeError as exc:
            rejects.append(Reject(stage="decode", reason=exc.reason, url=download.url, detail=exc.detail))

    persons: list[_Person] = []
    for (download, pixels), candidates in zip(decoded, detector.detect([p for _, p in decoded])):
        persons += _apply_box_rules(download, pixels, candidates, config, rejects)

    if detector.separate_pose_model:
        for person, keypoints in zip(persons, detector.pose([p.pixels for p in persons])):
            if keypoints is not None:
                keypoints = keypoints.copy()
                keypoints[:, 0] += person.origin[0]
                keypoints[:, 1] += person.origin[1]
            person.candidate.keypoints = keypoints

    crops = []
    no_pose = ("no_pose", "pose model found no person in the crop")
    for person in persons:
        if config.uses_pose:
            keypoints = person.candidate.keypoints
            failed = no_pose if keypoints is None else pose_reject(keypoints, config)
            if failed:
                rejects.append(_person_reject("pose", failed, person.download, person.candidate.box))
                continue
        crops.append(_make_crop(person, make_sample_id(person.download.sha256, person.candidate.box), config,
                                detector.faces))
    return crops, rejects


def _apply_box_rules(
    download: Download, pixels: np.ndarray, candidates: list[Candidate], config: DetectConfig, rejects: list[Reject]
) -> list[_Person]:
    if not candidates:
        rejects.append(Reject(stage="detect", reason="no_person", url=download.url))
        return []
    height, width = pixels.shape[:2]
    confident = []
    for candidate in candidates:
        failed = score_reject(candidate.score, config)
        if failed:
            rejects.append(_person_reject("detect", failed, download, candidate.box))
        else:
            confident.append(candidate)
    crowd = crowd_reject(len(confident), config)
    passed = []
    for candidate in confident:
        failed = crowd or box_reject(candidate.box, (width, height), config)
        if failed:
            rejects.append(_person_reject("detect", failed, download, candidate.box))
            continue
        x1, y1, x2, y2 = crop_region(candidate.box, (width, height), config.crop_margin)
        passed.append(_Person(download, candidate, pixels[y1:y2, x1:x2], (x1, y1)))
    return passed


def _make_crop(person: _Person, sample_id: str, config: DetectConfig, faces: FaceCounter | None) -> PersonCrop:
    image = encode_jpeg(person.pixels, config.jpeg_quality)
    keypoints = person.candidate.keypoints
    face_boxes = None if faces is None else faces.boxes(person.pixels)
    download = person.download
    return PersonCrop(
        sample_id=sample_id,
        source_url=person.download.url,
        page_url=person.download.page_url,
        alt_text=person.download.alt_text,
        source_sha256=person.download.sha256,
        source_meta=person.download.source_meta,
        image=image,
        width=person.pixels.shape[1],
        height=person.pixels.shape[0],
        bbox=tuple(float(v) for v in person.candidate.box),
        det_score=person.candidate.score,
        keypoints=None if keypoints is None else [float(v) for v in np.asarray(keypoints).ravel()],
        phash=phash64(person.pixels),
        crop_sha256=hashlib.sha256(image).hexdigest(),
        fetched_at=download.fetched_at,
        http_status=download.http_status,
        x_robots_tag=download.x_robots_tag,
        num_faces=None if face_boxes is None else len(face_boxes),
        face_boxes=face_boxes,
    )


def _person_reject(stage: str, failed: tuple[str, str], download: Download, box) -> Reject:
    reason, detail = failed
    box = tuple(float(v) for v in box)
    return Reject(stage=stage, reason=reason, url=download.url, sample_id=make_sample_id(download.sha256, box),
                  detail=detail, bbox=box)
