"""Split a build's URL lists into chunks; a chunk is the unit of work, retry, resume and output (one shard).

A chunk refers to its rows (a ListRange: file, row range, fingerprint); it holds no URLs, and the planner never
holds the list: it streams the Parquet footers and text files. The task that processes a chunk reads its rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from curation.crawl.urllist import ListRange, plan_ranges, read_range
from storage.jobs import digest_id
from storage.records import UrlRecord


@dataclass(frozen=True)
class ListSource:
    """One URL list (file or folder, local or fsspec URL) and the columns to read from it."""

    path: str
    url_column: str = "url"
    caption_column: str = "caption"
    extra_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Chunk:
    shard_id: str
    rows: ListRange


def plan_chunks(sources: list[ListSource], shard_size: int, limit: int | None = None) -> Iterator[Chunk]:
    """Chunks of up to `shard_size` rows in input order, covering the first `limit` rows of the lists (all without).

    A shard id digests its rows' identity (file name, range, fingerprint) and nothing else: adding a list file, or
    rows at the end of one, leaves every earlier chunk's id as it was, so a rebuild skips those shards; changed rows
    give a new id instead of an overwrite. Parquet chunks stay within a row group: a row group appended to a file
    leaves the earlier ones' chunks unchanged. (In a text file the last, short chunk grows into a new one.)
    """
    remaining = limit
    for source in sources:
        for rows in plan_ranges(source.path, shard_size, source.url_column, source.caption_column,
                                source.extra_columns, max_rows=remaining):
            yield Chunk(shard_id=shard_id(rows), rows=rows)
            if remaining is not None:
                remaining -= rows.stop - rows.start
        if remaining == 0:
            return


def shard_id(rows: ListRange) -> str:
    return digest_id(rows.identity)


def chunk_rows(chunk: Chunk) -> list[UrlRecord]:
    """Every row of the chunk, in order, repeated URLs included: the crawl (curation.crawl.crawl_chunk) fetches a
    URL once and makes each later row of it a `duplicate_url` reject, so every input row is accounted for. A URL in
    two chunks is crawled by both; the build's sha256/pHash dedup keeps one copy of its image."""
    return list(read_range(chunk.rows))


def chunk_urls(chunk: Chunk) -> list[UrlRecord]:
    """The chunk's rows, one per URL (its first row): what a retry refetches."""
    seen: set[str] = set()
    unique = []
    for record in read_range(chunk.rows):
        if record.url not in seen:
            seen.add(record.url)
            unique.append(record)
    return unique
