"""build-webperson: URL lists / seed pages → crawl → detect + pose → dedup → caption → shards → catalog.

Orchestration only: every stage is plain Python in curation/ and storage/; this module makes them Prefect tasks
with retries, runs one chunk (= one shard) per task on the configured task runner, skips chunks whose manifest
says they are complete, refreshes the DuckDB catalog and publishes the run's artifacts.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.futures import as_completed
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from curation.caption import caption_crops
from curation.chunks import Chunk, ListSource, chunk_urls, plan_chunks
from curation.crawl import crawl_chunk, discover_images
from curation.crawl.urllist import write_url_records
from curation.dedup import DedupIndex
from curation.dedup.benchmark import seed_benchmark
from curation.dedup.takedown import drop_taken_down
from curation.detect import PersonDetector, detect_persons
from flows.artifacts import publish_build_artifacts
from flows.config import BuildConfig, RunnerConfig, resolve_build_config
from flows.locks import output_root_lock
from storage.catalog import refresh, write_run_record
from storage.errors import GadmsError, error_line
from storage.fs import join
from storage.layout import OutputLayout
from storage.records import Reject
from storage.reject_thumbnails import reject_thumbnails_table
from storage.shards import commit_shard, shard_is_complete
from storage.takedown import TakedownList, effective_takedown_list
from storage.takedown_shards import complete_pending_rewrites

DEFAULT_CONFIG = "flows/configs/webperson.yaml"
SEED_LIST = "seed-pages.jsonl"  # in the work dir: the images the seed pages show, planned like any URL list


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
    rejects: dict[str, int] = field(default_factory=dict)  # "stage/reason" → count
    seconds: dict[str, float] = field(default_factory=dict)  # stage → wall seconds


@lru_cache(maxsize=2)
def _detector(detect_config_json: str) -> PersonDetector:
    """One loaded detector per worker process and detect config (loading YOLO weights costs ~1 s), shared by the
    task runner's threads: PersonDetector is thread-safe."""
    from curation.detect import DetectConfig

    return PersonDetector(DetectConfig.model_validate_json(detect_config_json))


@lru_cache(maxsize=4)
def _dedup_index(directory: str, radius: int) -> DedupIndex:
    """One index per worker process: it then loads only the rows other workers added since its last look."""
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


@task(name="crawl", cache_policy=NO_CACHE)
def crawl_stage(chunk: Chunk, cfg: BuildConfig, takedown: TakedownList):
    """(URLs of the chunk, their crawl result): the chunk's rows are read here, where it runs."""
    urls = chunk_urls(chunk)
    state_dir = join(cfg.state_layout.work_dir, "crawl", chunk.shard_id)
    return len(urls), crawl_chunk(urls, cfg.crawl, state_dir, takedown=takedown)


@task(name="detect", cache_policy=NO_CACHE)
def detect_stage(downloads: list, cfg: BuildConfig):
    return detect_persons(downloads, _detector(cfg.detect.model_dump_json()))


@task(name="dedup", cache_policy=NO_CACHE)
def dedup_stage(crops: list, shard_id: str, cfg: BuildConfig, takedown: TakedownList):
    crops, rejects = drop_taken_down(crops, takedown, cfg.dedup.radius)
    if not cfg.dedup.enabled:
        return crops, rejects
    kept, dedup_rejects = _dedup_index(cfg.state_layout.dedup_dir, cfg.dedup.radius).deduplicate(crops, shard_id)
    return kept, rejects + dedup_rejects


@task(name="seed-benchmark-guard", cache_policy=NO_CACHE)
def benchmark_guard_stage(cfg: BuildConfig) -> list[dict]:
    """Seed the dedup index with the configured benchmarks' val and test images (skipped when seeded before from
    the same annotation file)."""
    index = _dedup_index(cfg.state_layout.dedup_dir, cfg.dedup.radius)
    return [vars(seed_benchmark(index, guard.dataset, guard.root)) for guard in cfg.benchmark_guard]


@task(name="caption", cache_policy=NO_CACHE)
def caption_stage(crops: list, cfg: BuildConfig):
    cache_dir = join(cfg.state_layout.work_dir, "caption-cache")
    return caption_crops(crops, cfg.caption, cache_dir)


@task(name="write-shard", cache_policy=NO_CACHE)
def write_stage(shard_id: str, run_id: str, crops: list, captions: list, rejects: list[Reject], thumbnails,
                cfg: BuildConfig) -> dict:
    return commit_shard(OutputLayout(cfg.output_root), shard_id, run_id, crops, captions, rejects, thumbnails)


@task(name="process-chunk", cache_policy=NO_CACHE)
def process_chunk(chunk: Chunk, cfg: BuildConfig, run_id: str, takedown: TakedownList) -> ChunkReport:
    layout = OutputLayout(cfg.output_root)
    report = ChunkReport(shard_id=chunk.shard_id)
    if shard_is_complete(layout.manifest_path(chunk.shard_id), layout.shard_path(chunk.shard_id)):
        report.skipped = True
        return report
    retry = {"retries": cfg.retries, "retry_delay_seconds": cfg.retry_delay_seconds,
             "retry_condition_fn": _worth_retrying}
    rejects: list[Reject] = []

    def timed(stage: str, call):
        start = time.perf_counter()
        result = call()
        report.seconds[stage] = report.seconds.get(stage, 0.0) + time.perf_counter() - start
        return result

    report.urls, crawled = timed("crawl", lambda: crawl_stage.with_options(**retry)(chunk, cfg, takedown))
    rejects += crawled.rejects
    report.downloaded = len(crawled.downloads)
    crops, detect_rejects = timed("detect", lambda: detect_stage(crawled.downloads, cfg))
    rejects += detect_rejects
    report.persons = len(crops)
    kept, dedup_rejects = timed("dedup", lambda: dedup_stage.with_options(**retry)(
        crops, chunk.shard_id, cfg, takedown))
    rejects += dedup_rejects
    report.unique = len(kept)
    captions, caption_rejects = timed("caption", lambda: caption_stage.with_options(**retry)(kept, cfg))
    rejects += caption_rejects
    budget = cfg.reject_thumbnails
    thumbnails = timed("thumbnails", lambda: reject_thumbnails_table(
        rejects, crawled.downloads, crops, chunk.shard_id, budget.per_reason_per_shard, budget.max_side))
    entry = timed("write", lambda: write_stage.with_options(**retry)(
        chunk.shard_id, run_id, kept, captions, rejects, thumbnails, cfg))
    report.rows = entry["rows"]
    report.reject_thumbnail_bytes = sum(len(b) for b in thumbnails.column("image").to_pylist())
    report.rejects = dict(Counter(f"{r.stage}/{r.reason}" for r in rejects))
    return report


def _worth_retrying(task, task_run, state) -> bool:
    """A stage failed: retry it, unless the user must fix its input first (a retry would fail the same way)."""
    return not isinstance(state.data, GadmsError)


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
def build_webperson(config: str | dict = DEFAULT_CONFIG) -> dict:
    """Build or incrementally rebuild a WebPerson output root from one config (a YAML path or its fields).

    A GadmsError anywhere in the run fails it with the error's one line as the run's state message, and calling
    the flow raises that GadmsError.
    """
    try:
        return _build(resolve_build_config(config))
    except GadmsError as exc:
        # Returned, not raised: Prefect logs a raised exception with its traceback and sets "Flow run encountered
        # an exception" as the message; a Failed state made here keeps our line, and the call still raises `exc`.
        return Failed(message=error_line("build", exc), data=exc)


def _build(cfg: BuildConfig) -> dict:
    logger = get_run_logger()
    run_id = _run_id()
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    with output_root_lock(cfg.output_root):
        # A takedown killed after its commit point is finished first; its lists and the config's are applied to
        # every chunk, so a rebuild never brings a removed sample back.
        complete_pending_rewrites(cfg.output_root)
        takedown = effective_takedown_list(cfg.output_root, [cfg.takedown_list] if cfg.takedown_list else [])
        benchmarks = benchmark_guard_stage(cfg) if cfg.benchmark_guard else []
        chunks = plan_stage(cfg)
        logger.info("%d input rows in %d chunks of up to %d", sum(c.rows.stop - c.rows.start for c in chunks),
                    len(chunks), cfg.shard_size)
        reports = []
        with make_task_runner(cfg.runner) as runner:
            futures = [runner.submit(process_chunk, {"chunk": c, "cfg": cfg, "run_id": run_id, "takedown": takedown})
                       for c in chunks]
            # The bar shows on a terminal (`gadms build`); workers' logs get the per-chunk lines.
            with tqdm(total=len(chunks), unit="chunk", desc="build-webperson", disable=None) as bar:
                for done, future in enumerate(as_completed(futures), start=1):
                    report = future.result()
                    reports.append(report)
                    state = "skipped (complete)" if report.skipped else (
                        f"{report.downloaded} downloaded, {report.persons} persons, {report.rows} kept")
                    logger.info("chunk %d/%d %s: %s", done, len(chunks), report.shard_id, state)
                    bar.update()
                    bar.set_postfix(kept=sum(r.rows for r in reports))
        reports.sort(key=lambda r: r.shard_id)
        summary = summarize(reports, time.perf_counter() - clock)
        summary["takedown_entries"] = len(takedown)
        summary["benchmark_guard"] = benchmarks
        write_run_record(cfg.output_root, {
            "run_id": run_id, "flow": "build-webperson", "status": "Completed", "output_root": cfg.output_root,
            "started_at": started.isoformat(), "finished_at": datetime.now(timezone.utc).isoformat(),
            "config": cfg.model_dump(mode="json"), "summary": summary,
        })
        # Sizes and row counts only: this run hashed its shards as it wrote them, and hashing every earlier shard
        # on each incremental build would read the whole dataset; `gadms catalog refresh` checks every sha256.
        catalog = refresh(cfg.output_root, cfg.catalog_path, cfg.duckdb_settings, check_sha256=False)
        summary["catalog"] = catalog
        publish_build_artifacts(summary, catalog, Path(catalog).parent / "reports" / run_id)
    logger.info("kept %d samples in %d new shards; catalog %s", summary["kept"],
                summary["chunks"] - summary["chunks_skipped"], catalog)
    return summary
