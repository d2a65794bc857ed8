"""Rendering speed of the synthetic web on one core: scenes/s at 256×512, with and without JPEG encoding, the
whole site writer, and 128×384 identity crops. Target (issue 5): ≥ 200 scenes/s on one core at 256×512.

    nice -n 10 .venv/bin/python benchmarks/synthweb_render.py     # → benchmarks/results/synthweb_render.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.synthweb import iter_identity_dataset, render_site  # noqa: E402
from curation.synthweb.hostile import decompression_bomb_png, jpeg_bytes  # noqa: E402
from curation.synthweb.scene import render_scene, texture_bank  # noqa: E402


def rate(count: int, work) -> float:
    started = time.process_time()  # CPU time of this process: one core, whatever else the machine runs
    work()
    return count / (time.process_time() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "synthweb_render.json"))
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    texture_bank(0)  # made once per seed; not part of the per-scene cost
    decompression_bomb_png()
    identities = list(range(500))

    def scenes(encode: bool, plan: str | None):
        def work():
            for i in range(args.scenes):
                scene = render_scene(random.Random(i), 0, identities, plan=plan)
                if encode:
                    jpeg_bytes(scene.image)
        return work

    results = {
        "single_256x512_scenes_per_s": rate(args.scenes, scenes(False, "single")),
        "single_256x512_with_jpeg_per_s": rate(args.scenes, scenes(True, "single")),
        "site_mix_with_jpeg_per_s": rate(args.scenes, scenes(True, None)),
    }
    crops = args.scenes // 2
    results["identity_crops_128x384_per_s"] = rate(
        crops, lambda: list(iter_identity_dataset(crops // 4, 4, seed=0)))
    with tempfile.TemporaryDirectory() as tmp:
        results["render_site_scenes_per_s"] = rate(args.scenes, lambda: render_site(Path(tmp) / "site", args.scenes, 0))
    report = {
        "benchmark": "synthweb_render",
        "scenes": args.scenes,
        "cores": 1,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        **{k: round(v, 1) for k, v in results.items()},
        "target_scenes_per_s": 200,
        "command": "nice -n 10 .venv/bin/python benchmarks/synthweb_render.py",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
