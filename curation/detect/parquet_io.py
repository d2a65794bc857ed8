"""Parquet in and out of the detection stage: crawl downloads in, person crops out.

Downloads: the crawl CLI's `<out>/downloads/<chunk>.parquet` (storage.schema.DOWNLOAD_SCHEMA, bytes in
`image`) or any Parquet with the fields of `storage.records.Download` (bytes in `data`). Only `url` and the bytes
are required; rows without bytes (crawl failures) are skipped, and a missing sha256 is computed.
Crops: storage.schema.CROP_SCHEMA, the fields of `storage.records.PersonCrop`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import GadmsError
from storage.records import Download, PersonCrop
from storage.schema import CROP_SCHEMA

BYTES_COLUMNS = ("data", "image")  # Download's field name, the crawl CLI's column name
# Absent from files written before them (source_meta; then the provenance and face columns of schema v2).
PROVENANCE_COLUMNS = ("fetched_at", "http_status", "x_robots_tag")
OPTIONAL_CROP_COLUMNS = ("source_meta", *PROVENANCE_COLUMNS, "num_faces", "face_boxes")
OPTIONAL_DOWNLOAD_COLUMNS = ("page_url", "alt_text", "sha256", "mime", "width", "height", "source_meta",
                             *PROVENANCE_COLUMNS)


def download_files(path: str | Path) -> list[Path]:
    """The Parquet files of a crawl output: `path` itself, every *.parquet in the folder `path`, or in its
    `downloads/` subfolder (the crawl CLI's output root)."""
    path = Path(path)
    if path.is_dir() and not any(path.glob("*.parquet")) and (path / "downloads").is_dir():
        path = path / "downloads"
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise GadmsError(f"{path}: no .parquet files in this folder")
        return files
    if not path.is_file():
        raise GadmsError(f"{path}: no such file or folder")
    return [path]


def count_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowInvalid) as exc:
        raise GadmsError(f"{path}: not a readable Parquet file: {exc}") from None


# Column kinds of a downloads file, checked from its schema before any image is detected.
_DOWNLOAD_KINDS = {"data": ("binary", pa.types.is_binary, pa.types.is_large_binary),
                   "image": ("binary", pa.types.is_binary, pa.types.is_large_binary),
                   "width": ("integer", pa.types.is_integer), "height": ("integer", pa.types.is_integer),
                   "http_status": ("integer", pa.types.is_integer),
                   "fetched_at": ("timestamp", pa.types.is_timestamp)}
_STRING_KIND = ("string", pa.types.is_string, pa.types.is_large_string)


def _check_download_types(schema: pa.Schema, columns: list[str], path: Path) -> None:
    for name in columns:
        kind, *accepts = _DOWNLOAD_KINDS.get(name, _STRING_KIND)
        found = schema.field(name).type
        if not (pa.types.is_null(found) or any(accept(found) for accept in accepts)):
            raise GadmsError(f"{path}: column {name!r} is {found}, expected {kind}")


def open_downloads(path: Path) -> tuple[pq.ParquetFile, list[str]]:
    """A downloads file and the columns to read (url, the bytes column, the optional ones it has), its column
    names and types checked: a GadmsError naming the file and column, before any image is detected."""
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise GadmsError(f"{path}: not a readable Parquet file: {exc}") from None
    names = set(parquet.schema_arrow.names)
    bytes_column = next((c for c in BYTES_COLUMNS if c in names), None)
    if "url" not in names or bytes_column is None:
        missing = "url" if "url" not in names else "data"
        raise GadmsError(f"{path}: missing column {missing!r} (a crawl output needs url and data or image)")
    columns = ["url", bytes_column, *(c for c in OPTIONAL_DOWNLOAD_COLUMNS if c in names)]
    _check_download_types(parquet.schema_arrow, columns, path)
    return parquet, columns


def iter_downloads(path: Path, batch_rows: int) -> Iterator[tuple[list[Download], int]]:
    """(downloads, rows read) per batch of `batch_rows` rows; rows without bytes count as read but yield nothing."""
    parquet, columns = open_downloads(path)
    bytes_column = columns[1]
    row = 0
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
        downloads = []
        for record in batch.to_pylist():
            row += 1
            data = record[bytes_column]
            if not data:
                continue
            if not isinstance(record["url"], str):
                raise GadmsError(f"{path}: row {row - 1}: column 'url' is not a string")
            downloads.append(
                Download(
                    url=record["url"],
                    page_url=record.get("page_url") or "",
                    alt_text=record.get("alt_text") or "",
                    data=data,
                    sha256=record.get("sha256") or hashlib.sha256(data).hexdigest(),
                    mime=record.get("mime") or "",
                    width=record.get("width") or 0,
                    height=record.get("height") or 0,
                    source_meta=record.get("source_meta"),
                    **{name: record.get(name) for name in PROVENANCE_COLUMNS},
                )
            )
        yield downloads, batch.num_rows


def crops_table(crops: list[PersonCrop]) -> pa.Table:
    rows = [{**dataclasses.asdict(c), "bbox": list(c.bbox)} for c in crops]
    return pa.Table.from_pylist(rows, schema=CROP_SCHEMA)


def read_crops(path: str | Path) -> list[PersonCrop]:
    """PersonCrops back from a crops Parquet file written by `gadms detect`."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise GadmsError(f"{path}: not a readable Parquet file: {exc}") from None
    present = [name for name in CROP_SCHEMA.names if name in table.column_names]
    missing = [name for name in CROP_SCHEMA.names if name not in present and name not in OPTIONAL_CROP_COLUMNS]
    if missing:
        raise GadmsError(f"{path}: missing column {missing[0]!r} (not a crops file of `gadms detect`)")
    return [crop_from_row(record) for record in table.select(present).to_pylist()]


def crop_from_row(row: dict) -> PersonCrop:
    """A PersonCrop from one row of a crops file (read_crops; the caption CLI's batches). Only `sample_id` and
    `image` are required: a missing or NULL column gives the field's empty value, a missing crop_sha256 is
    computed from the image."""
    image = row["image"]
    return PersonCrop(
        sample_id=row["sample_id"],
        source_url=row.get("source_url") or "",
        page_url=row.get("page_url") or "",
        alt_text=row.get("alt_text") or "",
        source_sha256=row.get("source_sha256") or "",
        image=image,
        width=row.get("width") or 0,
        height=row.get("height") or 0,
        bbox=tuple(row.get("bbox") or (0.0, 0.0, 0.0, 0.0)),
        det_score=row.get("det_score") or 0.0,
        keypoints=row.get("keypoints"),
        phash=row.get("phash") or 0,
        crop_sha256=row.get("crop_sha256") or hashlib.sha256(image).hexdigest(),
        **{name: row.get(name) for name in OPTIONAL_CROP_COLUMNS},
    )
