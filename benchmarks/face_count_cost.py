"""What face counting adds to the detection stage: `detect_persons` with `face_count` off and on, alternating in
one run over the same rendered synthetic-web scenes, with the demo weights at the demo build's settings (imgsz
384, CPU); and the face counter alone on the kept crops (ms per crop). With --build-images N, also whole builds
as the demo builds (curation_quality.build_like_the_demo's site, server and simulated VLM), off and on alternating.

    nice -n 10 .venv/bin/python benchmarks/face_count_cost.py [--images 96] [--rounds 3] [--imgsz 384]
        [--build-images 400 --build-rounds 2] [--out benchmarks/results/face_count_cost.json]

CPU seconds per image (all threads) are the figure to read on a shared machine; wall-clock rates drop with load.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # detect_speed's scenes and timer

from detect_speed import scenes  # noqa: E402

from curation.detect import DetectConfig, PersonDetector, detect_persons  # noqa: E402
from curation.synthweb.detector import DEMO_WEIGHTS  # noqa: E402
from storage.images import decode_image  # noqa: E402
from curation.detect.faces import FaceCounter  # noqa: E402


def run(detector: PersonDetector, downloads) -> tuple[float, float, list]:
    started, started_cpu = time.perf_counter(), time.process_time()
    crops, _ = detect_persons(downloads, detector)
    return time.perf_counter() - started, time.process_time() - started_cpu, crops


def builds(images: int, rounds: int) -> dict:
    """Demo builds of one site with face counting off and on, alternating: images/s and detect-stage seconds."""
    import tempfile

    from curation.synthweb import SiteServer, render_site, write_url_list
    from curation.synthweb.vlm import SimulatedVlm, SimulatedVlmServer
    from flows.build_webperson import build_webperson
    from flows.demo import demo_build_config

    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        site = render_site(work / "site", images=images, seed=0)
        with SiteServer(site.root, slow_seconds=2) as server, SimulatedVlmServer(SimulatedVlm(site.root)) as vlm:
            urls = work / "urls.parquet"
            write_url_list(site.root, server.base_url, urls)
            # One build first, not counted: the first in a process pays for Prefect's start and torch's warm-up.
            plan = [("warm-up", False)] + [(label, faces) for _ in range(rounds) for label, faces in
                                           (("off", False), ("on", True))]
            for number, (label, faces) in enumerate(plan):
                config = demo_build_config(urls, work / f"root-{number}-{label}", vlm.base_url)
                config["detect"].update(weights=str(DEMO_WEIGHTS), face_count=faces)
                summary = build_webperson(config)
                if label != "warm-up":
                    runs[label].append({"images_per_second": summary["images_per_second"], "kept": summary["kept"],
                                        "detect_s": summary["stage_seconds"]["detect"], "seconds": summary["seconds"]})
    medians = {label: statistics.median(r["images_per_second"] for r in rows) for label, rows in runs.items()}
    detect = {label: statistics.median(r["detect_s"] for r in rows) for label, rows in runs.items()}
    return {"images": images, "rounds": runs, "images_per_second_median": medians, "detect_s_median": detect,
            "throughput_change": round(medians["on"] / medians["off"] - 1, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=384)
    parser.add_argument("--build-images", type=int, default=0, help="also build a site of this many scenes")
    parser.add_argument("--build-rounds", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/face_count_cost.json")
    args = parser.parse_args()

    downloads = scenes(args.images, seed=3)
    n = len(downloads)
    settings = {"weights": str(DEMO_WEIGHTS), "imgsz": args.imgsz, "device": "cpu", "batch_size": 1}
    detectors = {faces: PersonDetector(DetectConfig(**settings, face_count=faces)) for faces in (False, True)}
    for detector in detectors.values():  # warm-up: the first call pays for lazy model set-up
        detect_persons(downloads[:4], detector)
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    crops = {}
    for _ in range(args.rounds):
        for faces, detector in detectors.items():
            wall, cpu, crops[faces] = run(detector, downloads)
            times[faces].append((wall, cpu))
    counted = crops[True]
    pixels = [decode_image(c.image, 89_478_485) for c in counted]
    counter = FaceCounter(detectors[True].config)
    alone = []
    for _ in range(args.rounds):
        started = time.process_time()
        for image in pixels:
            counter.boxes(image)
        alone.append(time.process_time() - started)

    def row(faces: bool) -> dict:
        walls, cpus = zip(*times[faces])
        return {"face_count": faces, "images": n, "crops": len(crops[faces]),
                "images_per_s_median": round(n / statistics.median(walls), 2),
                "cpu_ms_per_image_median": round(1000 * statistics.median(cpus) / n, 2),
                "cpu_ms_per_image_rounds": [round(1000 * c / n, 2) for c in cpus]}

    off, on = row(False), row(True)
    result = {
        "benchmark": "face_count_cost",
        "command": f"nice -n 10 .venv/bin/python benchmarks/face_count_cost.py --images {args.images} "
                   f"--rounds {args.rounds} --imgsz {args.imgsz}",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_end": os.getloadavg()},
        "detect": settings,
        "faces": {k: v for k, v in detectors[True].config.rules_used()["faces"].items()},
        "rows": [off, on],
        "added_cpu_ms_per_image": round(on["cpu_ms_per_image_median"] - off["cpu_ms_per_image_median"], 2),
        "added_share_of_detect_cpu": round(on["cpu_ms_per_image_median"] / off["cpu_ms_per_image_median"] - 1, 3),
        "face_counter_alone_cpu_ms_per_crop": round(1000 * statistics.median(alone) / max(1, len(pixels)), 2),
        "crops_with_faces": sum(1 for c in counted if c.num_faces),
        "faces_found": sum(c.num_faces for c in counted),
    }
    if args.build_images:
        result["builds"] = builds(args.build_images, args.build_rounds)
        result["command"] += f" --build-images {args.build_images} --build-rounds {args.build_rounds}"
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
