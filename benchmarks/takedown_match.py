"""Takedown matching speed: a shard's worth of crops checked against a blocklist (storage.takedown).

For each number of pHash entries E: C random crop pHashes (a planted one per 1,000 at distance ≤ the radius of a
random entry) through `TakedownList.phash_matches`, the full comparison with every entry, and C sample rows through
`table_matches` with E URL, E domain and E sha256 entries as well (hash lookups). Reports seconds, crops/s and
pair comparisons/s, and checks that exactly the planted crops match.
Run:  nice -n 10 .venv/bin/python benchmarks/takedown_match.py [--crops 200000] [--entries 100 1000 10000]
Writes benchmarks/results/takedown_match.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from storage.takedown import NEAR_DUPLICATE_RADIUS, TakedownEntry, TakedownList

RESULTS = Path(__file__).resolve().parent / "results" / "takedown_match.json"


def measure(crops: int, entries: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    blocklist = TakedownList()
    entry_hashes = rng.integers(0, 2**64 - 1, entries, dtype=np.uint64, endpoint=True)
    for h in entry_hashes:
        blocklist.add(TakedownEntry("phash", f"{int(h):016x}"))
    hashes = rng.integers(0, 2**64 - 1, crops, dtype=np.uint64, endpoint=True)
    planted = rng.choice(crops, size=max(1, crops // 1000), replace=False)
    flips = np.array([sum(1 << int(b) for b in rng.choice(64, NEAR_DUPLICATE_RADIUS, replace=False)) for _ in planted],
                     dtype=np.uint64)
    hashes[planted] = entry_hashes[rng.integers(0, entries, len(planted))] ^ flips
    start = time.perf_counter()
    matched = blocklist.phash_matches(hashes, NEAR_DUPLICATE_RADIUS)
    phash_seconds = time.perf_counter() - start
    found = set(np.flatnonzero(matched >= 0).tolist())

    for n in range(entries):
        blocklist.add(TakedownEntry("url", f"https://blocked.example/{n}.jpg"))
        blocklist.add(TakedownEntry("domain", f"host{n}.example"))
        blocklist.add(TakedownEntry("sha256", f"{n:064x}"))
    table = pa.table({
        "sample_id": [f"s{n}" for n in range(crops)],
        "source_url": [f"https://img{n % 97}.web.example/{n}.jpg" for n in range(crops)],
        "page_url": [f"https://web.example/page/{n}" for n in range(crops)],
        "source_sha256": [f"{n + 10**9:064x}" for n in range(crops)],
        "crop_sha256": [f"{n + 2 * 10**9:064x}" for n in range(crops)],
        "phash": pa.array(hashes, pa.uint64()),
    })
    start = time.perf_counter()
    rows = blocklist.table_matches(table, NEAR_DUPLICATE_RADIUS)
    table_seconds = time.perf_counter() - start
    return {
        "crops": crops, "phash_entries": entries, "planted": len(planted),
        "planted_found": len(found & set(planted.tolist())), "false_matches": len(found - set(planted.tolist())),
        "phash_seconds": round(phash_seconds, 3), "phash_crops_per_s": round(crops / phash_seconds),
        "pair_comparisons_per_s": round(crops * entries / phash_seconds),
        "table_seconds": round(table_seconds, 3), "table_rows_per_s": round(crops / table_seconds),
        "table_matches": sum(r is not None for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=200_000)
    parser.add_argument("--entries", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = [measure(args.crops, e) for e in args.entries]
    for r in results:
        print(json.dumps(r))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                                    "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
