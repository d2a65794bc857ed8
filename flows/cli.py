"""The `gadms` command. Each subcommand lives in its own module, imported only when it runs, so
`gadms --help` stays fast and a broken optional dependency breaks one command, not all of them.

A command module defines `add_arguments(parser)`, which adds its options (or nested subcommands) and sets
`parser.set_defaults(func=...)`; `func(args)` returns the exit status.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import sys

from flows.interrupt import interrupted_line
from storage.env import apply_offline_defaults
from storage.errors import GadmsError, error_line

# What the machine refuses, whichever command writes and wherever: a folder or disk the user must change, so one line
# naming the file (anything else raised as OSError is a bug and keeps its traceback).
WRITE_REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}

# name → (module, one-line help). Keep in the order a user meets them.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("flows.demo_cli", "run the whole system offline on a synthetic web (what `make demo` runs)"),
    "synthweb": ("flows.synthweb_cli", "render, serve a synthetic person web and its simulated VLM; train its demo detector and CLIP"),
    "crawl": ("curation.crawl.cli", "download images from URL lists or seed pages"),
    "detect": ("curation.detect.cli", "detect persons, check pose, crop and deduplicate downloaded images"),
    "caption": ("curation.caption.cli", "filter and caption person crops with an MLLM (vLLM / transformers / alt text)"),
    "templates": ("curation.caption.templates_cli", "build or inspect the caption template bank"),
    "dedup": ("curation.dedup.cli", "seed a dedup index with a benchmark's val/test images (contamination guard)"),
    "build": ("flows.build_cli", "run the build-webperson flow locally from a config file"),
    "catalog": ("storage.catalog_cli", "refresh or inspect the DuckDB catalog of an output root"),
    "stats": ("storage.stats_cli", "caption and curation statistics from a DuckDB catalog"),
    "takedown": ("flows.takedown_cli", "remove the samples a takedown blocklist names from a built root's shards"),
    "export": ("storage.export_cli", "export shards as a Hugging Face dataset (data/train-*.parquet + README.md card)"),
    "train": ("gadms_model.training.cli", "pre-train or fine-tune GA-DMS from a YAML config"),
    "eval": ("gadms_model.evaluation.cli", "evaluate a checkpoint on CUHK-PEDES / ICFG-PEDES / RSTPReid"),
    "search": ("gadms_model.retrieval.cli", "search a gallery of person crops by text"),
    "browse": ("flows.browse.cli", "a local read-only web page over a built root: samples, rejects, runs, text search"),
    "export-model": ("gadms_model.export.cli", "write a checkpoint's retrieval towers as a folder open_clip loads"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: gadms <command> [options]",
        "",
        "WebPerson curation and GA-DMS text-based person retrieval.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`gadms <command> --help` shows a command's options."]
    return "\n".join(lines)


def build_parser(name: str) -> argparse.ArgumentParser:
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"gadms {name}", description=help_)
    module.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_offline_defaults()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"gadms: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    parser = build_parser(name)
    args = parser.parse_args(argv[1:])
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except GadmsError as exc:
        print(error_line(name, exc), file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in WRITE_REFUSED or not exc.filename:
            raise
        print(error_line(name, GadmsError(f"{exc.filename}: cannot write there: {exc.strerror}")), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted_line(name), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
