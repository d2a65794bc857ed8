"""Async client for OpenAI-compatible servers (`vllm serve`): chat completions and embeddings.

Bounded requests in flight per endpoint, least-loaded load balancing over several endpoints, timeouts, retries
with exponential backoff (and Retry-After on 429/503) for 5xx, 429, timeouts, connection errors and broken
response bodies. aiohttp rather than httpx: it costs several times less CPU per request at high concurrency.
"""
from __future__ import annotations

import asyncio
import gc
import json
import random
import threading
from dataclasses import dataclass

import aiohttp

from storage.errors import GadmsError

IMAGE_SLOT = "\u0001image\u0001"
_IMAGE_SLOT_JSON = json.dumps(IMAGE_SLOT).encode()


class _QuietGarbageCollector:
    """Fewer, shorter garbage-collector pauses while clients run: a pause stalls every request in flight.

    With hundreds of requests in flight the default collector runs a young-generation pass every few requests
    and a full pass that walks the whole heap (millions of objects in a worker that imported torch) every few
    seconds: measured 60–80 ms stops of the event loop. While at least one client is open, the objects that
    existed before are frozen (full passes skip them) and young passes run 10,000 allocations apart instead of
    700. The last client to close restores the thresholds and unfreezes. Process-wide, so counted across
    threads (flows run several chunks' clients at once).
    """

    YOUNG_THRESHOLD = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved_thresholds: tuple[int, int, int] | None = None

    def enter(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                self._saved_thresholds = gc.get_threshold()
                gc.freeze()
                young, middle, old = self._saved_thresholds
                gc.set_threshold(max(young, self.YOUNG_THRESHOLD), middle, old)

    def exit(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._saved_thresholds is not None:
                gc.set_threshold(*self._saved_thresholds)
                gc.unfreeze()
                self._saved_thresholds = None


_quiet_gc = _QuietGarbageCollector()


class RequestFailed(Exception):
    """A request that got no usable answer after its retries; becomes a reject with `reason`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ServerConfigError(GadmsError):
    """The endpoints cannot serve this run at all (model not served, every endpoint failing)."""


@dataclass
class _Endpoint:
    url: str
    in_flight: int = 0


def _retry_after_seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class ChatClient:
    """Use as `async with ChatClient(...) as client:` inside one event loop."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        in_flight_per_endpoint: int = 64,
        connect_timeout_s: float = 10.0,
        request_timeout_s: float = 120.0,
        retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        abort_after_consecutive_failures: int = 32,
        api_key: str | None = None,
    ):
        self.endpoints = [_Endpoint(url.rstrip("/")) for url in endpoints]
        self.in_flight_per_endpoint = in_flight_per_endpoint
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.abort_after = abort_after_consecutive_failures
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s)
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._slots: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None
        self._next = 0
        self.consecutive_failures = 0
        self.requests_sent = 0

    async def __aenter__(self) -> "ChatClient":
        capacity = self.in_flight_per_endpoint * len(self.endpoints)
        self._slots = asyncio.Semaphore(capacity)
        connector = aiohttp.TCPConnector(limit=capacity, limit_per_host=0, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, headers=self._headers)
        _quiet_gc.enter()
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            _quiet_gc.exit()

    # --- endpoint choice -------------------------------------------------------------------------------
    def _pick(self, avoid: _Endpoint | None) -> _Endpoint:
        """The least-loaded endpoint with a free slot (round-robin among ties), not `avoid` if possible."""
        count = len(self.endpoints)
        order = [self.endpoints[(self._next + i) % count] for i in range(count)]
        self._next = (self._next + 1) % count
        free = [e for e in order if e.in_flight < self.in_flight_per_endpoint]
        preferred = [e for e in free if e is not avoid] or free
        return min(preferred, key=lambda e: e.in_flight)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt) * (0.5 + random.random() / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    # --- one HTTP exchange with retries ------------------------------------------------------------------
    async def _post_json(self, path: str, body: dict, image_data_url: bytes | None = None) -> tuple[dict, str]:
        """POST `body`, return (parsed JSON answer, endpoint URL); retries transport-level failures."""
        assert self._session is not None and self._slots is not None, "use `async with ChatClient(...)`"
        payload = json.dumps(body, separators=(",", ":")).encode()
        if image_data_url is not None:
            payload = payload.replace(_IMAGE_SLOT_JSON, b'"' + image_data_url + b'"', 1)
        reason, detail, failed = "no_attempt", "", None
        for attempt in range(self.retries + 1):
            retry_after = None
            async with self._slots:
                endpoint = self._pick(failed)
                endpoint.in_flight += 1
                self.requests_sent += 1
                try:
                    async with self._session.post(endpoint.url + path, data=payload) as response:
                        status = response.status
                        raw = await response.read()
                        retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
                except asyncio.TimeoutError:
                    status, raw, reason, detail = None, b"", "timeout", f"no answer from {endpoint.url}"
                except aiohttp.ClientPayloadError as exc:
                    status, raw, reason, detail = None, b"", "truncated_response", f"{endpoint.url}: {exc}"
                except (aiohttp.ClientError, OSError) as exc:
                    status, raw, reason, detail = None, b"", "connection_error", f"{endpoint.url}: {exc}"
                finally:
                    endpoint.in_flight -= 1
            if status == 200:
                try:
                    answer = json.loads(raw)
                    if not isinstance(answer, dict):
                        raise ValueError("not a JSON object")
                    self.consecutive_failures = 0
                    return answer, endpoint.url
                except ValueError as exc:
                    reason, detail = "invalid_json_response", f"{endpoint.url}: {exc}"
            elif status is not None:
                message = _error_message(raw)
                self._raise_if_model_missing(status, message, body.get("model"), endpoint.url)
                reason, detail = f"http_{status}", f"{endpoint.url}: {message}"
                if status != 429 and status < 500:
                    break  # the request itself is wrong: retrying cannot help
            failed = endpoint
            if attempt < self.retries:
                await asyncio.sleep(self._backoff(attempt, retry_after))
        # Many failures in a row mean a dead server or a request every server refuses, not bad luck.
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.abort_after:
            raise ServerConfigError(
                f"{self.consecutive_failures} requests in a row failed after retries, last: {reason} ({detail}); "
                f"endpoints {', '.join(e.url for e in self.endpoints)}"
            )
        raise RequestFailed(reason, detail)

    @staticmethod
    def _raise_if_model_missing(status: int, message: str, model: object, url: str) -> None:
        if status == 404 and model and str(model) in message:
            raise ServerConfigError(f"endpoint {url}: model {model!r} does not exist there ({message})")

    # --- public calls ------------------------------------------------------------------------------------
    async def check_models(self, models: list[str]) -> None:
        """Fail at once, naming model and endpoint, when an endpoint does not serve a model we will ask for."""
        assert self._session is not None
        for endpoint in self.endpoints:
            try:
                async with self._session.get(endpoint.url + "/models") as response:
                    raw = await response.read()
                    status = response.status
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                raise ServerConfigError(f"endpoint {endpoint.url}: cannot reach it ({exc or type(exc).__name__})")
            if status != 200:
                raise ServerConfigError(f"endpoint {endpoint.url}: GET /models answered HTTP {status}")
            try:
                served = [entry["id"] for entry in json.loads(raw)["data"]]
            except (ValueError, KeyError, TypeError):
                raise ServerConfigError(f"endpoint {endpoint.url}: GET /models answer is not a model list") from None
            for model in models:
                if model not in served:
                    raise ServerConfigError(
                        f"endpoint {endpoint.url}: model {model!r} is not served there (it serves: {', '.join(served)})"
                    )

    async def chat(self, body: dict, image_data_url: bytes | None = None) -> str:
        """The first choice's message content of a chat completion.

        `image_data_url` (a base64 data URL: JSON-safe as it is) replaces the string IMAGE_SLOT in `body` in the
        encoded request: JSON-encoding a 20 KB image string would cost more CPU than the rest of the request.
        """
        answer, url = await self._post_json("/chat/completions", body, image_data_url)
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RequestFailed("malformed_response", f"{url}: no choices[0].message.content") from None
        if not isinstance(content, str):
            raise RequestFailed("malformed_response", f"{url}: message content is {type(content).__name__}")
        return content

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        answer, url = await self._post_json("/embeddings", {"model": model, "input": texts})
        try:
            rows = sorted(answer["data"], key=lambda row: row["index"])
            vectors = [[float(v) for v in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError):
            raise RequestFailed("malformed_response", f"{url}: embeddings answer without data[].embedding") from None
        if len(vectors) != len(texts):
            raise RequestFailed("malformed_response", f"{url}: {len(vectors)} embeddings for {len(texts)} texts")
        return vectors


def _error_message(raw: bytes) -> str:
    """The server's error text: OpenAI-style {"error": {"message": ...}}, else the body's start."""
    try:
        data = json.loads(raw)
        error = data.get("error", data) if isinstance(data, dict) else data
        message = error.get("message", error) if isinstance(error, dict) else error
        return " ".join(str(message).split())[:300]
    except ValueError:
        return " ".join(raw[:300].decode("utf-8", "replace").split())
