"""One URL-list file in one of img2dataset's input formats: its column names first, then its rows.

txt (one URL per line, no header), csv, tsv, json (an array of objects, or pandas' default {column: {row: value}}),
jsonl (one object per line), parquet;
the text formats optionally .gz. Everything but json streams: txt/csv/tsv/jsonl line by line, parquet by batches.
A row range reads a Parquet file's row groups that hold it only; a text file is read from its start up to the range.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import GadmsError
from storage.jsonl import iter_jsonl

FORMATS = ("txt", "csv", "tsv", "json", "jsonl", "parquet")
PARQUET_BATCH_ROWS = 65_536


def format_of(path: str) -> tuple[str, str | None] | None:
    """(format, compression) from the file name, or None when it is not a URL list."""
    name = path.lower()
    compression = None
    if name.endswith(".gz"):
        compression, name = "gzip", name[:-3]
    fmt = name.rsplit(".", 1)[-1] if "." in name.rsplit("/", 1)[-1] else ""
    if fmt in FORMATS and not (fmt == "parquet" and compression):
        return fmt, compression
    return None


@dataclass
class ListFile:
    """An open URL list: `columns` (txt: its one column, named `txt_column`) and `rows(wanted)`, which yields
    one tuple of values per row in the order of `wanted` (a missing value is None). `wanted[0]` is the URL
    column: a jsonl row without it is an error (the other jsonl rows may lack keys, as in pandas)."""

    columns: list[str]
    rows: Callable[[list[str]], Iterator[tuple]]
    parquet: pq.ParquetFile | None = None


def rows_in_range(list_file: ListFile, wanted: list[str], start: int, stop: int) -> Iterator[tuple]:
    """The rows `start` ≤ row < `stop` (0-based, in file order) of `list_file.rows(wanted)`."""
    if list_file.parquet is None:
        return itertools.islice(list_file.rows(wanted), start, stop)
    return _parquet_range(list_file.parquet, wanted, start, stop)


def row_group_spans(parquet: pq.ParquetFile) -> Iterator[tuple[int, int, str]]:
    """(first row, end row, fingerprint) of each row group, from the footer alone. The fingerprint digests the
    group's row count and its columns' sizes and statistics: rewriting the file with more row groups at its end
    leaves the earlier groups' fingerprints as they were."""
    start = 0
    for index in range(parquet.metadata.num_row_groups):
        group = parquet.metadata.row_group(index)
        parts = [str(group.num_rows)]
        for column in (group.column(j) for j in range(group.num_columns)):
            stats = column.statistics
            parts += [column.path_in_schema, str(column.total_compressed_size), str(column.total_uncompressed_size),
                      repr((stats.min, stats.max, stats.null_count)) if stats is not None and stats.has_min_max else ""]
        yield start, start + group.num_rows, hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]
        start += group.num_rows


@contextmanager
def open_list_file(fs: fsspec.AbstractFileSystem, path: str, source: str, txt_column: str) -> Iterator[ListFile]:
    fmt, compression = format_of(path)
    if fmt == "parquet":
        with fs.open(path, "rb") as f:
            yield _parquet(parquet_file(f, source))
        return
    with fs.open(path, "rb", compression=compression) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        if fmt == "txt":
            yield ListFile([txt_column], lambda wanted: ((line.strip(),) for line in text if line.strip()))
        elif fmt == "json":
            yield _json(text, source)
        elif fmt == "jsonl":
            yield _jsonl(text, source)
        else:
            yield _delimited(text, "\t" if fmt == "tsv" else ",", source)


def parquet_file(f, source: str) -> pq.ParquetFile:
    """An open Parquet URL list; an empty, truncated or foreign file is a GadmsError naming it."""
    try:
        return pq.ParquetFile(f)
    except (pa.ArrowInvalid, OSError) as exc:
        raise GadmsError(f"{source}: not a readable Parquet file: {exc}") from None


def _parquet(parquet: pq.ParquetFile) -> ListFile:
    def rows(wanted: list[str]) -> Iterator[tuple]:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
            data = batch.to_pydict()
            yield from zip(*(data[name] for name in wanted))

    return ListFile(parquet.schema_arrow.names, rows, parquet)


def _parquet_range(parquet: pq.ParquetFile, wanted: list[str], start: int, stop: int) -> Iterator[tuple]:
    groups = [(index, first) for index, (first, end, _) in enumerate(row_group_spans(parquet))
              if first < stop and end > start]
    if not groups:
        return
    position = groups[0][1]  # row number of the next batch's first row
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted,
                                      row_groups=[index for index, _ in groups]):
        part = batch.slice(max(start - position, 0), max(stop - max(position, start), 0))
        position += batch.num_rows
        if part.num_rows:
            data = part.to_pydict()
            yield from zip(*(data[name] for name in wanted))
        if position >= stop:
            return


def _delimited(text: io.TextIOBase, delimiter: str, source: str) -> ListFile:
    reader = csv.reader(text, delimiter=delimiter)

    def checked(read: Iterator[list[str]]) -> Iterator[list[str]]:
        try:  # csv.Error: a field over csv.field_size_limit() (128 KiB), a NUL byte
            yield from read
        except csv.Error as exc:
            raise GadmsError(f"{source}:{reader.line_num}: {exc}") from None

    lines = checked(reader)
    header = next(lines, [])

    def rows(wanted: list[str]) -> Iterator[tuple]:
        positions = [header.index(name) for name in wanted]
        for row in lines:
            yield tuple(row[i] if i < len(row) else None for i in positions)

    return ListFile(header, rows)


def _json(text: io.TextIOBase, source: str) -> ListFile:
    # The json format is one array (img2dataset reads it with pandas.read_json): it cannot stream, so it is
    # parsed whole; use jsonl or parquet for large lists.
    try:
        records = json.load(text)
    except json.JSONDecodeError as exc:
        raise GadmsError(f"{source}: not a JSON array: {exc.msg} (line {exc.lineno})") from None
    if isinstance(records, dict) and all(isinstance(v, dict) for v in records.values()):
        records = _records_from_columns(records)  # pandas' default to_json: {column: {index: value}}
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise GadmsError(f"{source}: expected a JSON array of objects, or an object of columns")
    columns = list(dict.fromkeys(key for record in records for key in record))  # pandas takes the union
    return ListFile(columns, lambda wanted: (tuple(r.get(name) for name in wanted) for r in records))


def _records_from_columns(columns: dict[str, dict]) -> list[dict]:
    """Rows of pandas' "columns" JSON layout, in index order (its keys are the row labels, as strings)."""
    labels = list(dict.fromkeys(label for values in columns.values() for label in values))
    if all(label.lstrip("-").isdigit() for label in labels):
        labels.sort(key=int)
    return [{name: values[label] for name, values in columns.items() if label in values} for label in labels]


def _jsonl(text: io.TextIOBase, source: str) -> ListFile:
    lines = iter_jsonl(text, source)
    first = next(lines, None)  # its keys are the file's columns

    def rows(wanted: list[str]) -> Iterator[tuple]:
        for line_number, row in itertools.chain([first] if first else [], lines):
            if wanted[0] not in row:
                raise GadmsError(f"{source}:{line_number}: no column {wanted[0]!r}")
            yield tuple(row.get(name) for name in wanted)

    return ListFile(list(first[1]) if first else [], rows)
