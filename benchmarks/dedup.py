"""Near-duplicate search on 64-bit hashes: multi-index hashing (MIH) against a brute-force scan.

For each N: N random hashes plus N/100 planted near-duplicates of random members at known distances 0..r+2.
Measures
  build      MultiIndexHash over the N + planted hashes (hashes/s)
  query      Q queries (half planted near-duplicates, half fresh random) against the built index (queries/s,
             µs per query), with recall and precision against a brute-force scan of the same queries
  brute      a brute-force scan of a sample of those queries (µs per query), for the speed-up
  dedup      greedy dedup of all N + planted hashes from an empty index in arrival order (what the dedup
             stage does): seconds, and recall on the planted near-duplicates within r (all must be removed)
  index      the same hashes as PersonCrops through the persistent DedupIndex (DuckDB file, file lock) in
             shards of --shard-size: total seconds, ms per shard, and the time a fresh process takes to open it
Run:  nice -n 10 .venv/bin/python benchmarks/dedup.py [--sizes 100000 1000000 10000000] [--radius 6]
Writes benchmarks/results/dedup.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from curation.dedup import DedupIndex
from curation.dedup.mih import MultiIndexHash, brute_force_pairs, deduplicate_hashes
from storage.records import PersonCrop

RESULTS = Path(__file__).resolve().parent / "results" / "dedup.json"


def flip_bits(rng: np.random.Generator, hashes: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Each hash with `distance` distinct random bits flipped (vectorised: random keys, take the lowest d)."""
    keys = rng.random((len(hashes), 64))
    ranks = np.argsort(np.argsort(keys, axis=1), axis=1)
    flip = ranks < distances[:, None]
    masks = (flip.astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    return hashes ^ masks


def dataset(n: int, radius: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes, planted positions, planted distances); planted near-duplicates come after all originals."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, n, dtype=np.uint64)
    planted = max(1, n // 100)
    distances = rng.integers(0, radius + 3, planted)
    near = flip_bits(rng, base[rng.integers(0, n, planted)], distances)
    return np.concatenate([base, near]), np.arange(n, n + planted), distances


def measure(n: int, radius: int, queries: int, brute_queries: int, full_dedup: bool, shard_size: int,
            seed: int = 0) -> dict:
    hashes, planted, distances = dataset(n, radius, seed)
    rng = np.random.default_rng(seed + 1)

    started = time.perf_counter()
    index = MultiIndexHash(radius, hashes)
    build_s = time.perf_counter() - started

    query_hashes = np.concatenate([
        flip_bits(rng, hashes[rng.integers(0, len(hashes), queries // 2)], rng.integers(0, radius + 3, queries // 2)),
        rng.integers(0, 2**64, queries - queries // 2, dtype=np.uint64),
    ])
    started = time.perf_counter()
    found = index.search(query_hashes)
    query_s = time.perf_counter() - started

    sample = rng.choice(len(query_hashes), brute_queries, replace=False)
    started = time.perf_counter()
    truth = brute_force_pairs(query_hashes[sample], hashes, radius)
    brute_s = time.perf_counter() - started
    truth_pairs = set(zip(sample[truth[0]].tolist(), truth[1].tolist()))
    in_sample = np.isin(found[0], sample)
    found_pairs = set(zip(found[0][in_sample].tolist(), found[1][in_sample].tolist()))

    row = {
        "n": int(len(hashes)),
        "segments_blocks": [s.num_blocks for s in index._segments],
        "build_s": round(build_s, 3),
        "build_hashes_per_s": round(len(hashes) / build_s),
        "queries": int(queries),
        "query_s": round(query_s, 3),
        "queries_per_s": round(queries / query_s),
        "us_per_query": round(1e6 * query_s / queries, 2),
        "brute_us_per_query": round(1e6 * brute_s / brute_queries, 1),
        "speedup_vs_brute": round((brute_s / brute_queries) / (query_s / queries), 1),
        "brute_checked_queries": int(brute_queries),
        "brute_pairs": len(truth_pairs),
        "recall_vs_brute": len(found_pairs & truth_pairs) / max(1, len(truth_pairs)),
        "exact_match_vs_brute": found_pairs == truth_pairs,
    }
    del index
    if full_dedup:
        started = time.perf_counter()
        kept, _, _ = deduplicate_hashes(MultiIndexHash(radius), hashes)
        row["dedup_s"] = round(time.perf_counter() - started, 3)
        within = distances <= radius
        row["dedup_planted_within_r"] = int(within.sum())
        row["dedup_recall_planted"] = float((~kept[planted[within]]).mean())
        row["dedup_removed"] = int((~kept).sum())
    if shard_size:
        row.update(measure_index(hashes, planted[distances <= radius], radius, shard_size))
    row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return row


def measure_index(hashes: np.ndarray, planted_within: np.ndarray, radius: int, shard_size: int) -> dict:
    crops = [
        PersonCrop(sample_id=f"s{k}", source_url="", page_url="", alt_text="", source_sha256=f"src{k}", image=b"",
                   width=1, height=1, bbox=(0, 0, 1, 1), det_score=1.0, keypoints=None, phash=int(h),
                   crop_sha256=f"crop{k}")
        for k, h in enumerate(hashes.tolist())
    ]
    with tempfile.TemporaryDirectory() as folder:
        index = DedupIndex.open(folder, radius=radius)
        removed = set()
        started = time.perf_counter()
        for shard, start in enumerate(range(0, len(crops), shard_size)):
            _, rejects = index.deduplicate(crops[start : start + shard_size], f"shard-{shard}")
            removed.update(int(r.sample_id[1:]) for r in rejects)
        total_s = time.perf_counter() - started
        shards = -(-len(crops) // shard_size)
        started = time.perf_counter()
        reopened = DedupIndex.open(folder, radius=radius)
        open_s = time.perf_counter() - started
        kept = len(reopened)
    return {
        "index_shard_size": shard_size,
        "index_total_s": round(total_s, 3),
        "index_ms_per_shard": round(1000 * total_s / shards, 1),
        "index_open_s": round(open_s, 3),
        "index_kept": kept,
        "index_recall_planted": float(np.isin(planted_within, list(removed)).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--radius", type=int, default=6)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--brute-queries", type=int, default=1000)
    parser.add_argument("--no-dedup-above", type=int, default=2_000_000, help="skip the full dedup for larger N")
    parser.add_argument("--shard-size", type=int, default=10_000, help="crops per DedupIndex call (0: skip)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        small = n <= args.no_dedup_above
        row = measure(n, args.radius, args.queries, args.brute_queries, full_dedup=small,
                      shard_size=args.shard_size if small else 0)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "benchmark": "dedup",
        "radius": args.radius,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "loadavg_at_end": os.getloadavg()},
        "command": "nice -n 10 .venv/bin/python benchmarks/dedup.py " + " ".join(
            ["--sizes", *map(str, args.sizes), "--radius", str(args.radius), "--queries", str(args.queries)]),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
