"""`crawl_chunk`: download one chunk of URLs; every row ends as one Download or one Reject.

Rows already in the chunk's state folder are skipped (resume). The rest are fetched by one asyncio loop, or by
several worker processes when the chunk is large (aiohttp costs ~0.3 ms of CPU per request, so one core caps
the rate). Within a loop each host gets as many "lanes" as it may have requests in flight, so a slow or
rate-limited host never holds slots other hosts could use.

Workers are forked when the calling process runs a single thread (the CLI); otherwise (Prefect runs threads,
and forking a process with threads can deadlock) they start from multiprocessing's "forkserver", which imports
the caller's main module: scripts that crawl large chunks from threads need the `if __name__ == "__main__":`
guard.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import multiprocessing
import os
import queue as queue_module
import threading
import time
import zlib
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import pyarrow as pa
from yarl import URL

from curation.crawl.config import CrawlConfig
from curation.crawl.fetcher import IMAGE_ACCEPT, Fetcher, FetchFailure, host_key, parse_url
from curation.crawl.hostleases import HostLeaseError
from curation.crawl.imageinfo import ImageCheckError, inspect_image
from curation.crawl.loop import run_sync
from curation.crawl.robots import RobotsCache
from curation.crawl.state import Outcome, SegmentWriter, load_segments, open_chunk_state, saved_rows
from storage.records import Download, Reject, UrlRecord
from storage.takedown import TakedownEntry, TakedownList

log = logging.getLogger(__name__)

STAGE = "crawl"
PROGRESS_EVERY_S = 0.25
DOWNLOAD_COLUMNS = ["url", "page_url", "alt_text", "image", "sha256", "mime", "width", "height", "source_meta",
                    "fetched_at", "http_status", "x_robots_tag"]

# (downloaded, rejected) since the last call; sha256 duplicates are only known at the end and count as downloaded.
ProgressCallback = Callable[[int, int], None]


class CrawlResult:
    """What a chunk became. `downloads_table` holds the downloads as Arrow (DOWNLOAD_COLUMNS) for writers that
    should not copy every image through Python objects; `downloads` gives them as records."""

    def __init__(self, downloads_table: pa.Table, rejects: list[Reject]):
        self.downloads_table = downloads_table
        self.rejects = rejects

    @cached_property
    def downloads(self) -> list[Download]:
        columns = [self.downloads_table.column(name).to_pylist() for name in DOWNLOAD_COLUMNS]
        return [Download(*row) for row in zip(*columns)]

    def reason_counts(self) -> dict[str, int]:
        return dict(Counter(r.reason for r in self.rejects).most_common())


@dataclass
class _WorkerPlan:
    """How one event loop (in this process or a worker) shares the chunk's limits."""

    concurrency: int
    per_host_concurrency: int
    delay_scale: float  # a host split over k loops keeps its rate when each loop waits k times longer
    host_leases: str | None = None  # the run's lease server (curation.crawl.hostleases), when there is one


def crawl_chunk(urls: list[UrlRecord], config: CrawlConfig, state_dir: str, *,
                progress: ProgressCallback | None = None, robots_cache: RobotsCache | None = None,
                host_leases: str | None = None, takedown: TakedownList | None = None,
                meanwhile: Callable[[], None] | None = None) -> CrawlResult:
    """Download `urls` (one chunk) politely and safely, resuming from `state_dir`.

    Every input row ends in exactly one of `downloads` (in the order they were saved) or `rejects` (stage
    "crawl", in input order). Rerunning with the same `state_dir` gives the same result. Repeated URLs
    are fetched once (later rows: `duplicate_url`); identical bytes are kept once (later rows:
    `duplicate_sha256`, detail = the kept URL). `robots_cache` lets several chunks share fetched robots.txt.
    `host_leases` (a `HostLeaseServer`'s address) makes the per-host limits hold across all chunks crawling at
    once, wherever they run; without it they hold within this chunk.
    A row whose URL, page URL or their domain is on `takedown` is never fetched (reason `takedown`, detail the
    entry), also when an earlier run saved it before the entry was listed.
    `meanwhile` is called once while worker processes fetch the chunk (the crawl job writes the previous chunk's
    outputs then), or before the chunk is fetched in this process.
    """
    urls = list(urls)
    blocked = {index: entry for index, record in enumerate(urls)
               if takedown and (entry := takedown.url_entry(record.url, record.page_url)) is not None}
    robots_cache = robots_cache if robots_cache is not None else RobotsCache(config.robots_cache_ttl_s)
    open_chunk_state(state_dir, urls)
    segments = load_segments(state_dir)
    saved = saved_rows(segments)
    first_row: dict[str, int] = {}
    todo: list[tuple[int, UrlRecord]] = []
    for index, record in enumerate(urls):
        if first_row.setdefault(record.url, index) == index and index not in saved and index not in blocked:
            todo.append((index, record))
    if progress is not None:
        reasons = segments.column("reason").to_pylist()
        ok = sum(1 for position in saved.values() if reasons[position] is None)
        progress(ok, len(urls) - len(todo) - ok)
    if todo:
        _run(todo, config, state_dir, robots_cache, progress, host_leases, meanwhile or (lambda: None))
        segments = load_segments(state_dir)
        saved = saved_rows(segments)
    elif meanwhile is not None:
        meanwhile()
    return _assemble(urls, segments, saved, first_row, blocked)


def _assemble(urls: list[UrlRecord], segments: pa.Table, saved: dict[int, int],
              first_row: dict[str, int], blocked: dict[int, TakedownEntry]) -> CrawlResult:
    reasons = segments.column("reason").to_pylist()
    details = segments.column("detail").to_pylist()
    hashes = segments.column("sha256").to_pylist()
    kept: dict[int, UrlRecord] = {}  # position in segments → input row
    rejects: list[Reject] = []
    kept_url_by_sha: dict[str, str] = {}
    for index, record in enumerate(urls):
        first = first_row[record.url]
        if index in blocked:
            rejects.append(Reject(STAGE, "takedown", record.url, detail=str(blocked[index])))
            continue
        if first != index:
            rejects.append(Reject(STAGE, "duplicate_url", record.url, detail=f"same URL as row {first}"))
            continue
        position = saved.get(index)
        if position is None:
            raise RuntimeError(f"crawl: row {index} ({record.url}) has no outcome after the run")
        sha256 = hashes[position]
        if reasons[position] is not None:
            rejects.append(Reject(STAGE, reasons[position], record.url, detail=details[position] or ""))
        elif sha256 in kept_url_by_sha:
            rejects.append(Reject(STAGE, "duplicate_sha256", record.url, detail=kept_url_by_sha[sha256]))
        else:
            kept_url_by_sha[sha256] = record.url
            kept[position] = record
    # Downloads stay in the order they were saved: reordering would copy every image once more (~1.5 s of
    # CPU per 10,000), and when nothing is dropped the bytes go from the memory-mapped state to Parquet as they are.
    mask = [position in kept for position in range(segments.num_rows)]
    picked = segments if all(mask) else segments.filter(pa.array(mask, pa.bool_()))
    rows = [kept[position] for position in range(segments.num_rows) if position in kept]
    table = pa.table({
        "url": pa.array([r.url for r in rows], pa.string()),
        "page_url": pa.array([r.page_url for r in rows], pa.string()),
        "alt_text": pa.array([r.alt_text for r in rows], pa.string()),
        "image": picked.column("data"),
        "sha256": picked.column("sha256"),
        "mime": picked.column("mime"),
        "width": picked.column("width"),
        "height": picked.column("height"),
        "source_meta": pa.array([r.source_meta for r in rows], pa.string()),
        "fetched_at": picked.column("fetched_at"),
        "http_status": picked.column("http_status"),
        "x_robots_tag": picked.column("x_robots_tag"),
    })
    return CrawlResult(table, rejects)


def _run(todo: list[tuple[int, UrlRecord]], config: CrawlConfig, state_dir: str, robots_cache: RobotsCache,
         progress: ProgressCallback | None, host_leases: str | None, meanwhile: Callable[[], None]) -> None:
    workers = max(1, min(config.workers or os.cpu_count() or 1, len(todo) // config.min_urls_per_worker))
    split = min(workers, config.per_host_concurrency)
    if host_leases:  # the lease server keeps the host's limits exact however many loops share it
        plan = _WorkerPlan(math.ceil(config.concurrency / workers), config.per_host_concurrency // split, 1.0,
                           host_leases)
    else:
        # A host may be split over several loops only when it has no delay between requests to keep exact.
        split = split if config.per_host_min_delay_s == 0 else 1
        plan = _WorkerPlan(math.ceil(config.concurrency / workers), config.per_host_concurrency // split, split)
    if workers == 1:
        meanwhile()
        on_outcome = _progress_adapter(progress) if progress else None
        run_sync(crawl_items(todo, config, state_dir, robots_cache, plan, "w0", on_outcome))
        if on_outcome is not None:
            on_outcome(None)
        return
    _run_workers(_assign(todo, workers, split), config, state_dir, robots_cache, plan, progress, meanwhile)


def _progress_adapter(progress: ProgressCallback) -> Callable[[Outcome | None], None]:
    """Batches per-outcome calls into a few progress calls a second; call with None to flush."""
    counts = [0, 0]
    last = [time.monotonic()]

    def on_outcome(outcome: Outcome | None) -> None:
        if outcome is not None:
            counts[outcome.reason is not None] += 1
        now = time.monotonic()
        if outcome is None or now - last[0] >= PROGRESS_EVERY_S:
            if counts != [0, 0]:
                progress(counts[0], counts[1])
            counts[:] = [0, 0]
            last[0] = now

    return on_outcome


def _assign(todo: list[tuple[int, UrlRecord]], workers: int, split: int) -> list[list[tuple[int, UrlRecord]]]:
    """Rows per worker: a host goes to `split` consecutive workers from a stable hash of its name."""
    by_host: dict[str, list[tuple[int, UrlRecord]]] = defaultdict(list)
    for item in todo:
        try:
            by_host[host_key(parse_url(item[1].url))].append(item)
        except FetchFailure:
            by_host[""].append(item)  # rejected as invalid_url by whichever worker gets it
    shares: list[list[tuple[int, UrlRecord]]] = [[] for _ in range(workers)]
    for host, items in by_host.items():
        first = zlib.crc32(host.encode()) % workers
        for j, item in enumerate(items):
            shares[(first + j % split) % workers].append(item)
    return [share for share in shares if share]


async def crawl_items(items: list[tuple[int, UrlRecord]], config: CrawlConfig, state_dir: str,
                      robots_cache: RobotsCache, plan: _WorkerPlan, writer_id: str,
                      on_outcome: Callable[[Outcome], None] | None = None) -> None:
    """Fetch `items` in one event loop, saving every outcome to the state folder."""
    writer = SegmentWriter(state_dir, writer_id, config.state_flush_rows, config.state_flush_s)

    def record(outcome: Outcome) -> None:
        writer.add(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    queues: dict[str, deque[tuple[int, URL]]] = defaultdict(deque)
    for index, url_record in items:
        try:
            url = parse_url(url_record.url)
        except FetchFailure as failure:
            record(Outcome(index, failure.reason, failure.detail))
            continue
        queues[host_key(url)].append((index, url))

    try:
        async with Fetcher(config, robots_cache, plan.concurrency, plan.per_host_concurrency, plan.delay_scale,
                           plan.host_leases) as fetcher:

            async def lane(host_queue: deque[tuple[int, URL]]) -> None:
                while host_queue:
                    index, url = host_queue.popleft()
                    record(await fetch_image(fetcher, index, url, config))

            lanes = [
                lane(host_queue)
                for host_queue in queues.values()
                for _ in range(min(plan.per_host_concurrency, len(host_queue)))
            ]
            await asyncio.gather(*lanes)
    except BaseException:
        writer.close(raise_errors=False)  # what was fetched is kept for the rerun; the first error is the one raised
        raise
    writer.close()


async def fetch_image(fetcher: Fetcher, index: int, url: URL, config: CrawlConfig) -> Outcome:
    try:
        response = await fetcher.get(url, max_bytes=config.max_bytes, accept=IMAGE_ACCEPT, check_opt_out=True)
        info = inspect_image(response.body, config.image_formats, config.max_pixels)
    except (FetchFailure, ImageCheckError) as failure:
        return Outcome(index, failure.reason, failure.detail)
    except HostLeaseError:
        raise  # the run's lease server is gone: the chunk fails (and is retried), its URLs are not rejected
    except Exception as exc:  # hostile input must not stop the chunk; the reject keeps what happened
        log.warning("crawl: unexpected error on %s", url, exc_info=True)
        return Outcome(index, "internal_error", f"{type(exc).__name__}: {exc}")
    body = response.body
    robots_tag = ", ".join(response.headers.getall("X-Robots-Tag", [])) or None
    return Outcome(index, None, "", body, hashlib.sha256(body).hexdigest(), info.mime, info.width, info.height,
                   response.fetched_at, response.status, robots_tag)


def _worker_main(worker_id: int, items: list[tuple[int, UrlRecord]], config_json: str, state_dir: str,
                 robots_cache: RobotsCache, plan: _WorkerPlan, messages: multiprocessing.Queue) -> None:
    config = CrawlConfig.model_validate_json(config_json)
    on_outcome = _progress_adapter(lambda ok, rejected: messages.put(("progress", ok, rejected)))
    asyncio.run(crawl_items(items, config, state_dir, robots_cache, plan, f"w{worker_id}", on_outcome))
    on_outcome(None)
    messages.put(("done", worker_id, robots_cache))


def _worker_context() -> multiprocessing.context.BaseContext:
    """fork when no other thread could hold a lock the child inherits (fast: no interpreter start, no
    imports); else forkserver (spawn would import everything for every worker)."""
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "pandas"])  # pandas: see _run_workers
    return context


def _run_workers(shares: list[list[tuple[int, UrlRecord]]], config: CrawlConfig, state_dir: str,
                 robots_cache: RobotsCache, plan: _WorkerPlan, progress: ProgressCallback | None,
                 meanwhile: Callable[[], None]) -> None:
    # pyarrow imports pandas on its first array from Python objects (~0.5 s of CPU, in each worker's segment
    # writer while its loop fetches); done here, forked workers inherit it.
    pa.array([0])
    context = _worker_context()
    messages = context.Queue()
    processes = [
        context.Process(
            target=_worker_main, name=f"crawl-worker-{i}", daemon=True,
            args=(i, share, config.model_dump_json(), state_dir, robots_cache, plan, messages),
        )
        for i, share in enumerate(shares)
    ]
    for process in processes:
        process.start()
    finished: set[int] = set()
    try:
        meanwhile()
        while len(finished) < len(processes):
            try:
                message = messages.get(timeout=0.5)
            except queue_module.Empty:
                dead = [p for p in processes if not p.is_alive() and p.exitcode != 0]
                if dead:
                    raise RuntimeError(
                        f"crawl worker {dead[0].name} exited with status {dead[0].exitcode}; "
                        "finished rows are saved, rerun to resume"
                    )
                continue
            if message[0] == "progress" and progress is not None:
                progress(message[1], message[2])
            elif message[0] == "done":
                finished.add(message[1])
                robots_cache.update(message[2])
    finally:
        for i, process in enumerate(processes):
            if i not in finished and process.is_alive():
                process.terminate()
            process.join()
