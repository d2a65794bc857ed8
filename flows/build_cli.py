"""`gadms build`: run the build-webperson flow in this process (Prefect runs it against PREFECT_API_URL when set,
or a temporary local API otherwise)."""
from __future__ import annotations

import argparse
import json
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="build config YAML (see flows/configs/webperson.yaml)")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON")
    parser.add_argument("--retry-failed", metavar="REASONS",
                        help="also refetch URLs of complete shards whose crawl reject has one of these reasons "
                             "(comma-separated, e.g. timeout,connect_error,connection_error,http_5xx,http_429); "
                             "their results go to retry shards and the old rejects are dropped")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from curation.crawl.reasons import parse_retry_reasons
    from flows.build_webperson import build_webperson
    from flows.config import resolve_build_config
    from flows.interrupt import leave_promptly_on_ctrl_c

    config = resolve_build_config(args.config)  # a bad config or reason fails here, in one line, before Prefect starts
    if config.runner.kind == "local":  # devices of this machine (a Ray cluster's workers have their own)
        _check_devices(config)
    if args.retry_failed is not None:
        parse_retry_reasons(args.retry_failed)
    _show_task_failures_once()
    leave = leave_promptly_on_ctrl_c("build")
    try:
        summary = build_webperson(args.config, retry_failed=args.retry_failed)
    except KeyboardInterrupt:
        leave()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        retried = f"; {summary['retried']} failed URLs retried" if summary["retry_failed"] else ""
        print(f"kept {summary['kept']} samples ({summary['chunks'] - summary['chunks_skipped']} new shards, "
              f"{summary['chunks_skipped']} skipped{retried}); catalog: {summary['catalog']}")
    return 0


def _check_devices(config) -> None:
    """The detect and caption devices exist here, before any chunk is crawled (the stages check them again)."""
    from storage.devices import existing_device

    if config.detect.device != "auto":
        existing_device(config.detect.device, "detect.device")
    if config.caption.backend == "transformers":
        existing_device(config.caption.device, "caption.device")


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
