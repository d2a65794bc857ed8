"""One polite, safe HTTP GET: address policy, robots.txt, per-host limits, retries, redirects, byte cap.

Every failure is a `FetchFailure` whose `reason` is the rejects-table reason (timeout, http_404, ...).
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from curation.crawl.config import CrawlConfig
from curation.crawl.hostleases import HostLeaseClient
from curation.crawl.limiter import HostLimiter
from curation.crawl.robots import RobotsCache, RobotsRules, parse_robots
from curation.crawl.safety import AddressPolicy, PrivateAddressError, SafeResolver
from storage.errors import GadmsError

log = logging.getLogger(__name__)

REDIRECT_STATUSES = {301, 302, 303, 307, 308}
RETRY_STATUSES = {429, 500, 502, 503, 504}
# Failures that are about the host itself; seen while fetching robots.txt they become the URL's own reason.
HOST_FAILURES = {"private_address", "invalid_url", "dns_error", "connect_error", "tls_error"}
IMAGE_ACCEPT = "image/webp,image/png,image/jpeg,image/gif,image/*;q=0.8,*/*;q=0.5"
PAGE_ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"


class FetchFailure(Exception):
    def __init__(self, reason: str, detail: str = "", retryable: bool = False, retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass
class Response:
    url: URL  # after redirects
    status: int
    headers: CIMultiDictProxy
    body: bytes
    fetched_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))  # when the body was complete


class _Redirect(Exception):
    def __init__(self, location: URL):
        self.location = location


def parse_url(url: str) -> URL:
    try:
        parsed = URL(url.strip())
    except (ValueError, TypeError) as exc:
        raise FetchFailure("invalid_url", f"cannot parse: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise FetchFailure("invalid_url", f"not an absolute http(s) URL: {url[:200]!r}")
    # DNS caps names at 253 characters and labels at 63; the resolver's idna codec raises on longer ones.
    if len(parsed.raw_host) > 253 or any(len(label) > 63 for label in parsed.raw_host.split(".")):
        raise FetchFailure("invalid_url", f"host name longer than DNS allows: {parsed.raw_host[:60]}...")
    return parsed


def check_http_url(value: str, name: str) -> None:
    """A URL given on the command line (a seed page, a base URL): a one-line GadmsError unless absolute http(s)."""
    try:
        parse_url(value)
    except FetchFailure as failure:
        raise GadmsError(f"{name} {value[:200]!r}: {failure.detail}") from None


def host_key(url: URL) -> str:
    """What per-host limits apply to: host and port."""
    return f"{url.host}:{url.port}"


def origin(url: URL) -> str:
    return f"{url.scheme}://{url.host}:{url.port}"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def opt_out_directive(headers: CIMultiDictProxy, directives: list[str], product_token: str) -> str | None:
    """The first X-Robots-Tag directive that opts out; `bot: directive` applies only when bot is us (or *)."""
    token = product_token.lower()
    for header in headers.getall("X-Robots-Tag", []):
        scope_ok = True
        for part in header.split(","):
            part = part.strip().lower()
            if ":" in part:  # "googlebot: noindex" starts a directive list for one user agent
                agent, part = (p.strip() for p in part.split(":", 1))
                scope_ok = agent in (token, "*")
            if scope_ok and part in directives:
                return part
    return None


def _backoff(config: CrawlConfig, attempt: int) -> float:
    """Exponential backoff with full jitter (AWS's variant: spreads retries of many clients apart)."""
    return random.uniform(0, min(config.backoff_max_s, config.backoff_base_s * 2**attempt))


class Fetcher:
    """An aiohttp session with the crawl's limits. Use as `async with Fetcher(config, robots_cache) as f:`.

    `host_leases` (the run's lease server, `host:port`) makes the per-host limits hold across every loop of the run
    (curation.crawl.hostleases); without it they hold within this loop."""

    def __init__(self, config: CrawlConfig, robots_cache: RobotsCache, concurrency: int | None = None,
                 per_host_concurrency: int | None = None, delay_scale: float = 1.0, host_leases: str | None = None):
        self.config = config
        self.robots_cache = robots_cache
        self.policy = AddressPolicy(config.allow_private_addresses)
        self.in_flight_limit = concurrency or config.concurrency
        self.limiter = HostLimiter(
            per_host_concurrency or config.per_host_concurrency,
            config.per_host_min_delay_s * delay_scale,
            config.max_crawl_delay_s * delay_scale,
            shared=HostLeaseClient(host_leases) if host_leases else None,
        )
        self.delay_scale = delay_scale
        self._robots_pending: dict[str, asyncio.Future] = {}
        self.timeout = aiohttp.ClientTimeout(
            total=config.total_timeout_s, connect=config.connect_timeout_s, sock_read=config.read_timeout_s
        )

    async def __aenter__(self) -> Fetcher:
        self.in_flight = asyncio.Semaphore(self.in_flight_limit)
        connector = aiohttp.TCPConnector(
            limit=self.in_flight_limit,
            limit_per_host=0,  # HostLimiter does it, with delays and pauses
            resolver=SafeResolver(self.policy),
            ttl_dns_cache=300,
            ssl=self.config.verify_tls,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self.config.user_agent, "Accept": IMAGE_ACCEPT},  # most requests are images
            cookie_jar=aiohttp.DummyCookieJar(),
            max_field_size=16384,
        )
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.session.close()
        if self.limiter.shared is not None:
            await self.limiter.shared.aclose()

    async def get(self, url: URL, *, max_bytes: int, accept: str, check_opt_out: bool,
                  check_robots: bool = True, truncate: bool = False) -> Response:
        """GET `url` following redirects; each hop passes the address policy and robots.txt. A body longer
        than `max_bytes` is a too_large failure, or cut there with `truncate` (robots.txt: RFC 9309 §2.5)."""
        seen = {url}
        for _ in range(self.config.max_redirects + 1):
            await self._check_allowed(url, check_robots)
            try:
                return await self._get_with_retries(url, max_bytes, accept, check_opt_out, truncate)
            except _Redirect as redirect:
                url = redirect.location
                if url in seen:
                    raise FetchFailure("redirect_loop", f"back to {url}") from None
                seen.add(url)
        raise FetchFailure("too_many_redirects", f"more than {self.config.max_redirects}, last {url}")

    async def _check_allowed(self, url: URL, check_robots: bool) -> None:
        if self.policy.refuses_literal(url.host):
            raise FetchFailure("private_address", f"{url.host} is not a public address")
        if not (check_robots and self.config.robots):
            return
        rules = await self.robots(url)
        if rules.crawl_delay_s:  # also for rules cached by an earlier chunk
            self.limiter.set_crawl_delay(host_key(url), rules.crawl_delay_s * self.delay_scale)
        if rules.unreachable:
            raise FetchFailure("robots_unreachable", rules.unreachable)
        if not rules.allows(url.raw_path_qs):
            raise FetchFailure("robots_disallowed", f"{origin(url)}/robots.txt disallows {url.raw_path}")

    async def robots(self, url: URL) -> RobotsRules:
        """The robots.txt rules of the URL's origin: cached, fetched once even when many requests wait for it."""
        key = origin(url)
        rules = self.robots_cache.get(key)
        if rules is not None:
            return rules
        pending = self._robots_pending.get(key)
        if pending is None:
            pending = self._robots_pending[key] = asyncio.ensure_future(self._fetch_robots(url))
        rules = await asyncio.shield(pending)
        self._robots_pending.pop(key, None)
        return rules

    async def _fetch_robots(self, url: URL) -> RobotsRules:
        robots_url = url.with_path("/robots.txt").with_query(None).with_fragment(None)
        try:
            response = await self.get(
                robots_url, max_bytes=self.config.robots_max_bytes, accept="text/plain", check_opt_out=False,
                check_robots=False, truncate=True,
            )
            rules = parse_robots(response.body.decode("utf-8", "replace"), self.config.user_agent_token)
        except FetchFailure as failure:
            if failure.reason in HOST_FAILURES:
                raise  # the image would fail the same way: report that, not "robots unreachable"
            status = int(failure.reason[5:]) if failure.reason.startswith("http_") else None
            if status is not None and 400 <= status < 500 and status != 429:
                rules = RobotsRules.allow_all()  # no robots.txt: everything allowed
            else:
                rules = RobotsRules.disallow_all(f"robots.txt: {failure.reason} {failure.detail}".strip())
        self.robots_cache.put(origin(url), rules)
        return rules

    async def _get_with_retries(self, url: URL, max_bytes: int, accept: str, check_opt_out: bool,
                                truncate: bool) -> Response:
        attempt = 0
        while True:
            try:
                return await self._get_once(url, max_bytes, accept, check_opt_out, truncate)
            except FetchFailure as failure:
                if not failure.retryable or attempt >= self.config.retries:
                    raise
                if failure.retry_after is not None:
                    if failure.retry_after > self.config.max_retry_after_s:
                        failure.detail = f"Retry-After {failure.retry_after:.0f}s exceeds max_retry_after_s"
                        raise
                    self.limiter.pause(host_key(url), failure.retry_after)  # the whole host waits
                else:
                    await asyncio.sleep(_backoff(self.config, attempt))
                attempt += 1

    async def _get_once(self, url: URL, max_bytes: int, accept: str, check_opt_out: bool,
                        truncate: bool) -> Response:
        async with self.limiter.slot(host_key(url), self.in_flight):
            try:
                async with self.session.get(
                    url, allow_redirects=False, timeout=self.timeout,
                    headers=None if accept == IMAGE_ACCEPT else {"Accept": accept}
                ) as resp:
                    return await self._read(url, resp, max_bytes, check_opt_out, truncate)
            except FetchFailure:
                raise
            except _Redirect:
                raise
            except asyncio.TimeoutError:
                raise FetchFailure("timeout", "no complete answer within the configured timeouts", True) from None
            except aiohttp.ClientConnectorDNSError as exc:
                if isinstance(exc.__cause__, PrivateAddressError):
                    raise FetchFailure("private_address", str(exc.__cause__)) from None
                raise FetchFailure("dns_error", str(exc)) from None
            except aiohttp.ClientSSLError as exc:
                raise FetchFailure("tls_error", str(exc)) from None
            except aiohttp.ClientConnectorError as exc:
                raise FetchFailure("connect_error", str(exc), True) from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                raise FetchFailure("connection_error", f"{type(exc).__name__}: {exc}", True) from None
            except aiohttp.InvalidURL as exc:
                raise FetchFailure("invalid_url", str(exc)) from None
            except aiohttp.ClientResponseError as exc:
                raise FetchFailure("bad_response", f"{exc.status} {exc.message}") from None
            except aiohttp.ClientError as exc:
                raise FetchFailure("http_error", f"{type(exc).__name__}: {exc}") from None

    async def _read(self, url: URL, resp: aiohttp.ClientResponse, max_bytes: int, check_opt_out: bool,
                    truncate: bool) -> Response:
        status = resp.status
        if status in REDIRECT_STATUSES:
            location = resp.headers.get("Location")
            if not location:
                raise FetchFailure(f"http_{status}", "redirect without a Location header")
            try:
                target = url.join(URL(location))
            except ValueError:
                raise FetchFailure("invalid_url", f"redirect to unparseable {location[:200]!r}") from None
            if target.scheme not in ("http", "https") or not target.host:
                raise FetchFailure("invalid_url", f"redirect to non-http URL {location[:200]!r}")
            raise _Redirect(target.with_fragment(None))
        if status in RETRY_STATUSES:
            retry_after = parse_retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else None
            raise FetchFailure(f"http_{status}", resp.reason or "", True, retry_after)
        if not 200 <= status < 300:
            raise FetchFailure(f"http_{status}", resp.reason or "")
        if check_opt_out:
            directive = opt_out_directive(resp.headers, self.config.opt_out_directives, self.config.user_agent_token)
            if directive:
                raise FetchFailure("opt_out", f"X-Robots-Tag: {directive}")
        length = resp.content_length
        if length is not None and length > max_bytes and not truncate:
            raise FetchFailure("too_large", f"Content-Length {length} > {max_bytes}")
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        if length is not None and length <= max_bytes and not encoded:
            body = await resp.read()  # bounded by Content-Length
        else:  # unknown or compressed length: stream, and stop past the cap (a gzip bomb stops here too)
            chunks, size = [], 0
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                chunks.append(chunk)
                if size > max_bytes:
                    if not truncate:
                        raise FetchFailure("too_large", f"body passed {max_bytes} bytes")
                    break
            body = b"".join(chunks)[:max_bytes]
        return Response(url, status, resp.headers, body)
