"""Curation quality of a WebPerson build of the synthetic web against its ground truth, stage by stage
(curation.synthweb.quality: detection + rules, dedup, MLLM filter, captions, URL accounting).

Either measure a demo output folder (`gadms demo --out DIR` leaves DIR/site and DIR/webperson), or render a
site of --images scenes and build it here exactly as the demo does (crawl, demo detector, dedup, the SIMULATED
VLM through the openai backend), without the training:

    nice -n 10 .venv/bin/python benchmarks/curation_quality.py --demo-root demo_out
    nice -n 10 .venv/bin/python benchmarks/curation_quality.py --images 600     # → results/curation_quality.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.synthweb.quality import curation_quality, format_quality_table  # noqa: E402


def build_like_the_demo(work: Path, images: int, seed: int, hallucination_rate: float) -> tuple[Path, Path, dict]:
    """Render, serve and build as flows.demo.run_demo does; returns (site dir, output root, build summary)."""
    from curation.synthweb import SiteServer, render_site, write_url_list
    from curation.synthweb.vlm import SimulatedVlm, SimulatedVlmServer
    from flows.build_webperson import build_webperson
    from flows.demo import demo_build_config

    site = render_site(work / "site", images=images, seed=seed)
    with SiteServer(site.root, slow_seconds=2) as server, SimulatedVlmServer(
            SimulatedVlm(site.root, hallucination_rate)) as vlm:
        urls = work / "urls.parquet"
        write_url_list(site.root, server.base_url, urls)
        summary = build_webperson(demo_build_config(urls, work / "webperson", vlm.base_url))
    return site.root, work / "webperson", summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-root", help="a `gadms demo --out` folder to measure (else render and build)")
    parser.add_argument("--images", type=int, default=600, help="scenes to render and build without --demo-root")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hallucination-rate", type=float, default=0.0, help="of the simulated VLM (demo: 0)")
    parser.add_argument("--work", help="build in this new folder and keep it (default: a temporary folder)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "curation_quality.json"))
    args = parser.parse_args()

    clock = time.perf_counter()
    if args.demo_root:
        site_dir, output_root = Path(args.demo_root) / "site", Path(args.demo_root) / "webperson"
        source = {"demo_root": args.demo_root}
        quality = curation_quality(site_dir, output_root)
    else:
        with tempfile.TemporaryDirectory(prefix="curation-quality-") as scratch:
            work = Path(args.work or scratch)
            site_dir, output_root, summary = build_like_the_demo(work, args.images, args.seed, args.hallucination_rate)
            source = {"images": args.images, "seed": args.seed, "hallucination_rate": args.hallucination_rate,
                      "build": {k: summary[k] for k in ("urls", "downloaded", "persons", "unique", "kept", "seconds")}}
            quality = curation_quality(site_dir, output_root)
    print(format_quality_table(quality))
    report = {"benchmark": "curation_quality", "source": source, "quality": quality,
              "seconds": round(time.perf_counter() - clock, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
