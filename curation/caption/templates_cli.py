"""`gadms templates`: build, show or validate a caption template bank.

    gadms templates build --captions cuhk_captions.txt --out prompts/built.jsonl --clusters 100 --config caption.yaml
    gadms templates show [--file prompts/templates.jsonl] [--limit 10]
    gadms templates validate [--file prompts/templates.jsonl]
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="human captions → LLM templates → embeddings → k-means → bank")
    build.add_argument("--captions", required=True, help=".txt (one a line), .jsonl or CUHK-PEDES-style .json")
    build.add_argument("--out", required=True, help="template bank to write (.jsonl)")
    build.add_argument("--clusters", type=int, required=True, help="k of k-means")
    build.add_argument("--per-cluster-random", type=int, default=5, help="random members kept besides the "
                       "centroid's nearest (default 5, as in the paper)")
    build.add_argument("--config", help="CaptionConfig file: endpoints, models, embedding_model, prompt_version")
    build.add_argument("--endpoint", action="append", help="OpenAI-compatible base URL (overrides the config)")
    build.add_argument("--model", help="LLM that rewrites captions (overrides the config)")
    build.add_argument("--cache-dir", help="request cache (default: <out>.cache)")
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=run_build)
    for name, func, help_ in (("show", run_show, "print templates and placeholder counts"),
                              ("validate", run_validate, "check every template; exit 1 on any problem")):
        action = sub.add_parser(name, help=help_)
        action.add_argument("--file", help="template bank (default: the repository's prompts/templates.jsonl)")
        if name == "show":
            action.add_argument("--limit", type=int, default=20, help="templates to print (0: all)")
        action.set_defaults(func=func)


def _bank_path(args: argparse.Namespace):
    from curation.caption.config import CaptionConfig

    return args.file or CaptionConfig(backend="alt-text").templates_path


def run_build(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from curation.caption.config import CaptionConfig
    from curation.caption.template_bank import build_template_bank, read_human_captions
    from storage.configfile import load_config, validate_config
    from storage.errors import check_range
    from storage.fs import refuse_folder

    overrides = {"backend": "openai"}
    if args.endpoint:
        overrides["endpoints"] = args.endpoint
    if args.model:
        overrides["models"] = [args.model]
    config = load_config(args.config, CaptionConfig, overrides) if args.config \
        else validate_config(overrides, CaptionConfig, "command line")
    check_range("--clusters", args.clusters, 1, 100_000)
    check_range("--per-cluster-random", args.per_cluster_random, 0, 1000)
    out = Path(args.out)
    refuse_folder(str(out), "template bank (--out)")  # found now, not after all the LLM requests
    captions = read_human_captions(args.captions)
    rows, counts = build_template_bank(captions, config, args.clusters, args.cache_dir or f"{out}.cache",
                                       args.per_cluster_random, args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    partial.replace(out)
    embedding = config.embedding_model or "local hashed TF-IDF"
    print(f"{counts['captions']} captions → {counts['templates']} distinct templates "
          f"({counts['invalid_templates']} invalid, {counts['duplicates']} duplicates, "
          f"{counts['failed_requests']} failed requests); embeddings: {embedding}; "
          f"{args.clusters} clusters → {counts['kept']} templates in {out}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from collections import Counter

    from curation.caption.prompts import read_templates

    from storage.errors import check_range

    check_range("--limit", args.limit, 0, 10**9)
    templates = read_templates(_bank_path(args))
    shown = templates if args.limit == 0 else templates[: args.limit]
    for template in shown:
        print(f"{template.id}\t{template.text}")
    slots = Counter(name for template in templates for name in template.placeholders)
    print(f"\n{len(templates)} templates; placeholders: " + ", ".join(f"[{n}] {c}" for n, c in slots.most_common()))
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from curation.caption.prompts import check_templates, read_templates

    from storage.errors import GadmsError

    path = _bank_path(args)
    templates = read_templates(path)
    if not templates:
        raise GadmsError(f"{path}: no templates in the bank")
    problems = check_templates(templates)
    for problem in problems:
        print(problem)
    print(f"{path}: {len(templates)} templates, {len(problems)} problem(s)")
    return 1 if problems else 0
