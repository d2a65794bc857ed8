"""`gadms caption`: filter and caption the person crops of a Parquet file.

    gadms caption --crops crops.parquet --out captions/ [--config caption.yaml] [--backend alt-text]

Writes <out>/captions.parquet (storage.schema.CAPTIONS_SCHEMA: sample_id, caption1, caption2, caption_model,
caption_backend, template_id, prompt_version, filter_keep, filter_reason, filter_model), <out>/rejects.parquet (the
rejects table's columns), <out>/caption_config.yaml and a run record <out>/runs/<run_id>.json (storage.jobs);
finished model requests are cached in <out>/cache (or --cache-dir), so running the command again sends nothing new.
"""
from __future__ import annotations

import argparse

CROP_BATCH = 512  # crops read, captioned and written per step; bounds memory on big files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--crops", required=True, help="Parquet file of person crops (PersonCrop columns; "
                        "sample_id and image are required)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", help="CaptionConfig YAML/JSON file")
    parser.add_argument("--backend", choices=("openai", "transformers", "alt-text"), help="overrides the config")
    parser.add_argument("--endpoint", action="append", help="OpenAI-compatible base URL, e.g. "
                        "http://127.0.0.1:8000/v1 (repeatable; overrides the config)")
    parser.add_argument("--model", action="append", help="served model name (repeatable; overrides the config)")
    parser.add_argument("--cache-dir", help="request cache folder (default: <out>/cache)")
    parser.add_argument("--limit", type=int, help="caption only the first N crops")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from curation.caption.config import CaptionConfig
    from curation.caption.pipeline import caption_crops
    from storage.configfile import dump_config, load_config, validate_config
    from curation.detect.parquet_io import crop_from_row
    from storage.errors import GadmsError, check_range
    from storage.jobs import StageRun, Unit, run_unit
    from storage.schema import CAPTIONS_SCHEMA

    overrides = {key: value for key, value in (("backend", args.backend), ("endpoints", args.endpoint),
                                               ("models", args.model)) if value}
    config = load_config(args.config, CaptionConfig, overrides) if args.config \
        else validate_config(overrides, CaptionConfig, "command line")
    try:
        crops_file = pq.ParquetFile(args.crops)
    except (OSError, pa.ArrowInvalid) as exc:
        raise GadmsError(f"{args.crops}: cannot read Parquet: {exc}") from None
    if args.limit is not None:
        check_range("--limit", args.limit, 1, 10**9)
    _check_crops(args.crops, crops_file)
    total = crops_file.metadata.num_rows if args.limit is None else min(args.limit, crops_file.metadata.num_rows)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(config, out / "caption_config.yaml")
    run = StageRun.start(str(out), "caption")
    # One unit, redone by every run (another backend or --limit gives other captions): the request cache is its
    # resumable state, so a rerun sends only the requests not answered before.
    unit = Unit("captions", (str(out / "captions.parquet"), str(out / "rejects.parquet")), is_done=lambda _: False)

    def caption(unit: Unit) -> tuple[list[dict], list]:
        caption_rows: list[dict] = []
        reject_rows: list = []
        done = 0
        with tqdm(total=total, unit="crop", desc=f"caption ({config.backend})") as bar:
            for batch in crops_file.iter_batches(batch_size=CROP_BATCH):
                crops = [crop_from_row(row) for row in batch.to_pylist()][: total - done]
                if not crops:
                    break
                captions, rejects = caption_crops(crops, config, args.cache_dir or out / "cache", progress=bar.update)
                caption_rows += [vars(c) for c in captions]
                reject_rows += rejects
                done += len(crops)
        captions_file, rejects_file = unit.outputs
        run.write(pa.Table.from_pylist(caption_rows, schema=CAPTIONS_SCHEMA), captions_file)
        run.write_rejects(reject_rows, rejects_file, None)
        return caption_rows, reject_rows

    caption_rows, reject_rows = run_unit(unit, caption)
    run.save_record(config.model_dump(mode="json"), {"counts": {
        "crops": total, "captioned": len(caption_rows), "rejects": len(reject_rows)}})
    print(f"{total} crops: {len(caption_rows)} captioned, {len(reject_rows)} rejected → {out}")
    if reject_rows:
        from collections import Counter

        counts = Counter(f"{r.stage}/{r.reason}" for r in reject_rows)
        print("rejects: " + ", ".join(f"{name} {n}" for name, n in counts.most_common()))
    return 0


def _check_crops(path: str, crops_file) -> None:
    """The columns captions are keyed and made from, checked before any crop is captioned (not at the final write):
    sample_id strings, present and unique; image bytes, present."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from storage.errors import GadmsError

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

