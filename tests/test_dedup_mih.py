"""Multi-index hashing against the brute-force reference, and greedy in-order dedup against one-at-a-time."""
from __future__ import annotations

import numpy as np
import pytest

from curation.dedup.mih import (
    MultiIndexHash,
    as_hashes,
    block_layout,
    block_radii,
    brute_force_pairs,
    choose_num_blocks,
    deduplicate_hashes,
)


def _flip_bits(rng: np.random.Generator, hashes: np.ndarray, distances: np.ndarray) -> np.ndarray:
    out = hashes.copy()
    for k, distance in enumerate(distances):
        for bit in rng.choice(64, int(distance), replace=False):
            out[k] ^= np.uint64(1) << np.uint64(bit)
    return out


def _planted(rng, n_random: int, n_planted: int, max_distance: int) -> np.ndarray:
    base = rng.integers(0, 2**64, n_random, dtype=np.uint64)
    sources = rng.integers(0, n_random, n_planted)
    near = _flip_bits(rng, base[sources], rng.integers(0, max_distance + 1, n_planted))
    return np.concatenate([base, near])


def test_python_int_hashes_keep_all_64_bits():
    top = 1 << 63
    hashes = as_hashes([top, top | 0b1111111, 2**64 - 1, 5])
    assert hashes.dtype == np.uint64 and [int(h) for h in hashes] == [top, top | 0b1111111, 2**64 - 1, 5]
    # 7 low bits apart: not duplicates at radius 6, though equal as float64
    kept, _, _ = deduplicate_hashes(MultiIndexHash(6), [top, top | 0b1111111, top | 0b111111])
    assert kept.tolist() == [True, True, False]
    with pytest.raises(TypeError, match="integer array"):
        as_hashes(np.array([1.5]))


def test_block_radii_follow_the_pigeonhole_bound():
    for radius in range(0, 11):
        for blocks in range(1, radius + 2):
            radii = block_radii(radius, blocks)
            # The smallest distance that escapes every block's probe radius must exceed `radius`.
            assert sum(r + 1 for r in radii) == radius + 1
    assert block_radii(6, 7) == [0] * 7  # the textbook r+1 blocks, exact buckets
    assert block_radii(6, 3) == [2, 1, 1]
    assert [bits for _, bits in block_layout(3)] == [22, 21, 21]
    assert [bits for _, bits in block_layout(7)] == [10, 9, 9, 9, 9, 9, 9]


def test_block_count_grows_with_the_index():
    assert choose_num_blocks(1_000, 6) == 7
    assert choose_num_blocks(100_000, 6) == 4
    assert choose_num_blocks(1_000_000, 6) == 3


@pytest.mark.parametrize("radius", [0, 3, 6, 10])
def test_search_equals_brute_force_on_random_data(radius):
    rng = np.random.default_rng(radius)
    items = _planted(rng, 3000, 600, radius + 2)
    queries = np.concatenate([_planted(rng, 200, 0, 0), _flip_bits(rng, items[:400], rng.integers(0, radius + 3, 400))])
    index = MultiIndexHash(radius)
    for part in np.array_split(items, 5):  # several segments, merged as they grow
        index.add(part)
    got = index.search(queries)
    want = brute_force_pairs(queries, items, radius)
    assert len(want[0]) > 100  # the planted pairs are there to be found
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("size", [50, 5_000, 40_000])
def test_each_segment_size_and_block_count_equals_brute_force(size):
    rng = np.random.default_rng(size)
    items = _planted(rng, size, size // 10, 8)
    index = MultiIndexHash(6, items)
    queries = items[rng.integers(0, len(items), 300)]
    for g, w in zip(index.search(queries), brute_force_pairs(queries, items, 6)):
        np.testing.assert_array_equal(g, w)


def test_smaller_search_radius_and_its_limit():
    rng = np.random.default_rng(7)
    items = _planted(rng, 2000, 500, 6)
    index = MultiIndexHash(6, items)
    for g, w in zip(index.search(items[:300], radius=2), brute_force_pairs(items[:300], items, 2)):
        np.testing.assert_array_equal(g, w)
    with pytest.raises(ValueError, match="exceeds the index radius"):
        index.search(items[:1], radius=7)


def _one_at_a_time(hashes: np.ndarray, stored: np.ndarray, radius: int) -> np.ndarray:
    kept = list(stored)
    mask = []
    for h in hashes:
        close = any(bin(int(h) ^ int(k)).count("1") <= radius for k in kept)
        mask.append(not close)
        if not close:
            kept.append(h)
    return np.array(mask)


def test_batch_dedup_equals_inserting_one_hash_at_a_time():
    rng = np.random.default_rng(3)
    stored = _planted(rng, 300, 0, 0)
    # Chains of near-duplicates (a ~ b ~ c but a !~ c) make the order matter.
    batch = np.concatenate([_planted(rng, 200, 300, 9), _flip_bits(rng, stored[:50], rng.integers(0, 9, 50))])
    batch = batch[rng.permutation(len(batch))]
    index = MultiIndexHash(6, stored)
    kept, stored_match, batch_match = deduplicate_hashes(index, batch)
    np.testing.assert_array_equal(kept, _one_at_a_time(batch, stored, 6))
    assert len(index) == len(stored) + kept.sum()
    # Every duplicate points at something within the radius that was kept.
    for k in np.flatnonzero(~kept):
        other = stored[stored_match[k]] if stored_match[k] >= 0 else batch[batch_match[k]]
        assert bin(int(batch[k]) ^ int(other)).count("1") <= 6
        assert stored_match[k] >= 0 or kept[batch_match[k]]
