"""rank_metrics at ICFG-PEDES test size (19,848 queries × 19,848 gallery images): time and peak memory.

Two ways in: a precomputed fp32 similarity matrix (1.6 GB by itself), and the evaluation runner's path, which
computes similarity rows block by block from 512-d features and never holds the full matrix.

    .venv/bin/python benchmarks/eval_speed.py [--size 19848] [--ids 3102] [--out benchmarks/results/eval_speed.json]

Peak memory is the process's maximum resident set size (ru_maxrss), python + torch included.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from gadms_model.evaluation import blocked_rank_metrics, rank_metrics


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=19848)
    parser.add_argument("--ids", type=int, default=1000, help="identities in the gallery (ICFG-PEDES test: 1,000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results/eval_speed.json")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    pids = torch.randint(0, args.ids, (args.size,), generator=generator)
    pids[: args.ids] = torch.arange(args.ids)  # every identity has an image
    text = torch.nn.functional.normalize(torch.randn(args.size, args.dim, generator=generator), dim=1)
    images = torch.nn.functional.normalize(torch.randn(args.size, args.dim, generator=generator), dim=1)
    baseline = peak_rss_mib()

    start = time.perf_counter()
    from_features = blocked_rank_metrics(
        lambda a, b: text[a:b] @ images.T, pids, pids, block_size=args.block_size
    )
    features_seconds = time.perf_counter() - start
    features_peak = peak_rss_mib()

    similarity = text @ images.T
    start = time.perf_counter()
    from_matrix = rank_metrics(similarity, pids, pids, block_size=args.block_size)
    matrix_seconds = time.perf_counter() - start
    matrix_peak = peak_rss_mib()

    result = {
        "queries": args.size,
        "gallery": args.size,
        "identities": args.ids,
        "block_size": args.block_size,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "from_features": {"seconds": round(features_seconds, 2), "peak_rss_mib": round(features_peak)},
        "from_similarity_matrix": {
            "seconds": round(matrix_seconds, 2),
            "peak_rss_mib": round(matrix_peak),
            "matrix_mib": round(similarity.numel() * 4 / 2**20),
        },
        "rss_before_ranking_mib": round(baseline),
        "metrics_random_features": {k: round(v, 4) for k, v in from_matrix.items()},
        "both_paths_agree": all(abs(from_matrix[k] - from_features[k]) < 1e-6 for k in from_matrix),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
