"""An aiohttp application on 127.0.0.1 in a thread of its own, for the OpenAI-protocol stand-ins.

Subclasses define `_app() -> aiohttp.web.Application`; `start(port)` returns once the socket listens
(port 0: any free port), `stop()` closes it. Usable as a context manager.
"""
from __future__ import annotations

import asyncio
import threading

from storage.errors import GadmsError


class LoopbackAiohttpServer:
    thread_name = "loopback-aiohttp"

    def __init__(self):
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _app(self):
        raise NotImplementedError

    def start(self, port: int = 0):
        from aiohttp import web

        ready, failure = threading.Event(), []

        async def serve() -> None:
            self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=1024)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(serve())
            except OSError as exc:
                failure.append(exc)
                return
            finally:
                ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            self._loop.close()
            self._loop = None
            raise GadmsError(f"cannot listen on 127.0.0.1:{port}: {failure[0].strerror or failure[0]}")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self):
        return self.start() if self._loop is None else self

    def __exit__(self, *exc_info) -> None:
        self.stop()
