"""Per-host limits of a whole run (curation.crawl.hostleases): several chunks crawl at once, from threads and from
worker processes, against loopback hosts that record every request they serve."""
from __future__ import annotations

import asyncio
import hashlib
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from curation.crawl import CrawlConfig, crawl_chunk
from curation.crawl.hostleases import HostLeaseClient, HostLeaseError, HostLeaseServer
from storage.records import UrlRecord

# The lease server spaces grants; a request reaches the host a little after its grant (the client's loop, the
# connection, the server's thread: milliseconds, more on a loaded machine), so a gap measured at the host may be
# that much shorter than the delay. Half the delay is far more than such a stall, and far less than the delay
# that two chunks' own limiters would leave between their requests (none: they start together).
DELAY_S = 0.5
ARRIVAL_JITTER_S = DELAY_S / 2


class CountingHost:
    """A loopback image host: each path is a distinct small PNG after `hold_s`; it records (start, end) of every
    request and the most requests it ever had in flight at once."""

    def __init__(self, hold_s: float = 0.0):
        self.hold_s = hold_s
        self.requests: list[tuple[str, float, float]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                start = time.monotonic()
                with host._lock:
                    host.in_flight += 1
                    host.max_in_flight = max(host.max_in_flight, host.in_flight)
                time.sleep(host.hold_s)
                robots = self.path == "/robots.txt"
                body = b"" if robots else _png(host.url + self.path)
                # Counted out before the answer is sent: the client may start its next request as soon as it has
                # read this one, possibly before this thread would get to count it out.
                with host._lock:
                    host.in_flight -= 1
                    host.requests.append((self.path, start, time.monotonic()))
                self.send_response(404 if robots else 200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> CountingHost:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    def image_starts(self) -> list[float]:
        return sorted(start for path, start, _ in self.requests if path != "/robots.txt")


def _png(url: str) -> bytes:
    """A PNG whose pixels are the URL's sha256 repeated: distinct images, so the crawl keeps every one."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (16, 16), (hashlib.sha256(url.encode()).digest() * 24)[:768]).save(buffer, "PNG")
    return buffer.getvalue()


def config(**overrides) -> CrawlConfig:
    return CrawlConfig(**{
        "allow_private_addresses": ["127.0.0.1"], "workers": 1, "connect_timeout_s": 5, "read_timeout_s": 10,
        "total_timeout_s": 20, "retries": 0, **overrides})


def crawl_in_threads(chunks: list[list[UrlRecord]], crawl_config: CrawlConfig, tmp_path, host_leases: str | None):
    """Every chunk at once, each from its own thread, as the build's thread pool runs them."""
    with ThreadPoolExecutor(len(chunks)) as pool:
        futures = [pool.submit(crawl_chunk, chunk, crawl_config, str(tmp_path / f"state-{i}"),
                               host_leases=host_leases) for i, chunk in enumerate(chunks)]
        return [f.result() for f in futures]


def gaps(starts: list[float]) -> list[float]:
    return [b - a for a, b in zip(starts, starts[1:])]


def test_per_host_concurrency_holds_across_chunk_threads_and_their_worker_processes(tmp_path):
    crawl_config = config(per_host_concurrency=2, per_host_min_delay_s=0.0, workers=2, min_urls_per_worker=4)
    with CountingHost(hold_s=0.15) as host, HostLeaseServer(2, 0.0) as leases:
        chunks = [[UrlRecord(f"{host.url}/c{c}/{i}.png") for i in range(12)] for c in range(3)]
        results = crawl_in_threads(chunks, crawl_config, tmp_path / "shared", leases.address)
    # 3 chunks × 2 worker processes each = 6 event loops, one host: never more than 2 requests at once.
    assert [len(r.downloads) for r in results] == [12, 12, 12]
    assert len(host.image_starts()) == 36
    assert host.max_in_flight == 2

    with CountingHost(hold_s=0.15) as control:  # the same chunks, each with only its own limiter
        chunks = [[UrlRecord(f"{control.url}/c{c}/{i}.png") for i in range(6)] for c in range(3)]
        crawl_in_threads(chunks, config(per_host_concurrency=2, per_host_min_delay_s=0.0), tmp_path / "own", None)
    assert control.max_in_flight > 2


def test_per_host_min_delay_holds_between_request_starts_across_chunks(tmp_path):
    crawl_config = config(per_host_concurrency=2, per_host_min_delay_s=DELAY_S)
    with CountingHost() as host, HostLeaseServer(2, DELAY_S) as leases:
        chunks = [[UrlRecord(f"{host.url}/c{c}/{i}.png") for i in range(2)] for c in range(3)]
        results = crawl_in_threads(chunks, crawl_config, tmp_path / "shared", leases.address)
    assert [len(r.downloads) for r in results] == [2, 2, 2]
    starts = sorted(start for _, start, _ in host.requests)  # robots.txt requests are requests too
    assert len(starts) == 6 + 3  # each chunk's loop asked for robots.txt once
    assert min(gaps(starts)) >= DELAY_S - ARRIVAL_JITTER_S

    with CountingHost() as control:
        chunks = [[UrlRecord(f"{control.url}/c{c}/{i}.png") for i in range(2)] for c in range(3)]
        crawl_in_threads(chunks, crawl_config, tmp_path / "own", None)
    assert min(gaps(sorted(start for _, start, _ in control.requests))) < DELAY_S - ARRIVAL_JITTER_S


def test_one_huge_host_does_not_hold_up_the_other_hosts(tmp_path):
    """Each of 3 chunks has 10 URLs of one huge host and 2 of each of 4 small hosts; every host may take one request
    every 0.1 s. The small hosts (6 requests each) are done while most of the huge host's 30 are still to come."""
    crawl_config = config(per_host_concurrency=1, per_host_min_delay_s=0.1)
    with CountingHost() as huge, HostLeaseServer(1, 0.1) as leases:
        small_hosts = [CountingHost().__enter__() for _ in range(4)]
        try:
            chunks = [[UrlRecord(f"{huge.url}/c{c}/{i}.png") for i in range(10)]
                      + [UrlRecord(f"{small.url}/c{c}/{i}.png") for small in small_hosts for i in range(2)]
                      for c in range(3)]
            results = crawl_in_threads(chunks, crawl_config, tmp_path, leases.address)
        finally:
            for small in small_hosts:
                small.__exit__(None, None, None)
    assert [len(r.downloads) for r in results] == [18, 18, 18]
    small_done = max(end for small in small_hosts for _, _, end in small.requests)
    huge_starts = huge.image_starts()
    assert len(huge_starts) == 30 and huge.max_in_flight == 1
    assert sum(start > small_done for start in huge_starts) >= 15
    for small in small_hosts:
        assert small.max_in_flight == 1 and len(small.image_starts()) == 6


def test_lease_server_frees_the_slots_of_a_closed_connection_and_obeys_pauses():
    async def scenario(address: str) -> list[str]:
        events: list[str] = []
        first, second = HostLeaseClient(address), HostLeaseClient(address)
        held = first.lease("h:80", 0.0)
        await held.__aenter__()  # the first client holds the host's only slot, then its connection drops
        events.append("first granted")

        async def wait_for_slot() -> None:
            async with second.lease("h:80", 0.0):
                events.append("second granted")

        waiting = asyncio.ensure_future(wait_for_slot())
        await asyncio.sleep(0.3)
        events.append("first closes")
        await first.aclose()
        await asyncio.wait_for(waiting, 10)
        second.pause("h:80", 0.5)
        paused = time.monotonic()
        async with second.lease("h:80", 0.0):
            # The server got the pause after `paused` and granted no sooner than 0.5 s after that.
            events.append(f"after pause {time.monotonic() - paused >= 0.5}")
        await second.aclose()
        return events

    with HostLeaseServer(1, 0.0) as leases:
        events = asyncio.run(scenario(leases.address))
    assert events == ["first granted", "first closes", "second granted", "after pause True"]


def test_a_chunk_that_cannot_reach_the_lease_server_fails_and_rejects_nothing(tmp_path):
    with CountingHost() as host:
        urls = [UrlRecord(f"{host.url}/{i}.png") for i in range(3)]
        with pytest.raises(HostLeaseError, match=r"^host lease server 127.0.0.1:1: cannot connect"):
            crawl_chunk(urls, config(robots=False), str(tmp_path / "state"), host_leases="127.0.0.1:1")
        assert host.requests == []
        # Nothing was saved as an outcome, so a rerun with the server up fetches every URL.
        with HostLeaseServer(2, 0.0) as leases:
            result = crawl_chunk(urls, config(robots=False), str(tmp_path / "state"), host_leases=leases.address)
    assert (len(result.downloads), result.rejects) == (3, [])


def test_the_lease_server_serves_only_clients_that_know_the_run_secret():
    async def lease_once(address: str) -> str:
        client = HostLeaseClient(address)
        try:
            async with asyncio.timeout(10):
                async with client.lease("h:80", 0.0):
                    return "granted"
        except HostLeaseError as exc:
            return str(exc)
        finally:
            await client.aclose()

    with HostLeaseServer(1, 0.0) as leases:
        secret, _, where = leases.address.partition("@")
        assert len(secret) == 32 and where == f"127.0.0.1:{leases.port}"
        outcomes = [asyncio.run(lease_once(address))
                    for address in (where, f"{'0' * 32}@{where}", f"{secret[:-1]}@{where}", leases.address)]
    assert outcomes == [f"host lease server {where}: connection lost"] * 3 + ["granted"]
