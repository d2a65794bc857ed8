"""The demo's GA-DMS training (flows.demo.demo_train_config → gadms_model.training.train, the code path of
`gadms demo`) under a few settings and seeds, on one built demo shard root, so settings are compared on the same
data. Each run selects its checkpoint on the held-out *val* split (as the demo does); the test split is measured
for the report only, never to choose.

    nice -n 10 .venv/bin/python benchmarks/demo_training.py --shards demo_out/webperson --work /tmp/demo_training \\
        --setting 'flat_1000={"steps": 1000, "decay_over_budget": false}' \\
        --setting 'cosine_2000={"steps": 2000}' --seeds 0 1 2 --out benchmarks/results/demo_training.json

A setting is NAME=JSON of demo_train_config's keyword arguments (steps, lr, batch_size, decay_over_budget,
warmup_epochs). `--heldout` defaults to the demo's held-out benchmark written into --work (flows.demo.
write_heldout_benchmark). Results are written after every run (the file can be read while it runs).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.demo import demo_train_config, write_heldout_benchmark  # noqa: E402
from gadms_model.evaluation import evaluate  # noqa: E402
from gadms_model.training import train  # noqa: E402


def val_curve(metrics_path: str) -> list[tuple[int, float, float]]:
    """(step, val R1, val mAP) of each validation the run made."""
    lines = [json.loads(line) for line in Path(metrics_path).read_text().splitlines()]
    return [(r["step"], r["R1"], round(r["mAP"], 2)) for r in lines if r["kind"] == "val"]


def run_one(shards: Path, heldout: Path, work: Path, name: str, settings: dict, seed: int) -> dict:
    clock = time.perf_counter()
    config = demo_train_config(shards, heldout, work / f"{name}-seed{seed}", seed=seed, progress=False, **settings)
    result = train(config)
    seconds = time.perf_counter() - clock
    final = str(Path(config.output_dir) / "final.pt")
    measure = {"best": result.checkpoint_path, "final": final}
    figures = {f"{split}_{which}": evaluate(path, "rstpreid", str(heldout), split=split, progress=False)
               for which, path in measure.items() for split in ("val", "test")}
    return {"setting": name, "settings": settings, "seed": seed, "steps": result.steps,
            "chosen_step": (result.best_metrics or {}).get("step"), "train_seconds": round(seconds, 1),
            "load_average": os.getloadavg(), "val_curve": val_curve(result.metrics_path),
            **{key: {k: round(v, 2) for k, v in value.items()} for key, value in figures.items()}}


def summarise(runs: list[dict]) -> dict:
    """Per setting: mean and range over seeds of the chosen (best.pt) checkpoint's val and test R1 / mAP."""
    summary = {}
    for name in dict.fromkeys(run["setting"] for run in runs):
        mine = [run for run in runs if run["setting"] == name]
        summary[name] = {"seeds": [run["seed"] for run in mine]}
        for key in ("val_best", "test_best", "test_final"):
            for metric in ("R1", "mAP"):
                values = [run[key][metric] for run in mine]
                summary[name][f"{key}_{metric}"] = {"mean": round(statistics.mean(values), 2),
                                                    "min": min(values), "max": max(values)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, required=True, help="a built demo output root (demo_out/webperson)")
    parser.add_argument("--heldout", type=Path, help="held-out benchmark root (default: written into --work)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the runs' outputs")
    parser.add_argument("--setting", action="append", required=True, help="NAME=JSON of demo_train_config kwargs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_training.json"))
    args = parser.parse_args()
    settings = {}
    for item in args.setting:
        name, _, text = item.partition("=")
        settings[name] = json.loads(text)
    heldout = args.heldout
    if heldout is None:
        heldout = args.work / "heldout"
        if not heldout.exists():
            write_heldout_benchmark(heldout)
    runs = []
    previous = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    for seed in args.seeds:
        for name, values in settings.items():
            if (args.work / f"{name}-seed{seed}").exists():
                done = [r for r in previous if r["setting"] == name and r["seed"] == seed]
                if done:
                    runs.append(done[0])
                    continue
            run = run_one(args.shards, heldout, args.work, name, values, seed)
            runs.append(run)
            print(json.dumps({k: run[k] for k in ("setting", "seed", "chosen_step", "train_seconds", "val_best",
                                                  "test_best", "test_final")}), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"shards": str(args.shards), "runs": runs,
                                            "summary": summarise(runs)}, indent=1) + "\n")
    print(json.dumps(summarise(runs), indent=1))


if __name__ == "__main__":
    main()
