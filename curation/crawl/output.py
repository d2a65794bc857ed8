"""The crawl CLI's Parquet outputs: downloads (raw image bytes and provenance) and rejects (REJECT_SCHEMA).

    <out>/downloads/<chunk_id>.parquet   DOWNLOAD_SCHEMA, one row per kept image
    <out>/rejects/<chunk_id>.parquet     storage.schema.REJECT_SCHEMA, stage "crawl"
"""
from __future__ import annotations

import io
from datetime import datetime
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import atomic_write, filesystem, join
from storage.records import Download
from storage.schema import SCHEMA_VERSION, SCHEMA_VERSION_KEY
from storage.shards import rejects_table, utc_now, write_parquet_atomic

DOWNLOAD_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("page_url", pa.string()),
        pa.field("alt_text", pa.string()),
        pa.field("image", pa.binary(), nullable=False),  # the bytes as served: not decoded, not re-encoded
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("mime", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)
# Images are compressed already: zstd would spend CPU for nothing on them.
_COMPRESSION = {name: ("NONE" if name == "image" else "ZSTD") for name in DOWNLOAD_SCHEMA.names}


def downloads_path(out_dir: str, chunk_id: str) -> str:
    return join(out_dir, "downloads", f"{chunk_id}.parquet")


def rejects_path(out_dir: str, chunk_id: str) -> str:
    return join(out_dir, "rejects", f"{chunk_id}.parquet")


def write_downloads(downloads: list[Download], path: str, chunk_id: str, run_id: str,
                    created_at: datetime | None = None) -> None:
    created_at = created_at or utc_now()
    columns = {
        "url": [d.url for d in downloads],
        "page_url": [d.page_url for d in downloads],
        "alt_text": [d.alt_text for d in downloads],
        "image": [d.data for d in downloads],
        "sha256": [d.sha256 for d in downloads],
        "mime": [d.mime for d in downloads],
        "width": [d.width for d in downloads],
        "height": [d.height for d in downloads],
        "chunk_id": [chunk_id] * len(downloads),
        "run_id": [run_id] * len(downloads),
        "created_at": [created_at] * len(downloads),
    }
    table = pa.Table.from_pydict(columns, schema=DOWNLOAD_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=_COMPRESSION, row_group_size=256)
    with atomic_write(path) as f:
        f.write(buffer.getbuffer())


def write_rejects(rejects, path: str, chunk_id: str, run_id: str) -> None:
    write_parquet_atomic(rejects_table(rejects, chunk_id, run_id), path)


def read_downloads(path: str) -> Iterator[Download]:
    """The downloads of one output file, as the records the detection stage takes."""
    fs, p = filesystem(path)
    with fs.open(p, "rb") as f:
        parquet = pq.ParquetFile(f)
        for batch in parquet.iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield Download(
                    url=row["url"], page_url=row["page_url"] or "", alt_text=row["alt_text"] or "",
                    data=row["image"], sha256=row["sha256"], mime=row["mime"], width=row["width"],
                    height=row["height"],
                )
