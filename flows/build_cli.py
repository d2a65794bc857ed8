"""`gadms build`: run the build-webperson flow in this process (Prefect runs it against PREFECT_API_URL when set,
or a temporary local API otherwise)."""
from __future__ import annotations

import argparse
import json
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="build config YAML (see flows/configs/webperson.yaml)")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.build_webperson import build_webperson
    from flows.config import resolve_build_config

    resolve_build_config(args.config)  # a bad config fails here, in one line, before Prefect starts
    _show_task_failures_once()
    summary = build_webperson(args.config)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"kept {summary['kept']} samples ({summary['chunks'] - summary['chunks_skipped']} new shards, "
              f"{summary['chunks_skipped']} skipped); catalog: {summary['catalog']}")
    return 0


def _is_not_a_task_failure(record: logging.LogRecord) -> bool:
    return not (record.name == "prefect.task_runs" and record.levelno >= logging.ERROR)


def _show_task_failures_once() -> None:
    """Keep Prefect's report of a failed task (its exception, traceback and final state) off the terminal.

    Every task failure reaches the flow, which reports it: a GadmsError as the one line `gadms build: error: …`,
    anything else with its traceback. The task's own report would only repeat it; the Prefect API still has it.
    """
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_is_not_a_task_failure)
