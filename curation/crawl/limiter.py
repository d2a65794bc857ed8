"""Per-host politeness: at most N requests in flight, a minimum delay between request starts, and a pause
for the whole host after a 429/503 with Retry-After.

`HostLimiter` keeps these limits within one event loop; given a `HostLeaseClient` (curation.crawl.hostleases) it
also takes each request's slot from the run's lease server, so the limits hold across every loop of the run."""
from __future__ import annotations

import asyncio
import time

from curation.crawl.hostleases import HostLeaseClient


class HostState:
    def __init__(self, concurrency: int, min_delay_s: float):
        self.slots = asyncio.Semaphore(concurrency)
        self.min_delay_s = min_delay_s
        self.next_start = 0.0  # monotonic time before which no request may start
        self.paused_until = 0.0


class HostLimiter:
    def __init__(self, concurrency: int, min_delay_s: float, max_crawl_delay_s: float,
                 shared: HostLeaseClient | None = None):
        self.concurrency = concurrency
        self.shared = shared
        self.min_delay_s = min_delay_s
        self.max_crawl_delay_s = max_crawl_delay_s
        self._hosts: dict[str, HostState] = {}

    def _host(self, host: str) -> HostState:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = HostState(self.concurrency, self.min_delay_s)
        return state

    def set_crawl_delay(self, host: str, crawl_delay_s: float) -> None:
        """robots.txt's Crawl-delay raises the host's delay (never lowers it), up to a cap."""
        state = self._host(host)
        state.min_delay_s = max(state.min_delay_s, min(crawl_delay_s, self.max_crawl_delay_s))

    def pause(self, host: str, seconds: float) -> None:
        state = self._host(host)
        state.paused_until = max(state.paused_until, time.monotonic() + seconds)
        if self.shared is not None:
            self.shared.pause(host, seconds)

    def slot(self, host: str, in_flight: asyncio.Semaphore) -> _HostSlot:
        """`async with limiter.slot(host, in_flight):` holds one of the host's slots and one of the global
        `in_flight` slots, started no sooner than the host's delay and pause allow. The delay is waited for
        before taking a global slot (so waiting hosts do not block others) and checked again after, since a long
        wait for it may let another slot start. The run's lease comes last, so the request starts as soon as it
        is granted: the server's delay is measured between grants."""
        return _HostSlot(self._host(host), host, in_flight, self.shared)


class _HostSlot:
    """The context manager `HostLimiter.slot` returns: a class, not an @asynccontextmanager generator, as it is
    entered once per request (5.9 µs a slot instead of 11.8 µs, of ~700 µs of worker CPU per image)."""

    __slots__ = ("state", "host", "in_flight", "shared", "lease_id")

    def __init__(self, state: HostState, host: str, in_flight: asyncio.Semaphore, shared: HostLeaseClient | None):
        self.state, self.host, self.in_flight, self.shared = state, host, in_flight, shared
        self.lease_id: int | None = None

    async def __aenter__(self) -> None:
        state = self.state
        await state.slots.acquire()
        try:
            if max(state.next_start, state.paused_until) > time.monotonic():  # most requests need not wait
                await _wait_turn(state)
            await self.in_flight.acquire()
            try:
                now = time.monotonic()
                if max(state.next_start, state.paused_until) > now:
                    await _wait_turn(state)
                    now = time.monotonic()
                state.next_start = now + state.min_delay_s
                if self.shared is not None:
                    self.lease_id = await self.shared.acquire(self.host, state.min_delay_s)
            except BaseException:
                self.in_flight.release()
                raise
        except BaseException:
            state.slots.release()
            raise

    async def __aexit__(self, *exc_info) -> None:
        try:
            if self.lease_id is not None:
                self.shared.release(self.lease_id)
        finally:
            self.in_flight.release()
            self.state.slots.release()


async def _wait_turn(state: HostState) -> None:
    while (start := max(state.next_start, state.paused_until)) > (now := time.monotonic()):
        await asyncio.sleep(start - now)
