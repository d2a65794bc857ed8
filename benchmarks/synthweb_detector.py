"""The committed demo detector on held-out rendered data, on this machine's CPU:

1. box / pose mAP50 on the held-out split exactly as `train-detector` renders it (seed 0 + 1000, identities
   100000-100399, 500 scenes, imgsz 384) — it re-measures the numbers of the training run;
2. the person-count check: on the scenes of a rendered site, does the number of detections passing the size
   rules (shorter side > 90 px, w/h in [1/4, 1/2], conf > 0.85) equal the number of ground-truth boxes passing
   them? Overall and per scene plan.

    nice -n 10 .venv/bin/python benchmarks/synthweb_detector.py     # → benchmarks/results/detector.json
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.detect.config import DetectConfig  # noqa: E402
from curation.synthweb import render_site  # noqa: E402
from curation.synthweb.detector import (  # noqa: E402
    DEMO_IMGSZ,
    DEMO_WEIGHTS,
    count_persons_check,
    evaluate_detector,
    prepare_ultralytics,
    write_yolo_dataset,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--site-images", type=int, default=300)
    parser.add_argument("--site-seed", type=int, default=2024)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "detector.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        YOLO = prepare_ultralytics(tmp / "ultralytics-config")
        data_yaml = write_yolo_dataset(tmp / "dataset", train_images=0, val_images=args.val_images, seed=0,
                                       workers=min(4, os.cpu_count() or 1))
        started = time.perf_counter()
        held_out = evaluate_detector(DEMO_WEIGHTS, data_yaml, DEMO_IMGSZ, "cpu", tmp / "runs")
        val_seconds = time.perf_counter() - started

        site = render_site(tmp / "web", images=args.site_images, seed=args.site_seed)
        from PIL import Image

        samples = []
        for line in site.ground_truth.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record["fault"] is None and record["duplicate_of"] is None:
                image = Image.open(site.docroot / record["path"].lstrip("/")).convert("RGB")
                samples.append((f'{record["path"]} {record["plan"]}', image, [p["bbox"] for p in record["persons"]]))
        rules = DetectConfig(weights=str(DEMO_WEIGHTS))  # the paper's rules: the detect stage's defaults
        model = YOLO(str(DEMO_WEIGHTS))
        started = time.perf_counter()
        check = count_persons_check(model, samples, rules)
        count_seconds = time.perf_counter() - started
    per_plan = collections.Counter(name.split()[1] for name, _, _ in samples)
    wrong = collections.Counter(name.split()[1] for name, _, _ in check.mismatches)
    report = {
        "benchmark": "synthweb_detector",
        "weights": str(DEMO_WEIGHTS.relative_to(ROOT)),
        "imgsz": DEMO_IMGSZ,
        "held_out_split": {"scenes": args.val_images, **held_out, "cpu_seconds_wall": round(val_seconds, 1)},
        "targets": {"box_map50": 0.8, "count_accuracy": 0.9},
        "count_check": {
            "site_seed": args.site_seed,
            "images": check.images,
            "correct": check.correct,
            "accuracy": round(check.accuracy, 4),
            "rules": vars(rules),
            "accuracy_per_plan": {plan: round(1 - wrong[plan] / n, 3) for plan, n in sorted(per_plan.items())},
            "mismatches": [list(m) for m in check.mismatches],
            "seconds_wall": round(count_seconds, 1),
        },
        "training_run": "benchmarks/results/detector_training_h100.json",
        "command": "nice -n 10 .venv/bin/python benchmarks/synthweb_detector.py",
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
