"""build-webperson: URL lists / seed pages → crawl → detect + pose → dedup → caption → shards → catalog.

Orchestration only: every stage is plain Python in curation/ and storage/; this module runs one chunk (= one
shard) per Prefect task run, with retries, on the configured task runner (what Prefect tracks grows with the
chunks, not with chunks × stages; each task's result is its ChunkReport with the stages' wall seconds), runs each
chunk as a storage.jobs unit (skipped when its manifest says it is complete; its crawl state kept for rebuilds),
serves the run's per-host leases (curation.crawl.hostleases), refreshes the DuckDB catalog and publishes the run's
artifacts.
"""
from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.futures import as_completed
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from curation.caption import caption_crops
from curation.chunks import Chunk, ListSource, chunk_rows, chunk_urls, plan_chunks
from curation.crawl import crawl_chunk, discover_images
from curation.crawl.hostleases import HostLeaseServer
from curation.crawl.reasons import parse_retry_reasons, reason_selected
from curation.crawl.urllist import write_url_records
from curation.dedup import DedupIndex, in_source_order
from curation.dedup.benchmark import seed_benchmark
from curation.dedup.takedown import drop_taken_down
from curation.detect import PersonDetector, detect_persons
from flows.artifacts import publish_build_artifacts
from flows.config import BuildConfig, RunnerConfig, resolve_build_config
from flows.locks import output_root_lock
from storage.catalog import refresh
from storage.errors import GadmsError, error_line
from storage.fs import exists, join
from storage.jobs import StageRun, Unit, run_unit, shard_unit, state_dir
from storage.layout import OutputLayout
from storage.records import Reject
from storage.reject_thumbnails import reject_thumbnails_table
from storage.shards import commit_shard, json_files, read_parquet, supersede_rejects
from storage.takedown import TakedownList, effective_takedown_list
from storage.takedown_shards import complete_pending_rewrites

DEFAULT_CONFIG = "flows/configs/webperson.yaml"
SEED_LIST = "seed-pages.jsonl"  # in the work dir: the images the seed pages show, planned like any URL list
WHOLE_LIST = 2**31  # rows per chunk when a retry list is planned: one chunk each, whatever shard_size says
CRAWL_STAGE = "crawl"


@dataclass
class ChunkReport:
    shard_id: str
    skipped: bool = False
    urls: int = 0
    downloaded: int = 0
    persons: int = 0
    unique: int = 0
    rows: int = 0
    reject_thumbnail_bytes: int = 0
    retried: int = 0  # URLs refetched by --retry-failed
    superseded: int = 0  # their earlier reject rows, dropped from the shard that held them
    rejects: dict[str, int] = field(default_factory=dict)  # "stage/reason" → count
    seconds: dict[str, float] = field(default_factory=dict)  # stage → wall seconds


# lru_cache alone is not enough: two chunk threads missing the cache at once would each build one (two detectors
# taking turns on separate locks, twice the memory).
_PER_PROCESS_LOCK = threading.Lock()


def _detector(detect_config_json: str) -> PersonDetector:
    """One loaded detector per worker process and detect config (loading YOLO weights costs ~1 s), shared by the
    task runner's threads: PersonDetector is thread-safe."""
    with _PER_PROCESS_LOCK:
        return _load_detector(detect_config_json)


@lru_cache(maxsize=2)
def _load_detector(detect_config_json: str) -> PersonDetector:
    from curation.detect import DetectConfig

    return PersonDetector(DetectConfig.model_validate_json(detect_config_json))


def _dedup_index(directory: str, radius: int) -> DedupIndex:
    """One index per worker process: it then loads only the rows other workers added since its last look."""
    with _PER_PROCESS_LOCK:
        return _open_dedup_index(directory, radius)


@lru_cache(maxsize=4)
def _open_dedup_index(directory: str, radius: int) -> DedupIndex:
    return DedupIndex.open(directory, radius=radius)


@task(name="plan-chunks", cache_policy=NO_CACHE)
def plan_stage(cfg: BuildConfig) -> list[Chunk]:
    crawl = cfg.crawl
    sources = [ListSource(path, crawl.url_column, crawl.caption_column, tuple(crawl.extra_columns))
               for path in cfg.inputs.url_lists]
    if cfg.inputs.seed_pages:
        discovered = discover_images(cfg.inputs.seed_pages, cfg.crawl)
        if discovered:
            seed_list = join(cfg.state_layout.work_dir, SEED_LIST)
            write_url_records(discovered, seed_list)
            sources.append(ListSource(seed_list))
    return list(plan_chunks(sources, cfg.shard_size, cfg.inputs.limit))


@task(name="plan-retry-lists", cache_policy=NO_CACHE)
def plan_retry_lists(cfg: BuildConfig) -> list[Chunk]:
    """The retry shards of earlier --retry-failed runs, as chunks: a URL that failed again is retried from there."""
    lists = json_files(OutputLayout(cfg.output_root).retries_dir, suffix=".jsonl")
    return [chunk for path in lists for chunk in plan_chunks([_retry_source(path, cfg)], WHOLE_LIST)]


@task(name="seed-benchmark-guard", cache_policy=NO_CACHE)
def benchmark_guard_stage(cfg: BuildConfig) -> list[dict]:
    """Seed the dedup index with the configured benchmarks' val and test images (skipped when seeded before from
    the same annotation file)."""
    index = _dedup_index(cfg.state_layout.dedup_dir, cfg.dedup.radius)
    return [vars(seed_benchmark(index, guard.dataset, guard.root)) for guard in cfg.benchmark_guard]


def _crawl(chunk: Chunk, cfg: BuildConfig, host_leases: str | None, takedown: TakedownList):
    """(rows of the chunk, their crawl result): the chunk's rows are read here, where it runs; a repeated URL's
    later rows become duplicate_url rejects there."""
    urls = chunk_rows(chunk)
    return len(urls), crawl_chunk(urls, cfg.crawl, _unit(chunk, cfg).state_dir, host_leases=host_leases,
                                  takedown=takedown)


def _unit(chunk: Chunk, cfg: BuildConfig) -> Unit:
    """The chunk's shard as a storage.jobs unit, its crawl state in <work_dir>/crawl/<shard_id>, kept when the shard
    is done: a rebuild of the chunk (its manifest entry deleted, e.g. after a takedown) replays that crawl."""
    return shard_unit(OutputLayout(cfg.output_root), chunk.shard_id,
                      state_dir(cfg.state_layout.work_dir, "crawl", chunk.shard_id), keep_state=True)


@task(name="process-chunk", cache_policy=NO_CACHE)
def process_chunk(chunk: Chunk, cfg: BuildConfig, run_id: str, takedown: TakedownList, host_leases: str | None = None,
                  retry_reasons: tuple[str, ...] = (), retry_list: bool = False) -> ChunkReport:
    """One task run per chunk: all its stages, their wall seconds in the report (the task's result).

    A complete shard is skipped, or with `retry_reasons` its crawl rejects of those reasons are refetched into a
    retry shard. `retry_list`: the chunk is an earlier retry's list, which only its source shard's task may
    (re)process, so here it is only a source of rejects to retry.
    """
    unit = _unit(chunk, cfg)
    skipped = ChunkReport(shard_id=chunk.shard_id, skipped=True)
    if retry_list and not unit.done():
        return skipped
    return run_unit(unit, lambda _: _process(chunk, cfg, run_id, host_leases, takedown), on_done=lambda _: (
        _retry_failed(chunk, cfg, run_id, host_leases, takedown, retry_reasons) if retry_reasons else skipped))


def _process(chunk: Chunk, cfg: BuildConfig, run_id: str, host_leases: str | None,
             takedown: TakedownList) -> ChunkReport:
    report = ChunkReport(shard_id=chunk.shard_id)
    rejects: list[Reject] = []

    def timed(stage: str, call):
        start = time.perf_counter()
        result = call()
        report.seconds[stage] = report.seconds.get(stage, 0.0) + time.perf_counter() - start
        return result

    report.urls, crawled = timed("crawl", lambda: _crawl(chunk, cfg, host_leases, takedown))
    rejects += crawled.rejects
    report.downloaded = len(crawled.downloads)
    crops, detect_rejects = timed("detect", lambda: detect_persons(
        crawled.downloads, _detector(cfg.detect.model_dump_json())))
    rejects += detect_rejects
    report.persons = len(crops)
    unlisted, takedown_rejects = drop_taken_down(in_source_order(crops), takedown, cfg.dedup.radius)
    rejects += takedown_rejects
    if cfg.dedup.enabled:
        index = _dedup_index(cfg.state_layout.dedup_dir, cfg.dedup.radius)
        kept, dedup_rejects = timed("dedup", lambda: index.deduplicate(unlisted, chunk.shard_id))
    else:
        kept, dedup_rejects = unlisted, []
    rejects += dedup_rejects
    report.unique = len(kept)
    cache_dir = join(cfg.state_layout.work_dir, "caption-cache")
    captions, caption_rejects = timed("caption", lambda: caption_crops(kept, cfg.caption, cache_dir))
    rejects += caption_rejects
    budget = cfg.reject_thumbnails
    thumbnails = timed("thumbnails", lambda: reject_thumbnails_table(
        rejects, crawled.downloads, crops, chunk.shard_id, budget.per_reason_per_shard, budget.max_side))
    entry = timed("write", lambda: commit_shard(
        OutputLayout(cfg.output_root), chunk.shard_id, run_id, kept, captions, rejects, thumbnails))
    report.rows = entry["rows"]
    report.reject_thumbnail_bytes = sum(len(b) for b in thumbnails.column("image").to_pylist())
    report.rejects = dict(Counter(f"{r.stage}/{r.reason}" for r in rejects))
    return report


def _retry_failed(chunk: Chunk, cfg: BuildConfig, run_id: str, host_leases: str | None, takedown: TakedownList,
                  reasons: tuple[str, ...]) -> ChunkReport:
    """Refetch the URLs of a complete shard whose crawl reject has one of `reasons`, through every stage, into a
    retry shard; then drop those rejects from the shard (storage.shards.supersede_rejects).

    The retry shard's rows are a list file `retries/<shard>-retry-<digest of the URLs>.jsonl`: the same failures
    give the same file and so the same shard id, so a rerun after a kill between the two steps finds the retry
    shard complete and only supersedes. A later retry run plans these lists too, so a URL that failed again is
    retried from its retry shard: each URL's one current outcome is always in one place."""
    layout = OutputLayout(cfg.output_root)
    rejects = read_parquet(layout.rejects_path(chunk.shard_id))
    # Exactly the failed rows are superseded, whatever other rows the same URL has.
    superseded = {(stage, url, reason) for stage, url, reason in zip(
        *(rejects.column(c).to_pylist() for c in ("stage", "url", "reason")))
        if stage == CRAWL_STAGE and url and reason_selected(reason, reasons)}
    failed = {url for _, url, _ in superseded}
    if not failed:
        return ChunkReport(shard_id=chunk.shard_id, skipped=True)
    records = [r for r in chunk_urls(chunk) if r.url in failed]
    if not records:
        return ChunkReport(shard_id=chunk.shard_id, skipped=True)
    digest = hashlib.sha256("\n".join(sorted(failed)).encode()).hexdigest()[:16]
    retry_path = join(layout.retries_dir, f"{chunk.shard_id}-retry-{digest}.jsonl")
    if not exists(retry_path):
        write_url_records(records, retry_path)
    retry_chunk, = plan_chunks([_retry_source(retry_path, cfg)], WHOLE_LIST)
    report = run_unit(_unit(retry_chunk, cfg), lambda _: _process(retry_chunk, cfg, run_id, host_leases, takedown),
                      on_done=lambda _: ChunkReport(shard_id=retry_chunk.shard_id, skipped=True))
    report.retried = len(records)
    report.superseded = supersede_rejects(layout, chunk.shard_id, superseded)
    return report


def _retry_source(path: str, cfg: BuildConfig) -> ListSource:
    return ListSource(path, "url", "caption", tuple(cfg.crawl.extra_columns))


def _worth_retrying(task, task_run, state) -> bool:
    """A chunk failed: retry it, unless the user must fix its input first (a retry would fail the same way)."""
    return not isinstance(state.data, GadmsError)


@contextmanager
def _host_leases(cfg: BuildConfig) -> Iterator[str | None]:
    """The run's host lease server's address, when chunks crawl at once; one chunk at a time keeps the per-host
    limits within itself (its worker processes split a host only when that keeps them exact), for free."""
    if cfg.runner.kind == "local" and cfg.runner.max_workers == 1:
        yield None
        return
    with HostLeaseServer(cfg.crawl.per_host_concurrency, cfg.crawl.per_host_min_delay_s,
                         cfg.runner.host_lease_address) as server:
        yield server.address


def make_task_runner(runner: RunnerConfig):
    if runner.kind == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=runner.ray_address)
    return _ChunkThreadPool(max_workers=runner.max_workers)


class _ChunkThreadPool(ThreadPoolTaskRunner):
    """Prefect's thread pool, except that Ctrl-C leaves without waiting for the running chunks to finish (minutes):
    the flow run is then recorded as crashed at once, and `gadms build` ends without those threads."""

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if exc_type is KeyboardInterrupt and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        super().__exit__(exc_type, exc_value, traceback)


def summarize(reports: list[ChunkReport], seconds: float) -> dict:
    rejects: Counter = Counter()
    stage_seconds: Counter = Counter()
    for r in reports:
        rejects.update(r.rejects)
        stage_seconds.update(r.seconds)
    processed = [r for r in reports if not r.skipped]
    downloaded = sum(r.downloaded for r in processed)
    return {
        "chunks": len(reports),
        "chunks_skipped": len(reports) - len(processed),
        "urls": sum(r.urls for r in processed),
        "downloaded": downloaded,
        "persons": sum(r.persons for r in processed),
        "unique": sum(r.unique for r in processed),
        "kept": sum(r.rows for r in processed),
        "reject_thumbnail_bytes": sum(r.reject_thumbnail_bytes for r in processed),
        "retried": sum(r.retried for r in reports),  # URLs refetched by --retry-failed
        "superseded": sum(r.superseded for r in reports),
        "rejects": dict(sorted(rejects.items())),
        "stage_seconds": {k: round(v, 3) for k, v in stage_seconds.items()},
        "seconds": round(seconds, 3),
        "images_per_second": round(downloaded / seconds, 2) if seconds > 0 else 0.0,
    }


def _run_id() -> str:
    context = get_run_context()
    flow_run = getattr(context, "flow_run", None)
    return str(flow_run.id) if flow_run is not None else uuid.uuid4().hex


@flow(name="build-webperson", log_prints=True)
def build_webperson(config: str | dict = DEFAULT_CONFIG, retry_failed: str | None = None) -> dict:
    """Build or incrementally rebuild a WebPerson output root from one config (a YAML path or its fields).

    `retry_failed` (e.g. "timeout,connect_error,http_5xx,http_429") also refetches the URLs of complete shards
    whose crawl reject has one of those reasons. A GadmsError anywhere in the run fails it with the error's one
    line as the run's state message, and calling the flow raises that GadmsError.
    """
    try:
        reasons = parse_retry_reasons(retry_failed) if retry_failed is not None else ()
        return _build(resolve_build_config(config), reasons)
    except GadmsError as exc:
        # Returned, not raised: Prefect logs a raised exception with its traceback and sets "Flow run encountered
        # an exception" as the message; a Failed state made here keeps our line, and the call still raises `exc`.
        return Failed(message=error_line("build", exc), data=exc)


def _build(cfg: BuildConfig, retry_reasons: tuple[str, ...]) -> dict:
    logger = get_run_logger()
    run = StageRun.start(cfg.output_root, "build-webperson", _run_id())
    run_id = run.run_id
    clock = time.perf_counter()
    with output_root_lock(cfg.output_root):
        chunks = plan_stage(cfg)
        logger.info("%d input rows in %d chunks of up to %d", sum(c.rows.stop - c.rows.start for c in chunks),
                    len(chunks), cfg.shard_size)
        # A takedown killed after its commit point is finished first; its lists and the config's are applied to
        # every chunk, so a rebuild never brings a removed sample back.
        complete_pending_rewrites(cfg.output_root)
        takedown = effective_takedown_list(cfg.output_root, [cfg.takedown_list] if cfg.takedown_list else [])
        benchmarks = benchmark_guard_stage(cfg) if cfg.benchmark_guard else []
        submissions = [(c, False) for c in chunks]
        if retry_reasons:
            submissions += [(c, True) for c in plan_retry_lists(cfg)]
        # Retries rerun the whole chunk: its crawl resumes from its state, dedup and the write are idempotent per
        # shard, captions come from the request cache; only detection is recomputed.
        process = process_chunk.with_options(retries=cfg.retries, retry_delay_seconds=cfg.retry_delay_seconds,
                                             retry_condition_fn=_worth_retrying)
        reports = []
        with _host_leases(cfg) as host_leases, make_task_runner(cfg.runner) as runner:
            futures = [runner.submit(process, {"chunk": c, "cfg": cfg, "run_id": run_id, "takedown": takedown,
                                               "host_leases": host_leases, "retry_reasons": retry_reasons,
                                               "retry_list": retry_list})
                       for c, retry_list in submissions]
            # The bar shows on a terminal (`gadms build`); workers' logs get the per-chunk lines.
            with tqdm(total=len(futures), unit="chunk", desc="build-webperson", disable=None) as bar:
                for done, future in enumerate(as_completed(futures), start=1):
                    report = future.result()
                    reports.append(report)
                    state = "skipped (complete)" if report.skipped else (
                        f"{report.downloaded} downloaded, {report.persons} persons, {report.rows} kept ("
                        + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in report.seconds.items()) + ")")
                    if report.retried:
                        state += f"; {report.retried} failed URLs retried"
                    logger.info("chunk %d/%d %s: %s", done, len(futures), report.shard_id, state)
                    bar.update()
                    bar.set_postfix(kept=sum(r.rows for r in reports))
        reports.sort(key=lambda r: r.shard_id)
        summary = summarize(reports, time.perf_counter() - clock)
        summary["retry_failed"] = list(retry_reasons)
        summary["takedown_entries"] = len(takedown)
        summary["benchmark_guard"] = benchmarks
        run.save_record(cfg.model_dump(mode="json"), summary, status="Completed")
        # Sizes and row counts only: this run hashed its shards as it wrote them, and hashing every earlier shard
        # on each incremental build would read the whole dataset; `gadms catalog refresh` checks every sha256.
        catalog = refresh(cfg.output_root, cfg.catalog_path, cfg.duckdb_settings, check_sha256=False)
        summary["catalog"] = catalog
        publish_build_artifacts(summary, catalog, Path(catalog).parent / "reports" / run_id)
    logger.info("kept %d samples in %d new shards; catalog %s", summary["kept"],
                summary["chunks"] - summary["chunks_skipped"], catalog)
    return summary
