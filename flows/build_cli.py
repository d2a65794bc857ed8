"""`gadms build`: run the build-webperson flow in this process (Prefect runs it against PREFECT_API_URL when set,
or a temporary local API otherwise)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

# After Ctrl-C, the seconds Prefect gets to record the run as crashed before this process leaves regardless.
CTRL_C_GRACE_S = 10.0


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

    config = resolve_build_config(args.config)  # a bad config or reason fails here, in one line, before Prefect starts
    if config.runner.kind == "local":  # devices of this machine (a Ray cluster's workers have their own)
        _check_devices(config)
    if args.retry_failed is not None:
        parse_retry_reasons(args.retry_failed)
    _show_task_failures_once()
    _start_temporary_api_beyond_ctrl_c()
    _leave_at_most_seconds_after_ctrl_c(CTRL_C_GRACE_S)
    try:
        summary = build_webperson(args.config, retry_failed=args.retry_failed)
    except KeyboardInterrupt:
        _leave_the_running_chunks()
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


def _start_temporary_api_beyond_ctrl_c() -> None:
    """Start Prefect's temporary API server (when no PREFECT_API_URL is set) with SIGINT blocked.

    A terminal's Ctrl-C signals the whole process group, and the server is our child: it would stop at once, and
    recording the interrupted run would then retry connections for minutes. A blocked signal stays blocked in a
    child, so Ctrl-C reaches only this process; the server stops when this process leaves. (A Ctrl-C in the seconds
    the server takes to start acts once it has started.)
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        SubprocessASGIServer().start()  # the one instance the Prefect client uses when it needs an API
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _leave_at_most_seconds_after_ctrl_c(seconds: float) -> None:
    """Ctrl-C raises KeyboardInterrupt as usual, and also starts a timer that leaves after `seconds`: in a full
    test run a build was once still running 45 s after Ctrl-C, though it leaves in about a second when Prefect's
    engine passes the interrupt on."""
    default = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum, frame):
        signal.signal(signal.SIGINT, default)
        timer = threading.Timer(seconds, _leave_the_running_chunks)
        timer.daemon = True  # a build that ends by itself meanwhile is not held up by it
        timer.start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)


def _leave_the_running_chunks():
    """Ctrl-C: the flow run is recorded as crashed; end now rather than when the running chunks end.

    Their threads cannot be stopped and Python waits for them at exit, possibly for minutes. What they have
    written is resumable as after a kill (a rerun skips finished chunks and resumes crawls), so leave without them.
    """
    from prefect.server.api.server import SubprocessASGIServer

    from flows.cli import interrupted_line

    SubprocessASGIServer().stop()
    print(interrupted_line("build"), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)
