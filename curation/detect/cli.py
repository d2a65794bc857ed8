"""`gadms detect`: person crops (and rejects) from the crawl stage's Parquet output, deduplicated globally.

    gadms detect --downloads crawl_out/ --out detect_out/ [--config detect.yaml]

For each input file (one shard, named after the file): decode, detect, apply the rules, crop, then dedup
against the index in <out>/dedup/ (shared by every shard and run written to <out>). Writes
<out>/crops/<shard>.parquet (the fields of PersonCrop), <out>/rejects/<shard>.parquet (REJECT_SCHEMA) and a
run record <out>/runs/<run_id>.json. A shard whose outputs exist is skipped, so a killed run resumes.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--downloads", required=True, help="crawl output: a Parquet file or a folder of them")
    parser.add_argument("--out", required=True, help="output folder (crops/, rejects/, dedup/, runs/)")
    parser.add_argument("--config", help="YAML/JSON with `detect:` (DetectConfig) and `dedup:` (DedupConfig) sections")
    parser.add_argument("--backend", choices=["yolo", "hog"], help="override detect.backend")
    parser.add_argument("--weights", help="override detect.weights")
    parser.add_argument("--device", help="override detect.device (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--no-dedup", action="store_true", help="skip the global dedup step")
    parser.add_argument("--run-id", help="run id for the run record and rejects (default: detect-<UTC time>)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from curation.detect.job import DetectJobConfig, run_detect_job
    from storage.configfile import read_config_data, validate_config

    data = read_config_data(args.config) if args.config else {}
    overrides = {k: v for k, v in (("backend", args.backend), ("weights", args.weights), ("device", args.device)) if v}
    if overrides:
        detect = data.get("detect") or {}
        data["detect"] = {**detect, **overrides} if isinstance(detect, dict) else detect
    source = f"{args.config} with the command line" if args.config and overrides else args.config or "command line"
    config = validate_config(data, DetectJobConfig, source)
    if args.no_dedup:
        config.dedup.enabled = False
    summary = run_detect_job(args.downloads, args.out, config, run_id=args.run_id, progress=True)
    counts = summary["counts"]
    print(
        f"{counts['images']} images, {counts['shards_done']} shards done ({counts['shards_skipped']} already done): "
        f"{counts['kept']} crops kept, {counts['rejects']} rejects → {args.out}"
    )
    return 0
