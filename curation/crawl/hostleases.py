"""Per-host politeness across every chunk, thread, process and Ray worker of a build: a host lease server.

The build flow starts one `HostLeaseServer` (a child process) per run; every event loop that crawls (a chunk's loop, each of its
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
- On a cluster the server listens on a network address, so a connection's first line must be the run's secret
  (`K secret`), which travels only inside the address the flow hands its workers (`secret@host:port`, never on a
  command line): a stranger on the network can neither take the run's slots nor pause its hosts.
- One server is the serialisation point; it does no I/O but these lines (tens of thousands a second on one
  core), so it is not the bottleneck of a crawl whose every request is an HTTP download.

Hosts travel percent-encoded (`urllib.parse.quote`), so no hostile host name can break a line.
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import os
import secrets
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import quote, unquote

from storage.errors import GadmsError

SECRET_ENV = "GADMS_HOST_LEASE_SECRET"  # how the server process gets the run's secret (not argv: `ps` shows argv)
MAX_LINE = 4096  # a host name is at most 253 characters; anything longer is not our client


class HostLeaseError(GadmsError):
    pass


class _Lines:
    """Lines to one socket, sent together once per event-loop turn: under load one send carries hundreds of
    them, which is what keeps a slot's cost at a few microseconds on each side."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self._pending: list[bytes] = []

    def send(self, line: bytes) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(line)

    def _flush(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(b"".join(self._pending))
        self._pending.clear()


async def _read_lines(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The lines a peer sends, read in large pieces; a line longer than MAX_LINE is a ValueError."""
    rest = b""
    while data := await reader.read(1 << 16):
        *lines, rest = (rest + data).split(b"\n")
        if len(rest) > MAX_LINE:
            raise ValueError("line too long")
        for line in lines:
            yield line


@dataclass
class _Connection:
    lines: _Lines
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
            connection.lines.send(b"G %d\n" % lease_id)
        if not state.waiting and state.in_flight == 0:
            forget_at = max(state.next_start, state.paused_until)
            if forget_at <= now:
                del self.hosts[host]  # nothing left to remember about it
            else:
                state.timer = self.loop.call_at(forget_at, self.dispatch, host)


class HostLeaseServer:
    """The run's lease server on `bind_host` (a free port), in a child process of its own: it shares no
    interpreter lock with the crawl threads of the process that starts it, and it ends when that process does
    (its stdin closes).

        with HostLeaseServer(per_host_concurrency=4, min_delay_s=0.1) as server:
            crawl_chunk(..., host_leases=server.address)   # from any thread, process or machine that reaches it
    """

    def __init__(self, per_host_concurrency: int, min_delay_s: float, bind_host: str = "127.0.0.1", port: int = 0):
        self.per_host_concurrency = per_host_concurrency
        self.min_delay_s = min_delay_s
        self.bind_host = bind_host
        self.port = port
        self.address = ""  # secret@host:port, what every HostLeaseClient of the run is given
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> HostLeaseServer:
        package_root = str(Path(__file__).resolve().parents[2])
        secret = secrets.token_hex(16)
        env = {**os.environ, SECRET_ENV: secret,
               "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(self.per_host_concurrency), repr(float(self.min_delay_s)),
             self.bind_host, str(self.port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        )
        line = self._process.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            self._process.stdin.close()
            error = self._process.stderr.read().strip().splitlines()
            self._process.wait()
            raise HostLeaseError(f"host lease server: cannot listen on {self.bind_host}:{self.port}: "
                                 f"{error[-1] if error else 'it exited'}")
        self.address = f"{secret}@{line[1]}"
        self.port = int(line[1].rpartition(":")[2])
        return self

    def __exit__(self, *exc_info) -> None:
        if self._process is not None:
            self._process.stdin.close()  # the server's signal to leave
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process.stdout.close()
            self._process.stderr.close()


async def serve(per_host_concurrency: int, min_delay_s: float, bind_host: str, port: int, secret: str) -> None:
    """Serve leases to connections that first send `secret`, until stdin closes; the first line on stdout says
    `listening host:port`."""
    loop = asyncio.get_running_loop()
    table = _LeaseTable(loop, per_host_concurrency, min_delay_s)
    server = await asyncio.start_server(lambda r, w: _serve_connection(table, r, w, secret), bind_host, port,
                                        limit=MAX_LINE)
    print(f"listening {bind_host}:{server.sockets[0].getsockname()[1]}", flush=True)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await stdin.read()  # EOF: the process that started us closed the pipe, or is gone
    server.close()


async def _serve_connection(table: _LeaseTable, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            secret: str) -> None:
    connection = _Connection(_Lines(writer))
    trusted = False
    try:
        async for line in _read_lines(reader):
            parts = line.decode("ascii").split()
            if not trusted:
                if parts[0] != "K" or len(parts) != 2 or not hmac.compare_digest(parts[1], secret):
                    return  # silently: a stranger's connections must not fill the stderr pipe nobody reads
                trusted = True
            elif parts[0] == "A" and len(parts) == 4:
                table.ask(connection, int(parts[1]), unquote(parts[2]), float(parts[3]))
            elif parts[0] == "R" and len(parts) == 2:
                table.release(connection, int(parts[1]))
            elif parts[0] == "P" and len(parts) == 3:
                table.pause(unquote(parts[1]), float(parts[2]))
            else:
                raise ValueError(f"unknown message {line[:80]!r}")
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        print(f"host lease server: closing a connection that sent {exc}", file=sys.stderr, flush=True)
    except ConnectionError:
        pass
    finally:
        table.drop(connection)
        writer.close()


class HostLeaseClient:
    """One event loop's connection to the run's lease server (`secret@host:port`, HostLeaseServer.address); opened
    at the first lease."""

    def __init__(self, address: str):
        secret, _, self.address = address.rpartition("@")  # the secret stays out of every message it is in
        self._secret = secret
        self._ids = itertools.count()
        self._granted: dict[int, asyncio.Future] = {}
        self._quoted: dict[str, str] = {}  # host → its percent-encoded form (a chunk has at most shard_size hosts)
        self._writer: asyncio.StreamWriter | None = None
        self._lines: _Lines | None = None
        self._reading: asyncio.Task | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> _Lines:
        async with self._opening:
            if self._writer is None:
                host, _, port = self.address.rpartition(":")
                try:
                    reader, self._writer = await asyncio.open_connection(host, int(port))
                except (OSError, ValueError) as exc:
                    raise HostLeaseError(f"host lease server {self.address}: cannot connect: {exc}") from None
                self._lines = _Lines(self._writer)
                self._lines.send(f"K {self._secret}\n".encode("ascii"))
                self._reading = asyncio.ensure_future(self._read(reader))
        return self._lines

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            async for line in _read_lines(reader):
                future = self._granted.get(int(line.split()[1]))
                if future is not None and not future.done():
                    future.set_result(None)
        except (ConnectionError, ValueError, IndexError):
            pass
        lost = HostLeaseError(f"host lease server {self.address}: connection lost")
        for future in self._granted.values():
            if not future.done():
                future.set_exception(lost)

    def lease(self, host: str, delay_s: float) -> _Lease:
        """`async with client.lease(host, delay_s):` holds one of `host`'s slots of the run; `delay_s` (robots.txt's
        Crawl-delay) can raise its delay."""
        return _Lease(self, host, delay_s)

    async def acquire(self, host: str, delay_s: float) -> int:
        """Wait for one of `host`'s slots of the run; returns the lease id to `release`. (HostLimiter calls this
        pair directly: it runs once per request.)"""
        lines = await self._open()
        if self._reading.done():
            raise HostLeaseError(f"host lease server {self.address}: connection lost")
        lease_id = next(self._ids)
        granted = self._granted[lease_id] = asyncio.get_running_loop().create_future()
        quoted = self._quoted.get(host) or self._quoted.setdefault(host, quote(host, safe=""))
        lines.send(f"A {lease_id} {quoted} {delay_s!r}\n".encode("ascii"))
        try:
            await granted
        except BaseException:
            self.release(lease_id)
            raise
        return lease_id

    def release(self, lease_id: int) -> None:
        """Frees the slot, or withdraws an ask not granted."""
        del self._granted[lease_id]
        self._lines.send(b"R %d\n" % lease_id)

    def pause(self, host: str, seconds: float) -> None:
        """Every worker of the run waits `seconds` before its next request to `host` (429/503 Retry-After)."""
        if self._lines is not None:
            self._lines.send(f"P {quote(host, safe='')} {float(seconds)!r}\n".encode("ascii"))

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except ConnectionError:
                pass
        if self._reading is not None:
            await self._reading


class _Lease:
    """The context manager HostLeaseClient.lease returns."""

    __slots__ = ("client", "host", "delay_s", "lease_id")

    def __init__(self, client: HostLeaseClient, host: str, delay_s: float):
        self.client, self.host, self.delay_s = client, host, delay_s

    async def __aenter__(self) -> None:
        self.lease_id = await self.client.acquire(self.host, self.delay_s)

    async def __aexit__(self, *exc_info) -> None:
        self.client.release(self.lease_id)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the build's to handle; stdin ends us
    concurrency, delay, bind, listen_port = sys.argv[1:5]
    try:
        asyncio.run(serve(int(concurrency), float(delay), bind, int(listen_port), os.environ.pop(SECRET_ENV)))
    except OSError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
