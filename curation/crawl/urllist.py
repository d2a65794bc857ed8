"""URL lists in img2dataset's input formats (see listformats), one file or a folder of them, local or any fsspec
URL. COYO-700M (`url`, `text`) and LAION (`URL`, `TEXT`) parquet files load as they are: when the default column
names are missing, their usual spellings are tried. `extra_columns` (img2dataset's save_additional_columns)
travel with each record as `source_meta`, a JSON object string, and so do the list's licence and NSFW columns
(POLICY_COLUMNS) whenever it has them, asked for or not: what a source says about an image's licence or safety
stays with every sample made from it.

A folder is read as img2dataset reads one: its top-level files only, all of one format, all with the same columns.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from curation.crawl.listformats import (FORMATS, ListFile, format_of, open_list_file, parquet_file, row_group_spans,
                                          rows_in_range)
from storage.errors import GadmsError
from storage.fs import atomic_write, filesystem
from storage.records import UrlRecord

# Spellings tried, in order, when a default column name is absent (LAION writes URL/TEXT, COYO url/text).
URL_ALIASES = ("url", "URL", "image_url")
CAPTION_ALIASES = ("caption", "text", "TEXT", "alt", "alt_text", "ALT_TEXT")
PAGE_URL_COLUMN = "page_url"
# Licence and NSFW columns of the common lists: LAION-400M (LICENSE, NSFW), LAION-5B (punsafe), COYO-700M (its two
# NSFW scores). Kept in source_meta as the list has them: names, types and scales differ from list to list.
POLICY_COLUMNS = ("LICENSE", "license", "NSFW", "nsfw", "punsafe", "nsfw_score_opennsfw2", "nsfw_score_gantman")
SUFFIXES = ", ".join(f".{fmt}" for fmt in FORMATS)


@dataclass(frozen=True)
class ListColumns:
    """The columns of one list file that make its UrlRecords, aliases resolved: `caption` None when it has none."""

    url: str
    caption: str | None
    page_url: bool
    extra: tuple[str, ...]

    def wanted(self) -> list[str]:
        return [self.url, *([self.caption] if self.caption else []), *([PAGE_URL_COLUMN] if self.page_url else []),
                *self.extra]

    def record(self, values: tuple, source: str, row: int) -> UrlRecord:
        values = list(values)
        url = values.pop(0)
        if not isinstance(url, str | None):  # e.g. an int or list column: the whole list is wrong
            raise GadmsError(f"{source}: row {row}: {self.url} is {type(url).__name__} {str(url)[:60]}, "
                             "expected a URL string")
        caption = values.pop(0) if self.caption else ""
        page_url = values.pop(0) if self.page_url else ""
        meta = json.dumps(dict(zip(self.extra, values)), default=str) if self.extra else None
        return UrlRecord(url=str(url or "").strip(), alt_text=str(caption or ""), page_url=str(page_url or "").strip(),
                         source_meta=meta)


@dataclass(frozen=True)
class ListRange:
    """Rows `start` ≤ row < `stop` of one list file, and a fingerprint of those rows: what a build chunk reads.

    `path` is an fsspec URL, so a worker on another host reads the range itself. The fingerprint comes from the
    rows' content (text formats) or from the footer of the row group holding them (Parquet)."""

    path: str
    start: int
    stop: int
    fingerprint: str
    columns: ListColumns

    @property
    def identity(self) -> str:
        """File name, range and fingerprint: equal for the same rows of the same file, wherever it is stored."""
        return f"{self.path.rsplit('/', 1)[-1]}:{self.start}-{self.stop}:{self.fingerprint}"


def read_url_list(path_or_url: str, url_column: str = "url", caption_column: str = "caption",
                  extra_columns: tuple[str, ...] | list[str] = ()) -> Iterator[UrlRecord]:
    """UrlRecords, one per row, in file order (files of a folder sorted by name).

    The first file's columns are checked now, before the caller writes anything; the rows stream when iterated.
    Rows with an empty URL are yielded too: the crawl rejects them (invalid_url), so counts add up.
    """
    fs, paths = _files(str(path_or_url))
    # Opens the first file twice (here and when read): cheap, but for a json array it means two full parses.
    with open_list_file(fs, paths[0], _source(fs, paths[0]), url_column) as first:
        _columns_to_read(first, _source(fs, paths[0]), url_column, caption_column, extra_columns)
    return _records(fs, paths, url_column, caption_column, tuple(extra_columns))


def _records(fs: fsspec.AbstractFileSystem, paths: list[str], url_column: str, caption_column: str,
             extra_columns: tuple[str, ...]) -> Iterator[UrlRecord]:
    for source, list_file, columns in _open_files(fs, paths, url_column, caption_column, extra_columns):
        for row, values in enumerate(list_file.rows(columns.wanted())):
            yield columns.record(values, source, row)


def _open_files(fs: fsspec.AbstractFileSystem, paths: list[str], url_column: str, caption_column: str,
                extra_columns: tuple[str, ...]) -> Iterator[tuple[str, ListFile, ListColumns]]:
    """Each file of a list, open, with the columns to read; a file whose columns differ from the first's is an error."""
    first_columns: list[str] | None = None
    for path in paths:
        source = _source(fs, path)
        with open_list_file(fs, path, source, url_column) as list_file:
            if first_columns is None:
                first_columns = list_file.columns
            elif set(list_file.columns) != set(first_columns):  # by name: readers pick columns by name
                raise GadmsError(f"{source}: columns differ from {_source(fs, paths[0])}'s: "
                                 f"{_difference(list_file.columns, first_columns)}")
            yield source, list_file, _columns_to_read(list_file, source, url_column, caption_column,
                                                            extra_columns)


def plan_ranges(path_or_url: str, rows_per_range: int, url_column: str = "url", caption_column: str = "caption",
                extra_columns: tuple[str, ...] | list[str] = (), max_rows: int | None = None) -> Iterator[ListRange]:
    """Ranges of up to `rows_per_range` rows covering a list (file or folder) in order, or its first `max_rows`.

    Parquet ranges never cross a row group and come from the footers alone; a text file is read once, streaming,
    to count and fingerprint its rows. Memory stays flat whatever the list's size; its rows are checked as they are
    read (Parquet: its URL column's type), so a bad list fails before any chunk starts.
    """
    fs, paths = _files(str(path_or_url))
    remaining = max_rows
    for source, list_file, columns in _open_files(fs, paths, url_column, caption_column, tuple(extra_columns)):
        spans = (_parquet_spans(list_file.parquet, columns, source, rows_per_range) if list_file.parquet is not None
                 else _text_spans(list_file, columns, source, rows_per_range, remaining))
        for start, stop, fingerprint in spans:
            if remaining is not None:
                stop = min(stop, start + remaining)
                remaining -= stop - start
            yield ListRange(source, start, stop, fingerprint, columns)
            if remaining == 0:
                return


def _parquet_spans(parquet: pq.ParquetFile, columns: ListColumns, source: str,
                   rows_per_range: int) -> Iterator[tuple[int, int, str]]:
    url_type = parquet.schema_arrow.field(columns.url).type
    if not _holds_strings(url_type):
        raise GadmsError(f"{source}: {columns.url} is {url_type}, expected URL strings")
    for first, end, fingerprint in row_group_spans(parquet):
        for start in range(first, end, rows_per_range):
            yield start, min(start + rows_per_range, end), fingerprint


def _holds_strings(column_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(column_type):
        return _holds_strings(column_type.value_type)
    return pa.types.is_string(column_type) or pa.types.is_large_string(column_type) or pa.types.is_null(column_type)


def _text_spans(list_file: ListFile, columns: ListColumns, source: str, rows_per_range: int,
                max_rows: int | None) -> Iterator[tuple[int, int, str]]:
    """Spans of a text list, each fingerprinted by a digest of its rows (only the rows up to `max_rows` are read)."""
    rows = enumerate(list_file.rows(columns.wanted()))
    span: list[UrlRecord] = []
    for row, values in itertools.islice(rows, max_rows):
        span.append(columns.record(values, source, row))
        if len(span) == rows_per_range:
            yield row + 1 - len(span), row + 1, _records_digest(span)
            span = []
    if span:
        yield row + 1 - len(span), row + 1, _records_digest(span)


def _records_digest(records: list[UrlRecord]) -> str:
    return hashlib.sha256("\n".join(map(repr, records)).encode()).hexdigest()[:16]


def _row_group_fingerprint(parquet: pq.ParquetFile, row: int) -> str:
    return next(fingerprint for first, end, fingerprint in row_group_spans(parquet) if first <= row < end)


def read_range(part: ListRange) -> list[UrlRecord]:
    """The UrlRecords of a range, read through fsspec from wherever the list is stored. Rows that changed since
    the range was planned are an error: the shard id names the planned rows."""
    fs, path = filesystem(part.path)
    source = _source(fs, path)
    with open_list_file(fs, path, source, part.columns.url) as list_file:
        rows = rows_in_range(list_file, part.columns.wanted(), part.start, part.stop)
        records = [part.columns.record(values, source, row) for row, values in enumerate(rows, start=part.start)]
        unchanged = len(records) == part.stop - part.start and part.fingerprint == (
            _records_digest(records) if list_file.parquet is None
            else _row_group_fingerprint(list_file.parquet, part.start))
    if not unchanged:
        raise GadmsError(f"{source}: rows {part.start}-{part.stop} changed since this build planned them; "
                         "run the build again to plan the list anew")
    return records


def write_url_records(records: list[UrlRecord], path: str) -> None:
    """A jsonl list of `records` (url, caption, page_url and the extra columns of `source_meta`), as read_url_list
    and plan_ranges read it back: with the same extra_columns, the records read back equal these."""
    with atomic_write(path, "w") as f:
        for r in records:
            extra = json.loads(r.source_meta) if r.source_meta else {}
            f.write(json.dumps({**extra, "url": r.url, "caption": r.alt_text, PAGE_URL_COLUMN: r.page_url}) + "\n")


def _columns_to_read(list_file: ListFile, source: str, url_column: str, caption_column: str,
                     extra_columns: tuple[str, ...] | list[str]) -> ListColumns:
    """The columns to read of this file (the named extra columns, then the policy columns it has); any named
    column it lacks is an error."""
    columns = list_file.columns
    url_col = _pick_column(columns, url_column, "url", URL_ALIASES, source, required=True)
    caption_col = _pick_column(columns, caption_column, "caption", CAPTION_ALIASES, source, required=False)
    missing = [c for c in extra_columns if c not in columns]
    if missing:
        raise GadmsError(f"{source}: no extra column {missing[0]!r} (columns: {', '.join(columns[:20])})")
    policy = tuple(c for c in POLICY_COLUMNS if c in columns and c not in extra_columns)
    return ListColumns(url_col, caption_col, PAGE_URL_COLUMN in columns, (*extra_columns, *policy))


def _pick_column(columns: list[str], wanted: str, default: str, aliases: tuple[str, ...], source: str,
                 required: bool) -> str | None:
    if wanted in columns:
        return wanted
    if wanted == default:
        for alias in aliases:
            if alias in columns:
                return alias
    if required or wanted != default:
        raise GadmsError(f"{source}: no column {wanted!r} (columns: {', '.join(columns[:20])})")
    return None


def _difference(columns: list[str], expected: list[str]) -> str:
    missing = [c for c in expected if c not in columns]
    added = [c for c in columns if c not in expected]
    parts = ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"adds {', '.join(added)}"] if added else [])
    return "; ".join(parts)


def _files(path_or_url: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    fs, path = filesystem(path_or_url)
    if not fs.exists(path):
        raise GadmsError(f"{path_or_url}: URL list not found")
    if not fs.isdir(path):
        if format_of(path) is None:
            raise GadmsError(f"{path_or_url}: unknown URL list format (use {SUFFIXES}; text formats optionally .gz)")
        return fs, [path]
    # Top level only, like img2dataset: subfolders (earlier outputs, backups) are not silently mixed in.
    files = sorted(
        p for p in fs.ls(path, detail=False)
        if format_of(p) is not None and not p.rsplit("/", 1)[-1].startswith(".") and fs.isfile(p))
    if not files:
        raise GadmsError(f"{path_or_url}: folder holds no URL list ({SUFFIXES}, optionally .gz)")
    kinds = {format_of(p): p for p in reversed(files)}  # each format's first file
    if len(kinds) > 1:
        first, other = sorted(kinds.values())[:2]
        raise GadmsError(f"{path_or_url}: mixes URL list formats ({first}, {other}); keep one format per folder")
    return fs, files


def _source(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The file as errors name it."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def count_rows(path_or_url: str) -> int | None:
    """Rows of a Parquet list from its metadata (cheap); None for text formats (they would have to be read)."""
    fs, paths = _files(str(path_or_url))
    if any(format_of(p)[0] != "parquet" for p in paths):
        return None
    total = 0
    for path in paths:
        with fs.open(path, "rb") as f:
            total += parquet_file(f, _source(fs, path)).metadata.num_rows
    return total
