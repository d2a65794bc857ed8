"""Face counter settings compared: cost and faces found on synthetic-web person crops, hits on the photos of people
that installed packages ship, and false faces on their photos without people.

The crops: rendered scenes (detect_speed's), detected with the demo weights at the demo build's settings (imgsz
384, CPU), each cut as the detect stage cuts it (raw pixels, not the stored JPEG). A face box "on the head" holds
the pose model's nose or an eye keypoint; a box that holds none is counted "off the head" (a false face, or a
real one whose keypoints the pose model misplaced). The photo checks are tests/test_faces.py's: per-crop counts of
bus.jpg, zidane.jpg and the astronaut equal to its EXPECTED_PER_CROP with every hit a real face, and no face in
NO_PEOPLE, whole or in crop-shaped strips.

    nice -n 10 .venv/bin/python benchmarks/face_settings.py [--images 300] [--seed 11] [--rounds 3]
        [--settings '{"face_max_side": 144, "face_scale_factor": 1.15, "face_min_neighbors": 3}' ...]
Writes benchmarks/results/face_settings.json. The defaults' row is always first; CPU figures are single-thread.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402

from detect_speed import scenes  # noqa: E402

from curation.detect import DetectConfig, PersonDetector, detect_persons  # noqa: E402
from curation.detect.crop import crop_region  # noqa: E402
from curation.detect.faces import FaceCounter  # noqa: E402
from curation.synthweb.detector import DEMO_WEIGHTS  # noqa: E402
from storage.images import decode_image  # noqa: E402
from tests.test_faces import EXPECTED_PER_CROP, NO_PEOPLE, PERSONS, TRUE_FACES, iou, person_crops, rgb_uint8  # noqa: E402

EARLIER = [{"face_max_side": 144, "face_scale_factor": 1.15, "face_min_neighbors": 3},  # the first defaults
           {"face_max_side": 128, "face_scale_factor": 1.15, "face_min_neighbors": 2},
           {"face_max_side": 120, "face_scale_factor": 1.12, "face_min_neighbors": 2},
           {"face_max_side": 112, "face_scale_factor": 1.15, "face_min_neighbors": 2},
           {"face_max_side": 144, "face_scale_factor": 1.25, "face_min_neighbors": 2}]
HEAD_KEYPOINTS = (0, 1, 2)  # COCO nose, left eye, right eye
MAX_PIXELS = 89_478_485


def synthetic_crops(images: int, seed: int, config: DetectConfig) -> list[tuple[np.ndarray, list[tuple[float, float]]]]:
    downloads = scenes(images, seed=seed)
    detector = PersonDetector(config.model_copy(update={"face_count": False}))
    crops, _ = detect_persons(downloads, detector)
    by_url = {d.url: d for d in downloads}
    out = []
    for crop in crops:
        pixels = decode_image(by_url[crop.source_url].data, MAX_PIXELS)
        x1, y1, x2, y2 = crop_region(crop.bbox, (pixels.shape[1], pixels.shape[0]), config.crop_margin)
        keypoints = np.asarray(crop.keypoints).reshape(17, 3)
        out.append((pixels[y1:y2, x1:x2], [(keypoints[i, 0] - x1, keypoints[i, 1] - y1) for i in HEAD_KEYPOINTS]))
    return out


def evaluate(config: DetectConfig, crops, rounds: int) -> dict:
    counter = FaceCounter(config)
    cpu = []
    for _ in range(rounds):
        started = time.process_time()
        found = [counter.boxes(pixels) for pixels, _ in crops]
        cpu.append(time.process_time() - started)
    on_head = sum(1 for boxes, (_, head) in zip(found, crops) for x1, y1, x2, y2 in boxes
                  if any(x1 <= x <= x2 and y1 <= y <= y2 for x, y in head))
    faces = sum(map(len, found))
    photos, real = {}, True
    for name in sorted(PERSONS):
        for index, (pixels, (ox, oy)) in enumerate(person_crops(name)):
            boxes = counter.boxes(pixels)
            photos.setdefault(name, []).append(len(boxes))
            real &= all(max(iou((x1 + ox, y1 + oy, x2 + ox, y2 + oy), f) for f in TRUE_FACES[name]) >= 0.5
                        for x1, y1, x2, y2 in boxes)
    false_faces = {}
    for name in NO_PEOPLE:
        pixels = rgb_uint8(getattr(skimage.data, name)())
        height, width = pixels.shape[:2]
        strip = max(20, round(height / 2.5))
        regions = [pixels] + [pixels[:, x:x + strip] for x in range(0, max(1, width - strip + 1), max(1, strip // 2))]
        if hits := sum(len(counter.boxes(region)) for region in regions):
            false_faces[name] = hits
    return {"cpu_ms_per_crop_median": round(1000 * statistics.median(cpu) / len(crops), 2),
            "cpu_ms_per_crop_rounds": [round(1000 * c / len(crops), 2) for c in cpu],
            "faces": faces, "faces_on_the_head": on_head, "faces_off_the_head": faces - on_head,
            "crops_with_faces": sum(1 for boxes in found if boxes),
            "crops_with_several_faces": sum(1 for boxes in found if len(boxes) > 1),
            "photos_per_crop": photos, "photos_as_tested": photos == EXPECTED_PER_CROP and real,
            "faces_in_photos_without_people": false_faces}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", nargs="*", type=json.loads, default=EARLIER, help="JSON objects of detect.face_*")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "face_settings.json")
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)  # single-thread figures, whatever the machine's core count
    config = DetectConfig(weights=str(DEMO_WEIGHTS), imgsz=384, device="cpu")
    crops = synthetic_crops(args.images, args.seed, config)
    defaults = {k: getattr(config, k) for k in ("face_max_side", "face_scale_factor", "face_min_neighbors",
                                                "face_search_share")}
    rows = []
    for settings in [{}] + list(args.settings):
        row = {"settings": {**defaults, **settings}, "defaults": not settings,
               **evaluate(config.model_copy(update=settings), crops, args.rounds)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for row in rows:
        row["cpu_vs_defaults"] = round(row["cpu_ms_per_crop_median"] / rows[0]["cpu_ms_per_crop_median"], 2)
    result = {"benchmark": "face_settings",
              "command": "nice -n 10 .venv/bin/python benchmarks/face_settings.py " + " ".join(
                  f"'{a}'" if a.startswith("{") else a for a in sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "loadavg_at_end": [round(v, 2) for v in os.getloadavg()]},
              "images": args.images, "seed": args.seed, "crops": len(crops), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
