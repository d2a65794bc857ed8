"""Ctrl-C during a Prefect flow run in this process (`gadms build`, `gadms demo`): leave within seconds, in one line.

Prefect's temporary API server is our child; a terminal's Ctrl-C would stop it at once, and recording the
interrupted run would then retry connections for minutes. So the server starts with SIGINT blocked, and after
Ctrl-C the process leaves once Prefect has had CTRL_C_GRACE_S to record the run, or at once when the caller asks.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, NoReturn

# After Ctrl-C, the seconds Prefect gets to record the run as crashed before this process leaves regardless.
CTRL_C_GRACE_S = 10.0


def interrupted_line(command: str, hint: str = "") -> str:
    return f"gadms {command}: interrupted" + (f"; {hint}" if hint else "")


def leave_promptly_on_ctrl_c(command: str, hint: str = "",
                             seconds: float = CTRL_C_GRACE_S) -> Callable[[], NoReturn]:
    """Start the temporary API beyond Ctrl-C and arm the timer; returns the function that leaves now (call it on
    KeyboardInterrupt). `hint`: how to continue, appended to the `gadms <command>: interrupted` line."""
    leave = _leaver(command, hint)
    _start_temporary_api_beyond_ctrl_c()
    _leave_at_most_seconds_after_ctrl_c(seconds, leave)
    return leave


def _start_temporary_api_beyond_ctrl_c() -> None:
    """Start Prefect's temporary API server (when no PREFECT_API_URL is set) with SIGINT blocked.

    A blocked signal stays blocked in a child, so Ctrl-C reaches only this process; the server stops when this
    process leaves. (A Ctrl-C in the seconds the server takes to start acts once it has started.)
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


def _leave_at_most_seconds_after_ctrl_c(seconds: float, leave: Callable[[], NoReturn]) -> None:
    """Ctrl-C raises KeyboardInterrupt as usual, and also starts a timer that leaves after `seconds`: in a full
    test run a build was once still running 45 s after Ctrl-C, though it leaves in about a second when Prefect's
    engine passes the interrupt on."""
    default = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum, frame):
        signal.signal(signal.SIGINT, default)
        timer = threading.Timer(seconds, leave)
        timer.daemon = True  # a run that ends by itself meanwhile is not held up by it
        timer.start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)


def _leaver(command: str, hint: str) -> Callable[[], NoReturn]:
    def leave() -> NoReturn:
        """The flow run is recorded as crashed; end now rather than when the running chunks end.

        Their threads cannot be stopped and Python waits for them at exit, possibly for minutes. What they have
        written is resumable as after a kill (a rerun skips finished chunks and resumes crawls), so leave without
        them.
        """
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().stop()
        print(interrupted_line(command, hint), file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)

    return leave
