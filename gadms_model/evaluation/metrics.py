"""The standard text-based person retrieval ranking metrics (R@K, mAP, mINP), computed in query blocks.

Identity-level relevance: a gallery item is relevant to a query when their person ids are equal. Each block of
queries is sorted on its own, so memory stays at O(block × gallery) beyond the similarity matrix itself
(ICFG-PEDES's 19,848 × 19,848 test fits in well under 4 GB; see benchmarks/eval_speed.py).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

RANKS = (1, 5, 10)
METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def _as_tensor(values, dtype=None) -> torch.Tensor:
    tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    return tensor.to(dtype) if dtype is not None else tensor


def _block_statistics(similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor) -> dict:
    """Per-query hits at each K, AP and INP for one block of queries (rows of `similarity`)."""
    order = torch.argsort(similarity.float(), dim=1, descending=True, stable=True)
    relevant = gallery_pids[order] == query_pids[:, None]  # (queries, gallery) in rank order
    num_relevant = relevant.sum(1)
    if bool((num_relevant == 0).any()):
        row = int(torch.nonzero(num_relevant == 0)[0])
        raise ValueError(f"query {row} of this block has no relevant gallery item (pid {int(query_pids[row])})")
    positions = torch.arange(1, relevant.shape[1] + 1, dtype=torch.float64)
    hits_so_far = relevant.cumsum(1, dtype=torch.float64)
    average_precision = (hits_so_far / positions * relevant).sum(1) / num_relevant
    last_relevant_rank = (positions * relevant).max(1).values
    stats = {f"R{k}": relevant[:, :k].any(1).double() for k in RANKS}
    stats["AP"] = average_precision
    stats["INP"] = num_relevant.double() / last_relevant_rank
    return stats


def rank_metrics(
    similarity,
    query_pids: Sequence[int],
    gallery_pids: Sequence[int],
    block_size: int = 256,
) -> dict[str, float]:
    """R1/R5/R10/mAP/mINP in percent for a (queries × gallery) similarity matrix (torch or numpy).

    Higher similarity ranks first; ties keep gallery order (stable sort). Every query needs at least one
    relevant gallery item, as in every published split.
    """
    similarity = _as_tensor(similarity)
    query_pids = _as_tensor(query_pids, torch.long)
    gallery_pids = _as_tensor(gallery_pids, torch.long)
    if similarity.ndim != 2 or similarity.shape != (len(query_pids), len(gallery_pids)):
        raise ValueError(
            f"similarity has shape {tuple(similarity.shape)}, expected ({len(query_pids)}, {len(gallery_pids)})"
        )
    return blocked_rank_metrics(lambda start, stop: similarity[start:stop], query_pids, gallery_pids, block_size)


def blocked_rank_metrics(
    similarity_rows: Callable[[int, int], torch.Tensor],
    query_pids,
    gallery_pids,
    block_size: int = 256,
) -> dict[str, float]:
    """Like `rank_metrics`, but the similarity rows [start, stop) come from a function, so the full matrix
    never needs to exist (the evaluation runner computes text_features[start:stop] @ image_features.T)."""
    query_pids = _as_tensor(query_pids, torch.long).cpu()
    gallery_pids = _as_tensor(gallery_pids, torch.long).cpu()
    totals = {key: 0.0 for key in ("R1", "R5", "R10", "AP", "INP")}
    for start in range(0, len(query_pids), block_size):
        stop = min(start + block_size, len(query_pids))
        block = similarity_rows(start, stop).cpu()
        try:
            stats = _block_statistics(block, query_pids[start:stop], gallery_pids)
        except ValueError as exc:
            raise ValueError(f"queries {start}..{stop - 1}: {exc}") from None
        for key, values in stats.items():
            totals[key] += float(values.sum())
    count = max(len(query_pids), 1)
    result = {f"R{k}": 100.0 * totals[f"R{k}"] / count for k in RANKS}
    result["mAP"] = 100.0 * totals["AP"] / count
    result["mINP"] = 100.0 * totals["INP"] / count
    return result
