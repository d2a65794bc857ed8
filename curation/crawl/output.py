"""The crawl CLI's Parquet outputs: downloads (raw image bytes and provenance) and rejects (REJECT_SCHEMA).

    <out>/downloads/<chunk_id>.parquet   DOWNLOAD_SCHEMA, one row per kept image
    <out>/rejects/<chunk_id>.parquet     storage.schema.REJECT_SCHEMA, stage "crawl" (storage.jobs writes it)
"""
from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq

from curation.crawl.state import chunk_fingerprint
from storage.errors import GadmsError
from storage.fs import atomic_write, filesystem, join
from storage.records import UrlRecord
from storage.schema import DOWNLOAD_SCHEMA
from storage.shards import utc_now

# Images are compressed already and all different: zstd, dictionary encoding and min/max statistics would spend
# CPU on hundreds of MB for nothing (dictionary + statistics alone take seconds per 10,000 images).
_COMPRESSION = {name: ("NONE" if name == "image" else "ZSTD") for name in DOWNLOAD_SCHEMA.names}
_SMALL_COLUMNS = [name for name in DOWNLOAD_SCHEMA.names if name != "image"]
URLS_FINGERPRINT_KEY = b"gadms.urls_fingerprint"


def downloads_path(out_dir: str, chunk_id: str) -> str:
    return join(out_dir, "downloads", f"{chunk_id}.parquet")


def rejects_path(out_dir: str, chunk_id: str) -> str:
    return join(out_dir, "rejects", f"{chunk_id}.parquet")


def write_downloads(downloads: pa.Table, path: str, chunk_id: str, run_id: str,
                    created_at: datetime | None = None, urls_fingerprint: str | None = None) -> None:
    """Write a CrawlResult's `downloads_table` (DOWNLOAD_COLUMNS) with its chunk, run and time columns.

    `urls_fingerprint` (curation.crawl.state.chunk_fingerprint of the chunk's URLs) goes into the file's
    metadata, so a rerun can tell that a finished chunk came from the same URLs (check_same_urls).
    """
    rows = downloads.num_rows
    table = downloads.append_column("chunk_id", pa.array([chunk_id] * rows, pa.string()))
    table = table.append_column("run_id", pa.array([run_id] * rows, pa.string()))
    created = pa.array([created_at or utc_now()] * rows, pa.timestamp("us", tz="UTC"))
    table = table.append_column("created_at", created).cast(DOWNLOAD_SCHEMA)
    if urls_fingerprint:
        table = table.replace_schema_metadata({**DOWNLOAD_SCHEMA.metadata, URLS_FINGERPRINT_KEY: urls_fingerprint})
    with atomic_write(path, native=True) as f:
        pq.write_table(table, f, compression=_COMPRESSION, row_group_size=256, use_dictionary=_SMALL_COLUMNS,
                       write_statistics=_SMALL_COLUMNS)


def check_same_urls(path: str, urls: list[UrlRecord]) -> None:
    """GadmsError when the finished downloads at `path` were crawled from other URLs than `urls`: a rerun with
    another URL list into the same --out would otherwise report the old counts and fetch nothing. Files written
    before the fingerprint was recorded pass."""
    fs, p = filesystem(path)
    with fs.open(p, "rb") as f:
        metadata = pq.ParquetFile(f).schema_arrow.metadata or {}
    recorded = metadata.get(URLS_FINGERPRINT_KEY)
    if recorded is not None and recorded.decode() != chunk_fingerprint(urls):
        raise GadmsError(f"{path}: crawled from another URL list (its chunk of {len(urls)} URLs differs); "
                         "use another --out for this list")
