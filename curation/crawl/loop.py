"""Running the stage's coroutines from synchronous callers (the CLI, Prefect tasks, notebooks)."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine


def run_sync(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run, also from a thread that already runs an event loop (then in a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    results: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(asyncio.run(coroutine))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="crawl-loop")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]
