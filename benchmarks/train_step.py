"""Training-step speed: GA-DMS versus the baseline (SDM + random-mask MLM, IRRA without ID), alternating.

Both modes share one set of weights (towers + MTP/MLM head) and one Adam optimiser; steps alternate
GA-DMS, baseline, GA-DMS, ... so clock and thermal drift hit both alike. Random weights and data; each step is
forward + backward + Adam, bf16 autocast on a GPU. Prints and saves JSON (samples/s, median step, peak memory).

    python benchmarks/train_step.py                       # ViT-B/16, 384×128, batch 128 (a GPU host)
    python benchmarks/train_step.py --tiny --batch 32 --steps 6 --out benchmarks/results/train_step_cpu_tiny.json
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gadms_model.model import GADMS, ModelConfig, build_model  # noqa: E402
from gadms_model.score_store import ScoreStore  # noqa: E402
from gadms_model.tokenizer import EOT_TOKEN_ID, MASK_TOKEN_ID, SOT_TOKEN_ID  # noqa: E402


def random_captions(batch: int, context: int, generator: torch.Generator) -> torch.Tensor:
    """SOT, 15..60 random word ids, EOT, padding (on the generator's device)."""
    device = generator.device
    lengths = torch.randint(15, min(61, context - 1), (batch,), generator=generator, device=device)
    ids = torch.randint(1, MASK_TOKEN_ID, (batch, context), generator=generator, device=device)
    positions = torch.arange(context, device=device)
    ids = torch.where(positions[None] <= lengths[:, None], ids, torch.zeros_like(ids))
    ids[:, 0] = SOT_TOKEN_ID
    ids[torch.arange(batch, device=device), lengths + 1] = EOT_TOKEN_ID
    return ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny test config instead of ViT-B/16")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per mode")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="ModelConfig.compile_blocks (torch.compile)")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, print the profiler's top operators for one step of each mode")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step.json"))
    args = parser.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    base = ModelConfig.tiny() if args.tiny else ModelConfig()
    base = base.model_copy(update={"compile_blocks": args.compile})
    gadms = build_model(base.model_copy(update={"mode": "gadms"})).to(device).train()
    # The baseline shares gadms's weights: same towers, same head, its own mode.
    baseline = GADMS(base.model_copy(update={"mode": "irra"}), gadms.towers)
    baseline.mtp_head = gadms.mtp_head
    optimizer = torch.optim.Adam(gadms.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-3,
                                 weight_decay=4e-5, fused=cuda or None)

    data_generator = torch.Generator(device=device).manual_seed(1)
    batch, context = args.batch, base.context_length
    height, width = base.image_size
    rounds = args.warmup + args.steps
    store = ScoreStore(batch * rounds, context, device=device)
    mask_generator = torch.Generator(device=device).manual_seed(2)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    def step(model: GADMS, index: int) -> tuple[float, float]:
        images = torch.randn(batch, 3, height, width, generator=data_generator, device=device)
        text_ids = random_captions(batch, context, data_generator)
        pids = torch.randint(0, batch // 2, (batch,), generator=data_generator, device=device)
        caption_ids = torch.arange(index * batch, (index + 1) * batch, device=device)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = model(images, text_ids, pids, caption_ids=caption_ids, score_store=store,
                        generator=mask_generator)
        out["loss"].backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        return elapsed, peak

    times: dict[str, list[float]] = {"gadms": [], "baseline": []}
    peaks: dict[str, float] = {"gadms": 0.0, "baseline": 0.0}
    for index in range(rounds):
        for name, model in (("gadms", gadms), ("baseline", baseline)):
            elapsed, peak = step(model, index)
            if index >= args.warmup:
                times[name].append(elapsed)
                peaks[name] = max(peaks[name], peak)

    results = {}
    for name in times:
        median = statistics.median(times[name])
        results[name] = {
            "median_step_ms": round(median * 1000, 2),
            "mean_step_ms": round(statistics.mean(times[name]) * 1000, 2),
            "samples_per_s": round(batch / median, 1),
            "peak_memory_gib": round(peaks[name], 2) if cuda else None,
        }
    report = {
        "benchmark": "train_step",
        "model": "gadms-tiny" if args.tiny else base.clip_model,
        "image_size": list(base.image_size),
        "batch": batch,
        "timed_steps_per_mode": args.steps,
        "warmup_steps_per_mode": args.warmup,
        "precision": "bf16 autocast" if cuda else "fp32",
        "compiled_blocks": args.compile,
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or 'unknown'}, "
                                                                      f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        # CPU figures are only comparable on an idle machine: the load average says whether it was.
        "load_average_1min": None if cuda else round(os.getloadavg()[0], 2),
        "gadms": results["gadms"],
        "baseline_sdm_mlm": results["baseline"],
        "gadms_over_baseline_step": round(results["gadms"]["median_step_ms"]
                                          / results["baseline"]["median_step_ms"], 3),
    }
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        sort_by = "cuda_time_total" if cuda else "cpu_time_total"
        for name, model in (("gadms", gadms), ("baseline", baseline)):
            with profile(activities=activities) as profiler:
                step(model, 0)
            print(f"--- profile: one {name} step ---")
            print(profiler.key_averages().table(sort_by=sort_by, row_limit=25, max_name_column_width=60))
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
