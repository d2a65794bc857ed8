"""The caption job behind `gadms caption`: filter and caption the person crops of one Parquet file.

One storage.jobs unit, `captions`, that every run redoes (another backend or --limit gives other captions): the
request cache is its resumable state, so a rerun sends only the requests not answered before.

    <out>/captions.parquet   storage.schema.CAPTIONS_SCHEMA
    <out>/rejects.parquet    REJECT_SCHEMA (written last)
    <out>/runs/<run_id>.json the run record
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from curation.caption.config import CaptionConfig
from curation.caption.pipeline import caption_crops
from curation.detect.parquet_io import crop_from_row
from storage.errors import GadmsError
from storage.jobs import StageRun, Unit, run_unit
from storage.records import Reject
from storage.schema import CAPTIONS_SCHEMA

CROP_BATCH = 512  # crops read, captioned and written per step; bounds memory on big files


def open_crops(path: str) -> pq.ParquetFile:
    """The crops file, its sample_id and image columns checked (`check_crops`) before any crop is captioned."""
    try:
        crops_file = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise GadmsError(f"{path}: cannot read Parquet: {exc}") from None
    check_crops(path, crops_file)
    return crops_file


def run_caption_job(crops_path: str, crops_file: pq.ParquetFile, out: Path, config: CaptionConfig,
                    cache_dir: str | Path | None = None, limit: int | None = None) -> tuple[int, int, list[Reject]]:
    """Caption the first `limit` crops (all without) of an opened crops file (open_crops) into `out`; save the run
    record. Returns (crops read, crops captioned, rejects)."""
    rows = crops_file.metadata.num_rows
    total = rows if limit is None else min(limit, rows)
    run = StageRun.start(str(out), "caption")
    unit = Unit("captions", (str(out / "captions.parquet"), str(out / "rejects.parquet")), is_done=lambda _: False)

    def caption(unit: Unit) -> tuple[int, list[Reject]]:
        caption_rows: list[dict] = []
        reject_rows: list[Reject] = []
        done = 0
        with tqdm(total=total, unit="crop", desc=f"caption ({config.backend})") as bar:
            for batch in crops_file.iter_batches(batch_size=CROP_BATCH):
                crops = [crop_from_row(row) for row in batch.to_pylist()][: total - done]
                if not crops:
                    break
                captions, rejects = caption_crops(crops, config, cache_dir or out / "cache", progress=bar.update)
                caption_rows += [vars(c) for c in captions]
                reject_rows += rejects
                done += len(crops)
        captions_file, rejects_file = unit.outputs
        run.write(pa.Table.from_pylist(caption_rows, schema=CAPTIONS_SCHEMA), captions_file)
        run.write_rejects(reject_rows, rejects_file, None)
        return len(caption_rows), reject_rows

    captioned, rejects = run_unit(unit, caption)
    run.save_record({**config.model_dump(mode="json"), "crops": str(crops_path), "limit": limit},
                    {"counts": {"crops": total, "captioned": captioned, "rejects": len(rejects)}})
    return total, captioned, rejects


def check_crops(path: str, crops_file) -> None:
    """The columns captions are keyed and made from, checked before any crop is captioned (not at the final write):
    sample_id strings, present and unique; image bytes, present."""
    schema = crops_file.schema_arrow
    missing = {"sample_id", "image"} - set(schema.names)
    if missing:
        raise GadmsError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    for name, expected, types in (("sample_id", "string", (pa.string(), pa.large_string())),
                                  ("image", "binary", (pa.binary(), pa.large_binary()))):
        if schema.field(name).type not in types:
            raise GadmsError(f"{path}: column {name!r} is {schema.field(name).type}, expected {expected}")
    ids = crops_file.read(columns=["sample_id"]).column("sample_id")
    if ids.null_count:
        raise GadmsError(f"{path}: row {pc.index(pc.is_null(ids), True).as_py()}: sample_id is NULL")
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        raise GadmsError(f"{path}: sample_id {repeated[0]['values'].as_py()!r} appears "
                         f"{repeated[0]['counts'].as_py()} times")
    # One more read of the image column: cheap next to captioning, and a NULL found mid-run would lose the run.
    row = 0
    for batch in crops_file.iter_batches(columns=["image"]):
        if batch.column(0).null_count:
            raise GadmsError(f"{path}: row {row + pc.index(pc.is_null(batch.column(0)), True).as_py()}: image is NULL")
        row += batch.num_rows

