"""The build's plan step at scale: synthetic URL lists in COYO-700M's layout, planned into chunks.

For each N: N rows of (url, text) in --files Parquet files (COYO: 128 files, url and text columns) with row groups of
--row-group rows. A fresh process then plans them as build-webperson does (curation.chunks.plan_chunks, no crawl)
and reports
  plan_s          seconds to plan every chunk (footers only: no row is read)
  rss_mb          peak RSS of that process, and rss_base_mb the same process after its imports, before planning
  rss_held_mb     peak RSS when the chunk list is held, as the flow holds it to submit the chunks
  chunk_read_s    one chunk task's read of its rows: the last chunk of a row group (the most rows to decode),
                  and rss_after_read_mb the peak after it
  whole_list_*    for sizes up to --whole-max: seconds and peak RSS of reading the list whole and deduplicating it
                  with a set of every URL, as the build's plan did before
Run:  nice -n 10 .venv/bin/python benchmarks/build_scale.py [--sizes 1000000 10000000] [--files 128]
Writes benchmarks/results/build_scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "build_scale.json"

PLAN = """
import json, sys, time
from curation.chunks import ListSource, chunk_urls, plan_chunks

def peak_mb():  # VmHWM, not ru_maxrss: that keeps the peak of the parent forked before exec
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

folder, shard_size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
base = peak_mb()
if mode == "whole":  # what the build did before the streaming plan: every URL in one list, deduplicated by a set
    from curation.crawl import read_url_list
    start = time.perf_counter()
    records = list(read_url_list(folder))
    unique = len({r.url for r in records})
    print(json.dumps({"rows": len(records), "unique": unique, "plan_s": round(time.perf_counter() - start, 3),
                      "rss_mb": round(peak_mb(), 1)}))
    sys.exit()
hold = mode == "hold"
start = time.perf_counter()
planned = plan_chunks([ListSource(folder)], shard_size)
chunks = list(planned) if hold else None
count, rows, last = 0, 0, None
for chunk in chunks if hold else planned:
    count, rows = count + 1, rows + chunk.rows.stop - chunk.rows.start
    last = chunk if last is None or last.rows.path == chunk.rows.path else last
plan_s, plan_peak = time.perf_counter() - start, peak_mb()
start = time.perf_counter()
read = len(chunk_urls(last))
read_s = time.perf_counter() - start
print(json.dumps({"chunks": count, "rows": rows, "plan_s": round(plan_s, 3), "rss_base_mb": round(base, 1),
                  "rss_mb": round(plan_peak, 1), "chunk_read_s": round(read_s, 3), "chunk_read_rows": read,
                  "rss_after_read_mb": round(peak_mb(), 1)}))
"""


def write_lists(folder: Path, rows: int, files: int, row_group: int) -> float:
    """COYO-like list files: unique image URLs and short alt texts. Returns the seconds it took."""
    start = time.perf_counter()
    per_file = -(-rows // files)
    for index in range(files):
        ids = pa.array(range(index * per_file, min((index + 1) * per_file, rows))).cast(pa.string())
        url = pc.binary_join_element_wise("https://img", ids, ".example.com/photos/", ids, ".jpg", "")
        text = pc.binary_join_element_wise("a photo of item ", ids, " on a sunny day", "")
        pq.write_table(pa.table({"url": url, "text": text}), folder / f"part-{index:05d}.parquet",
                       row_group_size=row_group)
    return time.perf_counter() - start


def plan(folder: Path, shard_size: int, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", PLAN, str(folder), str(shard_size), mode],
                          env=env, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--files", type=int, default=128)
    parser.add_argument("--row-group", type=int, default=100_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--whole-max", type=int, default=1_000_000,
                        help="also read lists up to this size whole, as the build did before the streaming plan")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="build-scale-") as tmp:
            folder = Path(tmp)
            write_s = write_lists(folder, n, args.files, args.row_group)
            streamed, held = plan(folder, args.shard_size, "stream"), plan(folder, args.shard_size, "hold")
            row = {"urls": n, "files": args.files, "write_s": round(write_s, 1),
                   "list_mb": round(sum(p.stat().st_size for p in folder.iterdir()) / 2**20, 1),
                   **streamed, "plan_held_s": held["plan_s"], "rss_held_mb": held["rss_mb"]}
            if n <= args.whole_max:
                whole = plan(folder, args.shard_size, "whole")
                row.update(whole_list_s=whole["plan_s"], whole_list_rss_mb=whole["rss_mb"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "pyarrow": pa.__version__},
              "row_group": args.row_group, "shard_size": args.shard_size, "sizes": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
