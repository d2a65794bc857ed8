"""Per-host politeness across every chunk, thread, process and Ray worker of a build: a host lease server.

The build flow starts one `HostLeaseServer` per run; every event loop that crawls (a chunk's loop, each of its
worker processes, a Ray task on another machine) holds one TCP connection to it through a `HostLeaseClient`, and
asks it for a slot before each request. The server grants a host's slot only while fewer than
`per_host_concurrency` of that host's requests are in flight anywhere, no sooner than the host's delay after the
previous grant, and not while the host is paused (a 429/503 Retry-After seen by any worker). So the limits hold
for the run, not per chunk.

Why this shape (see the README's "Scaling out"):
- Chunks stay row ranges of the input; nothing is re-partitioned by host, and no process holds the URL list.
- The server keeps state only for hosts with a request in flight, waiting, or inside their delay or pause
  window: memory follows the hosts being crawled at the moment, not the input.
- Lanes are per host inside each loop, so a host that waits (a huge host at its limit, a paused one) only holds
  its own lanes; the other hosts' requests are granted at once.
- A slot is one small message each way on a kept-alive connection (`A id host delay` → `G id`, then `R id`);
  a worker that dies closes its connection and the server frees its slots: nothing to expire or heart-beat.
- One server is the serialisation point; it does no I/O but these lines (tens of thousands a second on one
  core), so it is not the bottleneck of a crawl whose every request is an HTTP download.

Hosts travel percent-encoded (`urllib.parse.quote`), so no hostile host name can break a line.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator
from urllib.parse import quote, unquote

from storage.errors import GadmsError

log = logging.getLogger(__name__)

MAX_LINE = 4096  # a host name is at most 253 characters; anything longer is not our client


class HostLeaseError(GadmsError):
    pass


@dataclass
class _Connection:
    writer: asyncio.StreamWriter
    waiting: dict[int, str] = field(default_factory=dict)  # lease id → host, asked and not yet granted
    granted: dict[int, str] = field(default_factory=dict)  # lease id → host, in flight


@dataclass
class _Host:
    in_flight: int = 0
    next_start: float = 0.0  # loop time before which no slot is granted
    paused_until: float = 0.0
    waiting: deque = field(default_factory=deque)  # (connection, lease id, delay) in arrival order
    timer: asyncio.TimerHandle | None = None


class _LeaseTable:
    """The server's state; runs on the server's event loop only."""

    def __init__(self, loop: asyncio.AbstractEventLoop, per_host_concurrency: int, min_delay_s: float):
        self.loop = loop
        self.concurrency = per_host_concurrency
        self.min_delay_s = min_delay_s
        self.hosts: dict[str, _Host] = {}

    def ask(self, connection: _Connection, lease_id: int, host: str, delay_s: float) -> None:
        connection.waiting[lease_id] = host
        self.hosts.setdefault(host, _Host()).waiting.append((connection, lease_id, delay_s))
        self.dispatch(host)

    def release(self, connection: _Connection, lease_id: int) -> None:
        """A finished request frees its slot; an ask not yet granted is withdrawn."""
        if connection.waiting.pop(lease_id, None) is not None:
            return  # its queue entry is skipped when it comes up
        host = connection.granted.pop(lease_id, None)
        if host is not None:
            self.hosts[host].in_flight -= 1
            self.dispatch(host)

    def pause(self, host: str, seconds: float) -> None:
        state = self.hosts.setdefault(host, _Host())
        state.paused_until = max(state.paused_until, self.loop.time() + seconds)
        self.dispatch(host)

    def drop(self, connection: _Connection) -> None:
        """A closed connection: its slots are free, its asks gone."""
        connection.waiting.clear()
        for lease_id in list(connection.granted):
            self.release(connection, lease_id)

    def dispatch(self, host: str) -> None:
        state = self.hosts.get(host)
        if state is None:
            return
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        now = self.loop.time()
        while state.waiting and state.in_flight < self.concurrency:
            connection, lease_id, delay_s = state.waiting[0]
            if connection.waiting.get(lease_id) != host:  # withdrawn, or its connection closed
                state.waiting.popleft()
                continue
            start = max(state.next_start, state.paused_until)
            if start > now:
                state.timer = self.loop.call_at(start, self.dispatch, host)
                return
            state.waiting.popleft()
            del connection.waiting[lease_id]
            connection.granted[lease_id] = host
            state.in_flight += 1
            state.next_start = now + max(self.min_delay_s, delay_s)
            connection.writer.write(b"G %d\n" % lease_id)
        if not state.waiting and state.in_flight == 0:
            forget_at = max(state.next_start, state.paused_until)
            if forget_at <= now:
                del self.hosts[host]  # nothing left to remember about it
            else:
                state.timer = self.loop.call_at(forget_at, self.dispatch, host)


class HostLeaseServer:
    """The run's lease server on `bind_host` (a free port), served from a thread of the calling process.

        with HostLeaseServer(per_host_concurrency=4, min_delay_s=0.1) as server:
            crawl_chunk(..., host_leases=server.address)   # from any thread, process or machine that reaches it
    """

    def __init__(self, per_host_concurrency: int, min_delay_s: float, bind_host: str = "127.0.0.1", port: int = 0):
        self.per_host_concurrency = per_host_concurrency
        self.min_delay_s = min_delay_s
        self.bind_host = bind_host
        self.port = port
        self.address = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._table: _LeaseTable | None = None

    def __enter__(self) -> HostLeaseServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                self._table = _LeaseTable(loop, self.per_host_concurrency, self.min_delay_s)
                server = loop.run_until_complete(
                    asyncio.start_server(self._serve, self.bind_host, self.port, limit=MAX_LINE))
                self.port = server.sockets[0].getsockname()[1]
                self.address = f"{self.bind_host}:{self.port}"
            except BaseException as exc:  # reported in the caller's thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                loop.run_until_complete(server.wait_closed())
                loop.close()

        self._thread = threading.Thread(target=serve, name="host-lease-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise HostLeaseError(f"host lease server: cannot listen on {self.bind_host}:{self.port}: {failure[0]}")
        return self

    def __exit__(self, *exc_info) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        table = self._table
        connection = _Connection(writer)
        try:
            while line := await reader.readline():
                parts = line.decode("ascii").split()
                if parts[0] == "A" and len(parts) == 4:
                    table.ask(connection, int(parts[1]), unquote(parts[2]), float(parts[3]))
                elif parts[0] == "R" and len(parts) == 2:
                    table.release(connection, int(parts[1]))
                elif parts[0] == "P" and len(parts) == 3:
                    table.pause(unquote(parts[1]), float(parts[2]))
                else:
                    raise ValueError(f"unknown message {line[:80]!r}")
        except (ValueError, IndexError, UnicodeDecodeError, asyncio.LimitOverrunError) as exc:
            log.warning("host lease server: closing a connection that sent %s", exc)
        except ConnectionError:
            pass
        finally:
            table.drop(connection)
            writer.close()


class HostLeaseClient:
    """One event loop's connection to the run's lease server (`host:port`); opened at the first lease."""

    def __init__(self, address: str):
        self.address = address
        self._ids = itertools.count()
        self._granted: dict[int, asyncio.Future] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> asyncio.StreamWriter:
        async with self._opening:
            if self._writer is None:
                host, _, port = self.address.rpartition(":")
                try:
                    reader, self._writer = await asyncio.open_connection(host, int(port))
                except (OSError, ValueError) as exc:
                    raise HostLeaseError(f"host lease server {self.address}: cannot connect: {exc}") from None
                self._reading = asyncio.ensure_future(self._read(reader))
        return self._writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                future = self._granted.get(int(line.split()[1]))
                if future is not None and not future.done():
                    future.set_result(None)
        except (ConnectionError, ValueError, IndexError):
            pass
        lost = HostLeaseError(f"host lease server {self.address}: connection lost")
        for future in self._granted.values():
            if not future.done():
                future.set_exception(lost)

    @asynccontextmanager
    async def lease(self, host: str, delay_s: float) -> AsyncIterator[None]:
        """Hold one of `host`'s slots of the run; `delay_s` (robots.txt's Crawl-delay) can raise its delay."""
        writer = await self._open()
        if self._reading.done():
            raise HostLeaseError(f"host lease server {self.address}: connection lost")
        lease_id = next(self._ids)
        granted = self._granted[lease_id] = asyncio.get_running_loop().create_future()
        writer.write(f"A {lease_id} {quote(host, safe='')} {delay_s!r}\n".encode("ascii"))
        try:
            await granted
            yield
        finally:
            del self._granted[lease_id]
            if not writer.is_closing():
                writer.write(b"R %d\n" % lease_id)  # frees the slot, or withdraws an ask not granted

    def pause(self, host: str, seconds: float) -> None:
        """Every worker of the run waits `seconds` before its next request to `host` (429/503 Retry-After)."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(f"P {quote(host, safe='')} {float(seconds)!r}\n".encode("ascii"))

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except ConnectionError:
                pass
        if self._reading is not None:
            await self._reading
