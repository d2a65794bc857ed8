"""Takedown blocklists: what a site owner or a person asked to have removed, and the one matcher every stage uses.

A blocklist is a UTF-8 text file, one entry per line; `#` at the start of a line or after whitespace starts a
comment (a URL may hold a `#` of its own), blank lines are ignored:

    url https://example.org/photos/a.jpg     an image URL, or the page an image was found on
    domain example.org                       that host and every subdomain of it (www.example.org, cdn.example.org)
    sha256 <64 hex digits>                   the image's bytes (a source image or a crop)
    phash <16 hex digits>                    a crop's 64-bit pHash (storage.schema `phash`, as hex); a crop within
                                             the near-duplicate radius of it matches

Any other line is an error naming file:line. The list is applied at crawl (a listed URL or domain is never
fetched), at build (a crop whose bytes or pHash match is never kept), by `gadms takedown` on existing shards, and
at export (a listed sample is never written). Every list `gadms takedown` applied is kept under
`<root>/takedown/` and the build and export apply those too, so a rebuild never brings a removed sample back.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa

from storage.errors import GadmsError
from storage.fs import atomic_write, filesystem, join

# Hamming distance (of 64 bits) within which two crops' pHashes are near duplicates; the dedup step's default.
NEAR_DUPLICATE_RADIUS = 6
TAKEDOWN_DIR = "takedown"
KINDS = ("url", "domain", "sha256", "phash")
# Columns of a shard that takedown matching reads (never the images).
MATCH_COLUMNS = ["sample_id", "source_url", "page_url", "source_sha256", "crop_sha256", "phash"]

_HEX = {"sha256": re.compile(r"[0-9a-f]{64}"), "phash": re.compile(r"[0-9a-f]{16}")}
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_PAIRS_PER_BLOCK = 1 << 22  # bounds the temporary array of the pHash comparison


class TakedownListError(GadmsError):
    pass


@dataclass(frozen=True)
class TakedownEntry:
    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"


@dataclass
class TakedownList:
    """The entries of one or more blocklist files, indexed for matching."""

    urls: dict[str, TakedownEntry] = field(default_factory=dict)  # normalised URL → entry
    domains: dict[str, TakedownEntry] = field(default_factory=dict)
    sha256: dict[str, TakedownEntry] = field(default_factory=dict)
    phash_entries: list[TakedownEntry] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.urls) + len(self.domains) + len(self.sha256) + len(self.phash_entries)

    @property
    def phashes(self) -> np.ndarray:
        return np.array([int(e.value, 16) for e in self.phash_entries], dtype=np.uint64)

    def add(self, entry: TakedownEntry) -> None:
        if entry.kind == "url":
            self.urls.setdefault(normalise_url(entry.value), entry)
        elif entry.kind == "domain":
            self.domains.setdefault(entry.value, entry)
        elif entry.kind == "sha256":
            self.sha256.setdefault(entry.value, entry)
        elif entry not in self.phash_entries:
            self.phash_entries.append(entry)

    def extend(self, other: "TakedownList") -> "TakedownList":
        for entry in other.entries():
            self.add(entry)
        return self

    def entries(self) -> list[TakedownEntry]:
        return [*self.urls.values(), *self.domains.values(), *self.sha256.values(), *self.phash_entries]

    def url_entry(self, *urls: str | None) -> TakedownEntry | None:
        """The entry that lists any of `urls` (an image URL, its page URL) or a domain they are on, or None."""
        if not self.urls and not self.domains:
            return None
        for url in urls:
            parsed = _split(url) if url else None
            if parsed is None:
                continue
            normalised, host = parsed
            entry = self.urls.get(normalised)
            while entry is None and host and self.domains:
                entry = self.domains.get(host)
                host = host.partition(".")[2]
            if entry is not None:
                return entry
        return None

    def sha256_entry(self, *digests: str | None) -> TakedownEntry | None:
        for digest in digests:
            entry = self.sha256.get(digest or "")
            if entry is not None:
                return entry
        return None

    def phash_matches(self, hashes: np.ndarray, radius: int) -> np.ndarray:
        """For each hash, the index in `phash_entries` of the closest entry within `radius` bits, or -1.

        A full comparison with every pHash entry: takedown requests name images one by one, so the list's pHash
        entries stay few (benchmarks/takedown_match.py: 100,000 crops against 1,000 entries in about 2 s on a
        busy core); URL, domain and sha256 entries, which can be many, are hash lookups.
        """
        hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        match = np.full(len(hashes), -1, dtype=np.int64)
        entries = self.phashes
        if not len(entries) or not len(hashes):
            return match
        step = max(1, _PAIRS_PER_BLOCK // len(entries))
        for start in range(0, len(hashes), step):
            distance = np.bitwise_count(hashes[start:start + step, None] ^ entries[None, :])
            nearest = distance.argmin(axis=1)
            close = distance[np.arange(len(nearest)), nearest] <= radius
            match[start:start + step][close] = nearest[close]
        return match

    def table_matches(self, table: pa.Table, radius: int) -> list[TakedownEntry | None]:
        """The entry each row of a table with MATCH_COLUMNS matches (URL or domain, then sha256, then pHash)."""
        near = self.phash_matches(table.column("phash").to_numpy(), radius)
        names = ("source_url", "page_url", "source_sha256", "crop_sha256")
        columns = (table.column(name).to_pylist() for name in names)
        return [self.sample_entry(*row, near=int(k)) for row, k in zip(zip(*columns), near)]

    def sample_entry(self, source_url: str, page_url: str | None, source_sha256: str, crop_sha256: str,
                     near: int) -> TakedownEntry | None:
        """The entry a sample matches, or None: its URLs or their domain, then its bytes, then its pHash (`near`:
        the index phash_matches gave it)."""
        return (self.url_entry(source_url, page_url) or self.sha256_entry(source_sha256, crop_sha256)
                or (self.phash_entries[near] if near >= 0 else None))


def normalise_url(url: str) -> str:
    """Scheme and host lower-cased, default port and fragment dropped: the same resource written two ways matches."""
    parsed = _split(url)
    return parsed[0] if parsed is not None else url.strip()


def _split(url: str) -> tuple[str, str] | None:
    """(normalised URL, host) of `url`, from one parse; None when it does not parse."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").rstrip(".")
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")), host


def _entry(line: str, where: str) -> TakedownEntry | None:
    # '#' starts a comment at the start of a line or after whitespace (a URL may hold a '#' of its own).
    text = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
    if not text:
        return None
    kind, _, value = text.partition(" ")
    value = value.strip()
    if kind not in KINDS:
        raise TakedownListError(f"{where}: unknown entry kind {kind!r} (expected one of {', '.join(KINDS)})")
    if not value or len(value.split()) != 1:
        raise TakedownListError(f"{where}: {kind} needs exactly one value, got {value!r}")
    if kind == "url":
        parts = urlsplit(value)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise TakedownListError(f"{where}: url {value[:200]!r} is not an http(s) URL with a host")
    elif kind == "domain":
        value = value.lower().rstrip(".")
        if not _HOST.fullmatch(value):
            raise TakedownListError(f"{where}: domain {value[:200]!r} is not a host name (no scheme, port or path)")
    else:
        value = value.lower()
        if not _HEX[kind].fullmatch(value):
            digits = 64 if kind == "sha256" else 16
            raise TakedownListError(f"{where}: {kind} {value[:80]!r} is not {digits} hex digits")
    return TakedownEntry(kind, value)


def parse_takedown_list(text: str, name: str) -> TakedownList:
    """Entries of a blocklist's text; TakedownListError naming `name:line` at the first bad line."""
    parsed = TakedownList()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = _entry(line, f"{name}:{number}")
        if entry is not None:
            parsed.add(entry)
    return parsed


def read_takedown_text(path: str) -> str:
    fs, p = filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        raise TakedownListError(f"{path}: takedown list not found") from None
    except IsADirectoryError:
        raise TakedownListError(f"{path}: takedown list is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise TakedownListError(f"{path}: takedown list is not UTF-8 text: {exc}") from None


def read_takedown_list(path: str) -> TakedownList:
    return parse_takedown_list(read_takedown_text(path), path)


def applied_lists_dir(root: str) -> str:
    return join(root, TAKEDOWN_DIR)


def applied_takedown_list(root: str) -> TakedownList:
    """Every list `gadms takedown` applied to `root` (kept under <root>/takedown/), merged."""
    fs, p = filesystem(applied_lists_dir(root))
    merged = TakedownList()
    if fs.exists(p):
        for name in sorted(fs.ls(p, detail=False)):
            base = name.rsplit("/", 1)[-1]
            if base.endswith(".txt") and not base.startswith("."):
                merged.extend(read_takedown_list(join(applied_lists_dir(root), base)))
    return merged


def record_applied_list(root: str, text: str) -> str:
    """Keep a copy of an applied list's text under <root>/takedown/ (named by its sha256, so reapplying it adds
    nothing); return its path."""
    path = join(applied_lists_dir(root), f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.txt")
    fs, p = filesystem(path)
    if not fs.exists(p):
        with atomic_write(path, "w") as f:
            f.write(text)
    return path


def effective_takedown_list(root: str, extra_lists: list[str] | tuple[str, ...] = ()) -> TakedownList:
    """What a stage writing or reading `root` must honour: the lists applied to it and the ones given."""
    merged = applied_takedown_list(root)
    for path in extra_lists:
        merged.extend(read_takedown_list(path))
    return merged
