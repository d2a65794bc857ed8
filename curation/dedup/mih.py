"""Multi-index hashing (MIH) for 64-bit perceptual hashes: all stored hashes within Hamming distance r of a query.

The pigeonhole principle behind it: split the 64 bits into m blocks. If two hashes differ in at most r bits, then
with q, a = divmod(r, m) one of the first a+1 blocks differs in at most q bits, or one of the other blocks differs
in at most q-1 bits (otherwise the total would be at least (a+1)(q+1) + (m-a-1)q = r+1). So each block gets a
table of exact-match buckets (a direct-addressed CSR array over the block's values); a query probes, per block,
every bucket whose key is within that block's small radius of its own block value, and the candidates found
are verified with a full 64-bit popcount.

With m = r+1 every block radius is 0: the textbook "r+1 blocks, exact buckets" scheme. Its 9-bit buckets hold
n/512 hashes each, so a query still touches ~1.4% of the index: linear growth. Longer blocks (fewer of them,
each probed at radius 1 or 2) keep a bucket's expected size near or below one, which makes the work per query
grow far slower than n (Norouzi et al., "Fast Search in Hamming Space with Multi-Index Hashing", CVPR 2012).
Each segment of the index picks its m from its own size by a simple cost model (probes + expected candidates).

The index grows by segments (an added batch becomes a segment; similar-sized neighbours are merged, as in a
log-structured merge tree), so adding is amortised O(n log n) and never rebuilds the whole index per batch.
Everything is numpy over whole query batches; there is no Python loop per hash.

`brute_force_pairs` is the reference implementation the tests compare against.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import numpy as np

HASH_BITS = 64
MAX_BLOCK_BITS = 22  # a 22-bit block table is 4M offsets (16 MiB as int32)
_PROBES_PER_CHUNK = 1 << 21  # bounds the temporary arrays of one query chunk


def as_hashes(values) -> np.ndarray:
    """Python ints (0 ≤ h < 2**64) or an unsigned/integer array → contiguous uint64 array.

    A list is converted with dtype uint64 from the start: np.asarray would turn a list holding values ≥ 2**63
    into float64 and silently drop their low bits.
    """
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "ui":
            raise TypeError(f"hashes must be an integer array, got {values.dtype}")
        array = values.astype(np.uint64, copy=False)
    else:
        array = np.array(list(values), dtype=np.uint64)
    return np.ascontiguousarray(array.ravel())


def brute_force_pairs(queries, items, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference search: every (query index, item index, distance) with distance ≤ radius, by a full scan."""
    queries, items = as_hashes(queries), as_hashes(items)
    found_q, found_i, found_d = [], [], []
    chunk = max(1, (1 << 23) // max(1, len(items)))
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk]
        distance = np.bitwise_count(block[:, None] ^ items[None, :])
        q, i = np.nonzero(distance <= radius)
        found_q.append(q + start)
        found_i.append(i)
        found_d.append(distance[q, i].astype(np.int8))
    return _sorted_pairs(found_q, found_i, found_d)


def _sorted_pairs(qs: list, items: list, distances: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not qs:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int8)
    q, i, d = (np.concatenate(x) for x in (qs, items, distances))
    order = np.lexsort((i, q))
    return q[order].astype(np.int64), i[order].astype(np.int64), d[order]


def block_layout(num_blocks: int) -> list[tuple[int, int]]:
    """(shift, bits) of each block, high bits first; widths differ by at most one bit."""
    base, extra = divmod(HASH_BITS, num_blocks)
    widths = [base + 1 if k < extra else base for k in range(num_blocks)]
    layout, shift = [], HASH_BITS
    for width in widths:
        shift -= width
        layout.append((shift, width))
    return layout


def block_radii(radius: int, num_blocks: int) -> list[int]:
    """Search radius of each block (negative: the block need not be probed at all)."""
    q, a = divmod(radius, num_blocks)
    return [q if k <= a else q - 1 for k in range(num_blocks)]


@lru_cache(maxsize=None)
def _xor_masks(bits: int, radius: int) -> np.ndarray:
    """Every `bits`-bit mask with at most `radius` bits set: the probe offsets of one block."""
    masks = [0]
    for weight in range(1, radius + 1):
        masks += [sum(1 << b for b in chosen) for chosen in combinations(range(bits), weight)]
    return np.array(masks, dtype=np.int64)


def _expected_cost(size: int, radius: int, num_blocks: int) -> float:
    """Probes plus expected candidates per query for a segment of `size` uniformly spread hashes."""
    cost = 0.0
    for (_, bits), block_radius in zip(block_layout(num_blocks), block_radii(radius, num_blocks)):
        if block_radius < 0:
            continue
        probes = len(_xor_masks(bits, block_radius))
        cost += probes * (1.0 + size / float(1 << bits))
    return cost


def choose_num_blocks(size: int, radius: int) -> int:
    """The block count with the least expected query cost whose tables stay within MAX_BLOCK_BITS."""
    # More than radius+1 blocks only adds unprobed blocks, except that small radii still need short blocks.
    options = [m for m in range(2, max(radius + 2, 4)) if -(-HASH_BITS // m) <= MAX_BLOCK_BITS]
    return min(options, key=lambda m: (_expected_cost(size, radius, m), -m))


class _Segment:
    """An immutable slice of the index: hashes with global ids [base, base + n) and one CSR table per block."""

    def __init__(self, hashes: np.ndarray, base: int, radius: int):
        self.hashes = hashes
        self.base = base
        self.radius = radius
        self.num_blocks = choose_num_blocks(len(hashes), radius)
        index_type = np.int32 if len(hashes) < 2**31 else np.int64
        # Per probed block: (shift, bits, block radius, occupied, offsets, order, hashes in bucket order).
        # `occupied` (one byte per bucket) filters the probes first: most probes hit an empty bucket, and the
        # small table stays in cache where the offsets table would not.
        self.tables = []
        for (shift, bits), block_radius in zip(block_layout(self.num_blocks), block_radii(radius, self.num_blocks)):
            if block_radius < 0:
                continue
            keys = ((hashes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.uint32)
            order = np.argsort(keys).astype(index_type)  # order within a bucket does not matter
            offsets = np.zeros((1 << bits) + 1, dtype=index_type)
            np.cumsum(np.bincount(keys, minlength=1 << bits), out=offsets[1:])
            occupied = offsets[1:] != offsets[:-1]
            self.tables.append((shift, bits, block_radius, occupied, offsets, order, hashes[order]))

    def __len__(self) -> int:
        return len(self.hashes)

    def search(self, queries: np.ndarray, radius: int) -> tuple[list, list, list]:
        found_q, found_i, found_d = [], [], []
        for shift, bits, block_radius, occupied, offsets, order, bucket_hashes in self.tables:
            masks = _xor_masks(bits, block_radius)
            query_keys = ((queries >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
            # Bound the temporaries of a chunk by its probes and its expected candidates.
            chunk = max(1, int(_PROBES_PER_CHUNK / (len(masks) * (1.0 + len(self.hashes) / (1 << bits)))))
            for start in range(0, len(queries), chunk):
                keys = query_keys[start : start + chunk]
                probes = (keys[:, None] ^ masks[None, :]).ravel()
                hit = np.flatnonzero(occupied[probes])
                if not len(hit):
                    continue
                bucket = probes[hit]
                begin = offsets[bucket]
                counts = offsets[bucket + 1] - begin
                probe_query = hit // len(masks) + start
                # Expand each non-empty bucket [begin, begin + count) into its item positions.
                total = int(counts.sum())
                first = np.cumsum(counts) - counts
                position = np.arange(total, dtype=np.int64) - np.repeat(first - begin, counts)
                query_index = np.repeat(probe_query, counts)
                distance = np.bitwise_count(queries[query_index] ^ bucket_hashes[position])
                close = np.flatnonzero(distance <= radius)
                found_q.append(query_index[close])
                found_i.append(order[position[close]].astype(np.int64) + self.base)
                found_d.append(distance[close].astype(np.int8))
        return found_q, found_i, found_d


class MultiIndexHash:
    """All stored 64-bit hashes within Hamming distance `radius` of a query, sublinear in the index size.

    Items get consecutive integer ids in the order they are added (0, 1, ...).
    """

    def __init__(self, radius: int = 6, hashes=None):
        if not 0 <= radius < HASH_BITS:
            raise ValueError(f"radius must be in [0, {HASH_BITS}), got {radius}")
        self.radius = radius
        self._segments: list[_Segment] = []
        if hashes is not None:
            self.add(hashes)

    def __len__(self) -> int:
        return sum(len(s) for s in self._segments)

    def add(self, hashes) -> None:
        """Append hashes (ids continue from len(self)); merge segments of similar size to keep their count ~log n."""
        new = as_hashes(hashes)
        if not len(new):
            return
        self._segments.append(_Segment(new, len(self), self.radius))
        while len(self._segments) > 1 and len(self._segments[-2]) <= 2 * len(self._segments[-1]):
            last, previous = self._segments.pop(), self._segments.pop()
            merged = np.concatenate([previous.hashes, last.hashes])
            self._segments.append(_Segment(merged, previous.base, self.radius))

    def search(self, queries, radius: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query index, item id, distance) with distance ≤ radius (default: the index radius; may not exceed it).

        Sorted by query index, then item id; each pair once.
        """
        radius = self.radius if radius is None else radius
        if radius > self.radius:
            raise ValueError(f"search radius {radius} exceeds the index radius {self.radius}")
        queries = as_hashes(queries)
        found_q, found_i, found_d = [], [], []
        for segment in self._segments:
            q, i, d = segment.search(queries, radius)
            found_q += q
            found_i += i
            found_d += d
        q, i, d = _sorted_pairs(found_q, found_i, found_d)
        if len(q) > 1:  # a pair close in several blocks is found once per block
            unique = np.ones(len(q), dtype=bool)
            unique[1:] = (q[1:] != q[:-1]) | (i[1:] != i[:-1])
            q, i, d = q[unique], i[unique], d[unique]
        return q, i, d


def resolve_in_order(
    blocked: np.ndarray, later: np.ndarray, earlier: np.ndarray, rank: np.ndarray
) -> np.ndarray:
    """Greedy dedup of a batch in arrival order: for each item, -1 when kept, else the earlier item it duplicates.

    `blocked[k]` marks item k as already a duplicate of something outside the batch (never kept, never matched).
    (later, earlier, rank) list close item pairs with earlier < later; among several kept earlier partners the
    one with the lowest rank (e.g. distance) is reported. An item duplicates only an earlier item that was itself
    kept, which is exactly what inserting one item at a time would give. Only items with an earlier close
    partner are visited one by one (few: near-duplicates are rare); all others are decided in bulk.
    """
    kept = ~np.asarray(blocked, dtype=bool)
    duplicate_of = np.full(len(kept), -1, dtype=np.int64)
    if not len(later):
        return duplicate_of
    order = np.lexsort((earlier, rank, later))
    later, earlier = later[order], earlier[order]
    starts = np.flatnonzero(np.r_[True, later[1:] != later[:-1]])
    ends = np.r_[starts[1:], len(later)]
    for start, end in zip(starts.tolist(), ends.tolist()):
        item = later[start]
        if not kept[item]:
            continue
        partners = earlier[start:end]
        alive = partners[kept[partners]]
        if len(alive):
            kept[item] = False
            duplicate_of[item] = alive[0]
    return duplicate_of


def deduplicate_hashes(index: MultiIndexHash, hashes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicate removal of a batch against `index` and within itself, then the kept hashes are added.

    Returns (kept mask, stored id matched or -1, earlier batch position matched or -1) per batch item.
    """
    hashes = as_hashes(hashes)
    stored_match, _ = nearest_matches(index, hashes)
    later, earlier, distance = within_batch_pairs(hashes, index.radius)
    batch_match = resolve_in_order(stored_match >= 0, later, earlier, distance)
    kept = (stored_match < 0) & (batch_match < 0)
    index.add(hashes[kept])
    return kept, stored_match, batch_match


def nearest_matches(index: MultiIndexHash, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each hash, the id of its closest stored hash within the index radius (ties: lowest id) and the
    distance to it, or -1 and -1."""
    match = np.full(len(hashes), -1, dtype=np.int64)
    distance = np.full(len(hashes), -1, dtype=np.int8)
    q, i, d = index.search(hashes)
    if len(q):
        order = np.lexsort((i, d, q))
        q, i, d = q[order], i[order], d[order]
        first = np.r_[True, q[1:] != q[:-1]]
        match[q[first]] = i[first]
        distance[q[first]] = d[first]
    return match, distance


def within_batch_pairs(hashes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(later, earlier, distance) for every pair of batch positions within `radius`, earlier < later."""
    q, i, d = MultiIndexHash(radius, hashes).search(hashes)
    earlier_only = i < q
    return q[earlier_only], i[earlier_only], d[earlier_only]
