"""The crawl's reject reasons, and the selection `gadms build --retry-failed` takes (e.g. timeout,http_5xx)."""
from __future__ import annotations

import re

from storage.errors import GadmsError

# What a fetch or the image check can end in (besides http_<status>); duplicates are not failures to retry.
FETCH_REASONS = (
    "invalid_url", "private_address", "dns_error", "connect_error", "connection_error", "tls_error", "timeout",
    "redirect_loop", "too_many_redirects", "robots_disallowed", "robots_unreachable", "opt_out", "too_large",
    "bad_response", "http_error", "not_an_image", "unsupported_format", "decode_error", "truncated", "bomb",
    "internal_error",
)
_HTTP = re.compile(r"http_([1-5])(xx|\d\d)")


def parse_retry_reasons(text: str) -> tuple[str, ...]:
    """`timeout,connect_error,http_5xx,http_429` → its names; `http_5xx` stands for every http_5NN. A name the
    crawl never writes is a GadmsError naming it."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise GadmsError("--retry-failed: give crawl reject reasons, e.g. timeout,connect_error,http_5xx,http_429")
    for name in names:
        if name not in FETCH_REASONS and not _HTTP.fullmatch(name):
            raise GadmsError(f"--retry-failed: {name!r} is not a crawl reject reason (one of {', '.join(FETCH_REASONS)}, "
                             "http_<status> or http_4xx/http_5xx)")
    return names


def reason_selected(reason: str, selection: tuple[str, ...]) -> bool:
    if reason in selection:
        return True
    http = _HTTP.fullmatch(reason)
    return http is not None and f"http_{http.group(1)}xx" in selection
