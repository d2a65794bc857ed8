"""Benchmark: `gadms crawl` of up to 1M URLs from nginx on loopback in one run: peak memory, speed, per-host limit.

    nice -n 10 .venv/bin/python benchmarks/crawl_1m.py [--sizes 100000 300000 1000000] [--per-host-concurrency 64]

What it does, for each size N (one `gadms crawl` command each):
  1. serves the 20,000 synthetic 256×512 JPEGs of benchmarks/crawl_vs_img2dataset.py (made there, cached) under N
     distinct URLs: nginx rewrites /m/<k>/<file>.jpg to /img/<file>.jpg, and URL n is /m/<n // 20000>/<n % 20000>,
     so every 10,000-URL chunk sees 10,000 different images (the sha256 dedup is per chunk) and the served files
     stay 350 MB on disk, whatever N;
  2. runs `python -m flows.cli crawl` on the N-row Parquet list, with robots.txt on and the per-host limit on
     (`--per-host-concurrency`, no delay), 2 processes, 256 requests in flight, as the 20k benchmark does;
  3. samples every 0.5 s the whole process tree of that command (the CLI and its crawl workers): the sum of RSS
     (shared pages counted once per process: an upper bound) and the sum of PSS (shared pages split);
  4. checks the per-host limit from nginx's access log (`$pid $connection $msec $request_time` per request):
     requests on one connection run one after another, so the requests in flight at any moment are at most the
     connections open then; it reports the most connections open at once (a connection is open from its first
     request's start to its last request's end) and the number of connections (on loopback a request takes
     under the log's 1 ms resolution, so requests in flight cannot be read from the log directly);
  5. counts the downloads as each finished chunk's file appears and deletes the file (1M images are ~34 GB of
     Parquet; the CLI never reads a finished chunk again within a run), keeping the rejects;
  6. saves everything, with the load average, to benchmarks/results/crawl_1m.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crawl_vs_img2dataset import DEFAULT_CACHE, REPO, free_port, make_images  # noqa: E402
from crawl_vs_img2dataset import start_nginx as start_shared_nginx  # noqa: E402

FILES = 20_000
LOG_FORMAT = "$pid $connection $msec $request_time $status"


def start_nginx(docroot: Path, workdir: Path, port: int) -> subprocess.Popen:
    """nginx as in crawl_vs_img2dataset.py, plus the connection log and the /m/ rewrite."""
    return start_shared_nginx(
        docroot, workdir, port,
        access_log=f"log_format conns '{LOG_FORMAT}'; access_log {workdir}/access.log conns buffer=256k flush=1s;",
        server_extra=r"rewrite ^/m/[0-9]+/([0-9]+)\.jpg$ /img/$1.jpg last;")


def write_url_list(path: Path, port: int, n: int) -> None:
    with pq.ParquetWriter(path, pa.schema([("url", pa.string()), ("caption", pa.string())])) as writer:
        for start in range(0, n, 100_000):
            rows = range(start, min(n, start + 100_000))
            writer.write_table(pa.table({
                "url": [f"http://127.0.0.1:{port}/m/{i // FILES}/{i % FILES:06d}.jpg" for i in rows],
                "caption": [f"image {i}" for i in rows],
            }), row_group_size=100_000)


class TreeMemory:
    """Samples the RSS and PSS sums of a process and all its descendants every `every_s` seconds."""

    def __init__(self, pid: int, every_s: float = 0.5):
        self.root = psutil.Process(pid)
        self.every_s = every_s
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self.samples: list[tuple[float, int, int]] = []  # (seconds since start, rss MB, pss MB), every 10th
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(self.every_s):
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = pss = 0
            for process in processes:
                try:
                    info = process.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss += info.rss
                pss += info.pss
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, len(processes))
            if count % 10 == 0:
                self.samples.append((round(time.monotonic() - self._started, 1), rss >> 20, pss >> 20))
            count += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class DownloadSweeper:
    """Counts and deletes finished chunks' download files while the crawl runs (and once more at the end)."""

    def __init__(self, out: Path):
        self.folder = out / "downloads"
        self.images = 0
        self.files = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sweep(self) -> None:
        for path in sorted(self.folder.glob("*.parquet")):  # atomic_write renames finished files into place
            self.images += pq.ParquetFile(path).metadata.num_rows
            self.files += 1
            path.unlink()

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            if self.folder.exists():
                self.sweep()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.folder.exists():
            self.sweep()


def host_limit_from_log(log: Path) -> dict:
    """Most connections open at once, from the access log."""
    spans: dict[tuple[str, str], list[float]] = {}
    requests = 0
    statuses: dict[str, int] = {}
    with log.open() as f:
        for line in f:
            pid, connection, msec, request_time, status = line.split()
            end = float(msec)
            start = end - float(request_time)
            requests += 1
            statuses[status] = statuses.get(status, 0) + 1
            span = spans.get((pid, connection))
            if span is None:
                spans[(pid, connection)] = [start, end]
            else:
                span[0], span[1] = min(span[0], start), max(span[1], end)

    def most_at_once(points: list[tuple[float, int]]) -> int:
        points.sort()  # at equal times an end (-1) sorts before a start (+1): touching spans do not overlap
        best = current = 0
        for _, step in points:
            current += step
            best = max(best, current)
        return best

    connection_events = [(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()]
    return {"requests": requests, "statuses": statuses, "connections": len(spans),
            "max_connections_open": most_at_once(connection_events)}


def run_size(n: int, args, docroot: Path, tmp: Path) -> dict:
    port = free_port()
    workdir = tmp / f"nginx-{n}"
    workdir.mkdir()
    nginx = start_nginx(docroot, workdir, port)
    out = tmp / f"out-{n}"
    try:
        url_list = tmp / f"urls-{n}.parquet"
        write_url_list(url_list, port, n)
        config = tmp / f"crawl-{n}.yaml"
        config.write_text(
            "allow_private_addresses: ['127.0.0.1']\n"
            "robots: true\n"
            f"per_host_concurrency: {args.per_host_concurrency}\n"
            "per_host_min_delay_s: 0.0\n"
            f"concurrency: {args.concurrency}\n"
            f"workers: {args.workers}\n"
            "contact_url: https://example.org/gadms-benchmark\n"
        )
        command = [sys.executable, "-m", "flows.cli", "crawl", "--urls", str(url_list), "--out", str(out),
                   "--config", str(config), "--shard-size", str(args.shard_size)]
        load_before = os.getloadavg()
        cpu_before = psutil.cpu_times()
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        memory = TreeMemory(process.pid)
        sweeper = DownloadSweeper(out)
        stdout, _ = process.communicate()
        seconds = time.perf_counter() - started
        memory.stop()
        sweeper.stop()
        load_after = os.getloadavg()
        if process.returncode != 0:
            raise SystemExit(f"gadms crawl failed ({process.returncode}) at N={n}")
        rejects = sum(pq.ParquetFile(p).metadata.num_rows for p in (out / "rejects").glob("*.parquet"))
    finally:
        nginx.terminate()
        nginx.wait(10)
    limit = host_limit_from_log(workdir / "access.log")
    cpu_after = psutil.cpu_times()
    busy = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("user", "system", "nice", "softirq", "irq"))
    row = {
        "urls": n, "images": sweeper.images, "rejects": rejects, "chunks": sweeper.files, "seconds": round(seconds, 1),
        "images_per_s": round(sweeper.images / seconds, 1),
        "peak_rss_tree_mb": memory.peak_rss >> 20, "peak_pss_tree_mb": memory.peak_pss >> 20,
        "peak_processes": memory.peak_processes,
        "per_host_concurrency": args.per_host_concurrency, **limit,
        "limit_held": limit["max_connections_open"] <= args.per_host_concurrency,
        "load1_before": round(load_before[0], 2), "load1_after": round(load_after[0], 2),
        "machine_busy_cores": round(busy / seconds, 2),
        "crawl_summary": stdout.strip().splitlines()[-1] if stdout.strip() else "",
        "memory_samples_s_rss_pss_mb": memory.samples,
    }
    shutil.rmtree(out, ignore_errors=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--per-host-concurrency", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=10_000, help="the CLI's default")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "crawl_1m.json")
    args = parser.parse_args()
    docroot = args.cache / "docroot"
    make_images(docroot, FILES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-crawl-1m-") as tmp:
        for n in args.sizes:
            row = run_size(n, args, docroot, Path(tmp))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "memory_samples_s_rss_pss_mb"}), flush=True)
            result = {
                "benchmark": "crawl_1m",
                "server": "nginx (Debian), 2 worker processes, 127.0.0.1, keep-alive on; 20,000 files under "
                          "/m/<k>/<file>.jpg",
                "settings": f"gadms crawl, workers={args.workers}, concurrency={args.concurrency}, "
                            f"per_host_concurrency={args.per_host_concurrency}, per_host_min_delay_s=0, robots on, "
                            f"shard_size={args.shard_size}",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()},
                "runs": rows,
                "note": "other engineers share this 2-core machine: load1 and machine_busy_cores record it",
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
