"""URL lists in img2dataset's formats: csv / tsv / jsonl / parquet (text formats optionally .gz), one file or a
folder of them, local or any fsspec URL. COYO-700M (`url`, `text`) and LAION (`URL`, `TEXT`) parquet files load
as they are: when the default column names are missing, their usual spellings are tried.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Iterator

import pyarrow.parquet as pq

from storage.errors import GadmsError
import fsspec
from fsspec.implementations.local import LocalFileSystem

from storage.fs import filesystem
from storage.records import UrlRecord

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}
# Spellings tried, in order, when a default column name is absent (LAION writes URL/TEXT, COYO url/text).
URL_ALIASES = ("url", "URL", "image_url")
CAPTION_ALIASES = ("caption", "text", "TEXT", "alt", "alt_text", "ALT_TEXT")
PAGE_URL_COLUMN = "page_url"
PARQUET_BATCH_ROWS = 65_536


def _format_of(path: str) -> tuple[str, str | None] | None:
    """(format, compression) from the file name, or None when it is not a URL list."""
    name = path.lower()
    compression = None
    if name.endswith(".gz"):
        compression, name = "gzip", name[:-3]
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix) and not (fmt == "parquet" and compression):
            return fmt, compression
    return None


def _files(path_or_url: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    fs, path = filesystem(path_or_url)
    if not fs.exists(path):
        raise GadmsError(f"{path_or_url}: URL list not found")
    if not fs.isdir(path):
        if _format_of(path) is None:
            raise GadmsError(
                f"{path_or_url}: unknown URL list format (use .csv, .tsv, .jsonl, .parquet, optionally .gz)")
        return fs, [path]
    files = sorted(p for p in fs.find(path) if _format_of(p) is not None and not p.rsplit("/", 1)[-1].startswith("."))
    if not files:
        raise GadmsError(f"{path_or_url}: folder holds no .csv/.tsv/.jsonl/.parquet URL list")
    return fs, files


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


def read_url_list(path_or_url: str, url_column: str = "url", caption_column: str = "caption") -> Iterator[UrlRecord]:
    """Yield one UrlRecord per row, in file order (files of a folder sorted by name).

    Rows with an empty URL are yielded too: the crawl rejects them (invalid_url), so counts add up.
    """
    fs, paths = _files(str(path_or_url))
    for path in paths:
        yield from _read_file(fs, path, url_column, caption_column)


def _read_file(fs: fsspec.AbstractFileSystem, path: str, url_column: str, caption_column: str) -> Iterator[UrlRecord]:
    fmt, compression = _format_of(path)
    source = path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)  # names the file in errors
    if fmt == "parquet":
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            columns = parquet.schema_arrow.names
            url_col = _pick_column(columns, url_column, "url", URL_ALIASES, source, required=True)
            caption_col = _pick_column(columns, caption_column, "caption", CAPTION_ALIASES, source, required=False)
            wanted = [c for c in (url_col, caption_col, PAGE_URL_COLUMN) if c and c in columns]
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
                data = batch.to_pydict()
                for i, url in enumerate(data[url_col]):
                    yield UrlRecord(
                        url=url or "",
                        alt_text=(data[caption_col][i] or "") if caption_col else "",
                        page_url=(data[PAGE_URL_COLUMN][i] or "") if PAGE_URL_COLUMN in data else "",
                    )
        return
    with fs.open(path, "rb", compression=compression) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        if fmt == "jsonl":
            yield from _read_jsonl(text, source, url_column, caption_column)
        else:
            yield from _read_delimited(text, source, "\t" if fmt == "tsv" else ",", url_column, caption_column)


def _read_delimited(text: io.TextIOBase, source: str, delimiter: str, url_column: str,
                    caption_column: str) -> Iterator[UrlRecord]:
    reader = csv.DictReader(text, delimiter=delimiter)
    columns = list(reader.fieldnames or [])
    url_col = _pick_column(columns, url_column, "url", URL_ALIASES, source, required=True)
    caption_col = _pick_column(columns, caption_column, "caption", CAPTION_ALIASES, source, required=False)
    for row in reader:
        yield UrlRecord(
            url=(row.get(url_col) or "").strip(),
            alt_text=(row.get(caption_col) or "") if caption_col else "",
            page_url=(row.get(PAGE_URL_COLUMN) or "").strip(),
        )


def _read_jsonl(text: io.TextIOBase, source: str, url_column: str, caption_column: str) -> Iterator[UrlRecord]:
    for line_number, line in enumerate(text, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GadmsError(f"{source}:{line_number}: not a JSON object: {exc.msg}") from None
        if not isinstance(row, dict):
            raise GadmsError(f"{source}:{line_number}: expected a JSON object, got {type(row).__name__}")
        columns = list(row)
        url_col = _pick_column(columns, url_column, "url", URL_ALIASES, f"{source}:{line_number}", required=True)
        caption_col = _pick_column(columns, caption_column, "caption", CAPTION_ALIASES, source, required=False)
        yield UrlRecord(
            url=str(row.get(url_col) or "").strip(),
            alt_text=str(row.get(caption_col) or "") if caption_col else "",
            page_url=str(row.get(PAGE_URL_COLUMN) or ""),
        )


def count_rows(path_or_url: str) -> int | None:
    """Rows of a Parquet list from its metadata (cheap); None for text formats (they would have to be read)."""
    fs, paths = _files(str(path_or_url))
    if any(_format_of(p)[0] != "parquet" for p in paths):
        return None
    total = 0
    for path in paths:
        with fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total
