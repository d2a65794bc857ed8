"""The standalone detect job behind `gadms detect`: every input file is one shard, processed and written whole.

(The build flow calls `detect_persons` and `DedupIndex.deduplicate` per chunk itself; this module is the same
two calls over files, each file a storage.jobs unit: resume, clean-up of a failed shard and a run record.)
"""
from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from curation.dedup import DedupConfig, DedupIndex, in_source_order
from curation.detect.config import DetectConfig
from curation.detect.parquet_io import count_rows, crops_table, download_files, iter_downloads, open_downloads
from curation.detect.pipeline import PersonDetector, detect_persons
from storage.fs import join
from storage.jobs import StageRun, Unit, pending, run_unit
from storage.layout import OutputLayout


class DetectJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    detect: DetectConfig = Field(default_factory=dict, validate_default=True)  # `weights` has no default
    dedup: DedupConfig = Field(default_factory=DedupConfig)


def crops_path(out: str, shard_id: str) -> str:
    return join(out, "crops", f"{shard_id}.parquet")


def run_detect_job(
    downloads: str, out: str, config: DetectJobConfig, run_id: str | None = None, progress: bool = False
) -> dict:
    """Detect, crop and dedup every input file not done yet; returns the run record's summary and run id."""
    from tqdm import tqdm

    run = StageRun.start(out, "detect", run_id)
    layout = OutputLayout(out)
    # A shard is done when its crops and (written last) rejects files are whole (storage.jobs).
    units = {Unit(f.stem, (crops_path(out, f.stem), layout.rejects_path(f.stem))): f for f in download_files(downloads)}
    todo = pending(units)
    counts = {"images": 0, "kept": 0, "rejects": 0, "shards_done": 0, "shards_skipped": len(units) - len(todo)}
    timings = {"detect_s": 0.0, "dedup_s": 0.0}
    for unit in todo:  # every input checked before the detector loads and the first shard is detected
        open_downloads(units[unit])
    if todo:
        detector = PersonDetector(config.detect)
        index = DedupIndex.open(layout.dedup_dir, radius=config.dedup.radius) if config.dedup.enabled else None
        with tqdm(total=sum(count_rows(units[u]) for u in todo), unit="img", desc="detect",
                  disable=not progress) as bar:
            for unit in todo:
                shard_counts = run_unit(unit, lambda u: _run_shard(units[u], u, run, detector, index, bar, timings))
                for key, value in shard_counts.items():
                    counts[key] += value
                counts["shards_done"] += 1
    summary = {"counts": counts, "timings": {k: round(v, 3) for k, v in timings.items()}}
    run.save_record({**config.model_dump(mode="json"), "rules_used": config.detect.rules_used()}, summary)
    return {**summary, "run_id": run.run_id}


def _run_shard(
    path: Path, unit: Unit, run: StageRun, detector: PersonDetector, index: DedupIndex | None, bar, timings: dict,
) -> dict:
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
        crops, duplicate_rejects = index.deduplicate(crops, unit.id)
        rejects += duplicate_rejects
        timings["dedup_s"] += time.perf_counter() - started
    crops_file, rejects_file = unit.outputs
    run.write(crops_table(crops), crops_file)
    run.write_rejects(rejects, rejects_file, unit.id)
    return {"images": images, "kept": len(crops), "rejects": len(rejects)}
