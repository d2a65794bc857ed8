"""robots.txt per RFC 9309: the group for our product token (else `*`), longest match wins, `*` and `$` patterns.

`RobotsCache` keeps parsed rules per origin with an expiry; it is plain data, so one cache serves many chunks
and is copied to worker processes. Fetching lives in `fetcher.py`.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

# Unreachable robots.txt (5xx, 429, network error) means "disallow all" (RFC 9309 §2.3.1.4); retried sooner.
UNREACHABLE_TTL_S = 600.0


def _pattern_regex(pattern: str) -> re.Pattern:
    anchored = pattern.endswith("$")
    body = unquote(pattern[:-1] if anchored else pattern)
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    return re.compile(regex + ("$" if anchored else ""), re.DOTALL)


@dataclass
class RobotsRules:
    """The rules of one origin that apply to our user agent."""

    rules: list[tuple[bool, str]] = field(default_factory=list)  # (allow, pattern) in file order
    crawl_delay_s: float | None = None
    unreachable: str = ""  # why robots.txt could not be read; then everything is disallowed
    _compiled: list[tuple[int, bool, re.Pattern]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def allow_all(cls) -> RobotsRules:
        return cls()

    @classmethod
    def disallow_all(cls, why: str) -> RobotsRules:
        return cls(unreachable=why)

    def allows(self, path_and_query: str) -> bool:
        if self.unreachable:
            return False
        path = unquote(path_and_query) or "/"
        if path == "/robots.txt":
            return True
        if self._compiled is None:
            self._compiled = [(len(p), allow, _pattern_regex(p)) for allow, p in self.rules if p]
        best_len, best_allow = -1, True
        for length, allow, regex in self._compiled:
            if regex.match(path) and (length > best_len or (length == best_len and allow)):
                best_len, best_allow = length, allow
        return best_allow


def parse_robots(text: str, product_token: str) -> RobotsRules:
    """The rules of the group naming `product_token` (case-insensitive; groups naming it are merged), else of `*`."""
    token = product_token.lower()
    groups: list[tuple[list[str], list[tuple[bool, str]], list[float]]] = []
    in_agents = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        key = key.lower()
        if key == "user-agent":
            if not in_agents:
                groups.append(([], [], []))
                in_agents = True
            groups[-1][0].append(value.lower())
            continue
        if not groups or key not in ("allow", "disallow", "crawl-delay"):
            continue  # rules before any user-agent line belong to no group; sitemap lines to none
        in_agents = False
        if key == "crawl-delay":
            try:
                groups[-1][2].append(float(value))
            except ValueError:
                pass
        else:
            groups[-1][1].append((key == "allow", value))
    for wanted in (token, "*"):
        matching = [g for g in groups if wanted in g[0]]
        if matching:
            rules = [rule for g in matching for rule in g[1]]
            delays = [d for g in matching for d in g[2]]
            return RobotsRules(rules=rules, crawl_delay_s=max(delays) if delays else None)
    return RobotsRules.allow_all()


class RobotsCache:
    """Parsed robots.txt per origin ("scheme://host:port") with an expiry."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, RobotsRules]] = {}

    def get(self, origin: str) -> RobotsRules | None:
        entry = self._entries.get(origin)
        if entry is None:
            return None
        expires_at, rules = entry
        if time.time() >= expires_at:
            del self._entries[origin]
            return None
        return rules

    def put(self, origin: str, rules: RobotsRules) -> None:
        ttl = min(self.ttl_s, UNREACHABLE_TTL_S) if rules.unreachable else self.ttl_s
        self._entries[origin] = (time.time() + ttl, rules)

    def update(self, other: RobotsCache) -> None:
        """Take the entries another cache (a worker's) fetched."""
        self._entries.update(other._entries)

    def __len__(self) -> int:
        return len(self._entries)
