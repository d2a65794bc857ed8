"""The standalone detect job behind `gadms detect`: every input file is one shard, processed and written whole.

(The build flow calls `detect_persons` and `DedupIndex.deduplicate` per chunk itself; this module is the same
two calls over files, with resume and a run record.)
"""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from curation.dedup import DedupConfig, DedupIndex, in_source_order
from curation.detect.config import DetectConfig
from curation.detect.parquet_io import count_rows, crops_table, download_files, iter_downloads, open_downloads
from curation.detect.pipeline import PersonDetector, detect_persons
from storage.catalog import write_run_record
from storage.fs import join
from storage.layout import OutputLayout
from storage.shards import rejects_table, write_parquet_atomic


class DetectJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    detect: DetectConfig = Field(default_factory=dict, validate_default=True)  # `weights` has no default
    dedup: DedupConfig = Field(default_factory=DedupConfig)


def crops_path(out: str, shard_id: str) -> str:
    return join(out, "crops", f"{shard_id}.parquet")


def run_detect_job(
    downloads: str, out: str, config: DetectJobConfig, run_id: str | None = None, progress: bool = False
) -> dict:
    """Detect, crop and dedup every input file not done yet; returns the run record it saved."""
    from tqdm import tqdm

    started = datetime.now(timezone.utc)
    run_id = run_id or f"detect-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    layout = OutputLayout(out)
    files = download_files(downloads)
    todo = [f for f in files if not _shard_done(layout, out, f.stem)]
    counts = {"images": 0, "kept": 0, "rejects": 0, "shards_done": 0, "shards_skipped": len(files) - len(todo)}
    timings = {"detect_s": 0.0, "dedup_s": 0.0}
    for path in todo:  # every input checked before the detector loads and the first shard is detected
        open_downloads(path)
    if todo:
        detector = PersonDetector(config.detect)
        index = DedupIndex.open(layout.dedup_dir, radius=config.dedup.radius) if config.dedup.enabled else None
        with tqdm(total=sum(count_rows(f) for f in todo), unit="img", desc="detect", disable=not progress) as bar:
            for path in todo:
                shard_counts = _run_shard(path, out, layout, detector, index, run_id, bar, timings)
                for key, value in shard_counts.items():
                    counts[key] += value
                counts["shards_done"] += 1
    record = {
        "run_id": run_id,
        "flow": "detect",
        "status": "complete",
        "output_root": str(out),
        "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "config": {**config.model_dump(mode="json"), "rules_used": config.detect.rules_used()},
        "summary": {"counts": counts, "timings": {k: round(v, 3) for k, v in timings.items()}},
    }
    write_run_record(out, record)
    return {**record["summary"], "run_id": run_id}


def _shard_done(layout: OutputLayout, out: str, shard_id: str) -> bool:
    # The rejects file is written after the crops file, so it marks a finished shard; a file cut short (its
    # Parquet footer is at the end) means the shard is redone, not "already done".
    return all(_whole_parquet(p) for p in (crops_path(out, shard_id), layout.rejects_path(shard_id)))


def _whole_parquet(path: str) -> bool:
    try:
        pq.read_metadata(path)
    except (FileNotFoundError, pa.ArrowInvalid, OSError):
        return False
    return True


def _run_shard(
    path: Path, out: str, layout: OutputLayout, detector: PersonDetector, index: DedupIndex | None, run_id: str,
    bar, timings: dict,
) -> dict:
    shard_id = path.stem
    crops, rejects, images = [], [], 0
    started = time.perf_counter()
    for downloads, rows in iter_downloads(path, batch_rows=detector.config.batch_size * 4):
        batch_crops, batch_rejects = detect_persons(downloads, detector)
        crops += batch_crops
        rejects += batch_rejects
        images += len(downloads)
        bar.update(rows)
    timings["detect_s"] += time.perf_counter() - started
    crops = in_source_order(crops)
    if index is not None:
        started = time.perf_counter()
        crops, duplicate_rejects = index.deduplicate(crops, shard_id)
        rejects += duplicate_rejects
        timings["dedup_s"] += time.perf_counter() - started
    write_parquet_atomic(crops_table(crops), crops_path(out, shard_id))
    write_parquet_atomic(rejects_table(rejects, shard_id, run_id), layout.rejects_path(shard_id))
    return {"images": images, "kept": len(crops), "rejects": len(rejects)}
