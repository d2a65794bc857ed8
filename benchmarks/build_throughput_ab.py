"""Build throughput of this checkout against another one (the commit before a change), side by side in one run.

Renders one synthetic web and a held-out RSTPReid-format benchmark, then builds the web alternately with each
checkout's code, `--rounds` times, each build in a fresh process with a fresh output root and a fresh server:
this checkout with the demo's build config (the benchmark guard seeded with the held-out benchmark, no takedown
list), the other with the same config minus the keys it does not know. The simulated VLM captions for both.
Reports each build's images/s (downloads / build seconds, guard seeding included) and the median ratio; and, as
wall-clock rates swing with what else a shared machine runs, each build's CPU seconds (the build process, all its
threads; the web and VLM servers run in this process for both alike) and the median ratio of images per CPU second.

    git -C . archive <commit> | tar -x -C /tmp/base      # the other checkout
    nice -n 10 .venv/bin/python benchmarks/build_throughput_ab.py --baseline /tmp/base --images 400 --rounds 3
Writes benchmarks/results/build_throughput_ab.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.synthweb import SiteServer, render_site, write_url_list  # noqa: E402
from curation.synthweb.benchmark import write_synthetic_benchmark  # noqa: E402
from curation.synthweb.vlm import SimulatedVlm, SimulatedVlmServer  # noqa: E402
from flows.demo import HELD_OUT_FIRST_IDENTITY, demo_build_config  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "build_throughput_ab.json"
NEW_KEYS = ("benchmark_guard", "takedown_list")  # what the other checkout's BuildConfig may not know
CHILD = ("import json, sys; from flows.build_webperson import build_webperson; "
         "print('SUMMARY ' + json.dumps(build_webperson(json.load(open(sys.argv[1])))))")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build(checkout: Path, config: dict, config_path: Path) -> tuple[dict, float]:
    """(the build's summary, the CPU seconds of its process): one build at a time, so the children's CPU time
    grows by this build's alone."""
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cpu = _children_cpu()
    done = subprocess.run([sys.executable, "-c", CHILD, str(config_path)], cwd=checkout, env=env,
                          capture_output=True, text=True, check=True)
    cpu = _children_cpu() - cpu
    line = next(line for line in done.stdout.splitlines() if line.startswith("SUMMARY "))
    return json.loads(line[len("SUMMARY "):]), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout (e.g. the previous commit)")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs = {"this": [], "baseline": []}
    loadavg_at_start = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="build-ab-") as scratch:
        work = Path(scratch)
        site = render_site(work / "site", images=args.images, seed=0)
        benchmark = work / "heldout"
        write_synthetic_benchmark(benchmark, train_identities=0, val_identities=20, test_identities=40,
                                  images_per_identity=3, seed=1, train_captions="clean", size=(64, 128),
                                  first_identity=HELD_OUT_FIRST_IDENTITY)
        for round_ in range(args.rounds):
            for name, checkout in (("baseline", args.baseline), ("this", ROOT)):
                with SiteServer(site.root, slow_seconds=2) as server, \
                        SimulatedVlmServer(SimulatedVlm(site.root)) as vlm:
                    urls = work / f"urls-{name}-{round_}.parquet"
                    write_url_list(site.root, server.base_url, urls)
                    config = demo_build_config(urls, work / f"root-{name}-{round_}", vlm.base_url, benchmark)
                    if name == "baseline":
                        config = {k: v for k, v in config.items() if k not in NEW_KEYS}
                    summary, cpu = build(checkout, config, work / f"config-{name}-{round_}.json")
                row = {"round": round_, "downloaded": summary["downloaded"], "kept": summary["kept"],
                       "seconds": summary["seconds"], "images_per_second": summary["images_per_second"],
                       "cpu_seconds": round(cpu, 2), "images_per_cpu_second": round(summary["downloaded"] / cpu, 2),
                       "stage_seconds": summary["stage_seconds"], "loadavg_after": [round(v, 2) for v in os.getloadavg()]}
                runs[name].append(row)
                print(name, json.dumps(row), flush=True)

    def ratios(key: str) -> list[float]:
        return [round(t[key] / b[key], 3) for t, b in zip(runs["this"], runs["baseline"])]

    ratio, cpu_ratio = statistics.median(ratios("images_per_second")), statistics.median(ratios("images_per_cpu_second"))
    result = {"images": args.images, "rounds": args.rounds, "baseline": str(args.baseline),
              "command": " ".join(["benchmarks/build_throughput_ab.py", *sys.argv[1:]]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "loadavg_at_start": loadavg_at_start, "loadavg_at_end": [round(v, 2) for v in os.getloadavg()]},
              "runs": runs,
              "ratios_per_round": ratios("images_per_second"), "cpu_ratios_per_round": ratios("images_per_cpu_second"),
              "median_ratio_this_over_baseline": round(ratio, 3),
              "median_cpu_ratio_this_over_baseline": round(cpu_ratio, 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"median images/s ratio, this / baseline: {ratio:.3f}; images per CPU second: {cpu_ratio:.3f}; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
