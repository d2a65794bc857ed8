"""rank_metrics against the protocol's worked example and a slow, obviously-correct reference."""
import numpy as np
import pytest
import torch

from gadms_model.evaluation import rank_metrics


def reference_metrics(similarity: np.ndarray, query_pids, gallery_pids) -> dict:
    """One query at a time, straight from the definitions in evaluation-and-formats.md."""
    r1 = r5 = r10 = ap_sum = inp_sum = 0.0
    gallery_pids = list(gallery_pids)
    for row, pid in zip(similarity, query_pids):
        ranked = sorted(range(len(row)), key=lambda g: -row[g])
        relevant = [gallery_pids[g] == pid for g in ranked]
        first_hit = relevant.index(True) + 1
        r1 += first_hit <= 1
        r5 += first_hit <= 5
        r10 += first_hit <= 10
        hits, precision_sum = 0, 0.0
        for position, is_relevant in enumerate(relevant, start=1):
            if is_relevant:
                hits += 1
                precision_sum += hits / position
                last = position
        ap_sum += precision_sum / hits
        inp_sum += hits / last
    n = len(query_pids)
    return {"R1": 100 * r1 / n, "R5": 100 * r5 / n, "R10": 100 * r10 / n, "mAP": 100 * ap_sum / n, "mINP": 100 * inp_sum / n}


def test_worked_example():
    similarity = [[0.9, 0.8, 0.1, 0.7, 0.2], [0.9, 0.1, 0.8, 0.7, 0.6]]
    result = rank_metrics(similarity, [1, 2], [1, 2, 1, 3, 2])
    assert result == pytest.approx({"R1": 50.0, "R5": 100.0, "R10": 100.0, "mAP": 51.25, "mINP": 40.0})


@pytest.mark.parametrize("seed,num_queries,num_gallery,num_ids,block", [(0, 37, 53, 9, 8), (1, 120, 80, 25, 256), (2, 64, 200, 40, 7)])
def test_random_matrices_match_reference(seed, num_queries, num_gallery, num_ids, block):
    rng = np.random.default_rng(seed)
    gallery_pids = np.concatenate([np.arange(num_ids), rng.integers(0, num_ids, num_gallery - num_ids)])
    query_pids = rng.integers(0, num_ids, num_queries)
    similarity = rng.standard_normal((num_queries, num_gallery)).astype(np.float32)  # continuous: no ties
    expected = reference_metrics(similarity, query_pids, gallery_pids)
    got = rank_metrics(torch.from_numpy(similarity), query_pids.tolist(), gallery_pids.tolist(), block_size=block)
    assert got == pytest.approx(expected, abs=1e-9)
    assert rank_metrics(similarity, query_pids, gallery_pids) == pytest.approx(expected, abs=1e-9)


def test_query_without_relevant_gallery_item_is_an_error():
    with pytest.raises(ValueError, match="query 1 .* no relevant gallery item \\(pid 7\\)"):
        rank_metrics([[0.1, 0.2], [0.3, 0.4]], [1, 7], [1, 2])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="expected \\(2, 3\\)"):
        rank_metrics(np.zeros((2, 2)), [1, 2], [1, 2, 3])
