"""Split a build's input URLs into chunks; a chunk is the unit of work, retry, resume and output (one shard)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from storage.records import UrlRecord


@dataclass(frozen=True)
class Chunk:
    shard_id: str
    urls: tuple[UrlRecord, ...]


def plan_chunks(urls: list[UrlRecord], shard_size: int) -> list[Chunk]:
    """Chunks of `shard_size` URLs in input order, deduplicated by URL (first occurrence kept).

    A chunk's shard id joins its position and a digest of its URLs, so the same inputs give the same shard ids on
    every rebuild (finished shards are skipped), while changed inputs give new ones instead of overwriting.
    """
    seen: set[str] = set()
    unique = []
    for record in urls:
        if record.url not in seen:
            seen.add(record.url)
            unique.append(record)
    chunks = []
    for index, start in enumerate(range(0, len(unique), shard_size)):
        part = tuple(unique[start:start + shard_size])
        digest = hashlib.sha256("\n".join(r.url for r in part).encode()).hexdigest()[:8]
        chunks.append(Chunk(shard_id=f"shard-{index:05d}-{digest}", urls=part))
    return chunks
