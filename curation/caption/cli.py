"""`gadms caption`: filter and caption the person crops of a Parquet file.

    gadms caption --crops crops.parquet --out captions/ [--config caption.yaml] [--backend alt-text]

Writes <out>/captions.parquet (storage.schema.CAPTIONS_SCHEMA: sample_id, caption1, caption2, caption_model,
caption_backend, template_id, prompt_version, filter_keep, filter_reason, filter_model), <out>/rejects.parquet (the
rejects table's columns), <out>/caption_config.yaml and a run record <out>/runs/<run_id>.json (curation.caption.job);
finished model requests are cached in <out>/cache (or --cache-dir), so running the command again sends nothing new.
"""
from __future__ import annotations

import argparse


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
    from collections import Counter
    from pathlib import Path

    from curation.caption.config import CaptionConfig
    from curation.caption.job import open_crops, run_caption_job
    from storage.configfile import dump_config, load_config, validate_config
    from storage.errors import check_range

    overrides = {key: value for key, value in (("backend", args.backend), ("endpoints", args.endpoint),
                                               ("models", args.model)) if value}
    config = load_config(args.config, CaptionConfig, overrides) if args.config \
        else validate_config(overrides, CaptionConfig, "command line")
    crops_file = open_crops(args.crops)
    if args.limit is not None:
        check_range("--limit", args.limit, 1, 10**9)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(config, out / "caption_config.yaml")
    crops, captioned, rejects = run_caption_job(args.crops, crops_file, out, config, args.cache_dir, args.limit)
    print(f"{crops} crops: {captioned} captioned, {len(rejects)} rejected → {out}")
    if rejects:
        counts = Counter(f"{r.stage}/{r.reason}" for r in rejects)
        print("rejects: " + ", ".join(f"{name} {n}" for name, n in counts.most_common()))
    return 0
