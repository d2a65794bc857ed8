"""URL lists in img2dataset's input formats (see listformats), one file or a folder of them, local or any fsspec
URL. COYO-700M (`url`, `text`) and LAION (`URL`, `TEXT`) parquet files load as they are: when the default column
names are missing, their usual spellings are tried. `extra_columns` (img2dataset's save_additional_columns)
travel with each record as `source_meta`, a JSON object string.

A folder is read as img2dataset reads one: its top-level files only, all of one format, all with the same columns.
"""
from __future__ import annotations

import json
from typing import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from curation.crawl.listformats import FORMATS, ListFile, format_of, open_list_file, parquet_file
from storage.errors import GadmsError
from storage.fs import filesystem
from storage.records import UrlRecord

# Spellings tried, in order, when a default column name is absent (LAION writes URL/TEXT, COYO url/text).
URL_ALIASES = ("url", "URL", "image_url")
CAPTION_ALIASES = ("caption", "text", "TEXT", "alt", "alt_text", "ALT_TEXT")
PAGE_URL_COLUMN = "page_url"
SUFFIXES = ", ".join(f".{fmt}" for fmt in FORMATS)


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
    first_columns: list[str] | None = None
    for path in paths:
        source = _source(fs, path)
        with open_list_file(fs, path, source, url_column) as list_file:
            if first_columns is None:
                first_columns = list_file.columns
            elif set(list_file.columns) != set(first_columns):  # by name: readers pick columns by name
                raise GadmsError(f"{source}: columns differ from {_source(fs, paths[0])}'s: "
                                 f"{_difference(list_file.columns, first_columns)}")
            url_col, caption_col = _columns_to_read(list_file, source, url_column, caption_column, extra_columns)
            has_page = PAGE_URL_COLUMN in list_file.columns
            read = [url_col, *([caption_col] if caption_col else []), *([PAGE_URL_COLUMN] if has_page else []),
                    *extra_columns]
            for row, values in enumerate(list_file.rows(read)):
                values = list(values)
                url = values.pop(0)
                if not isinstance(url, str | None):  # e.g. an int or list column: the whole list is wrong
                    raise GadmsError(f"{source}: row {row}: {url_col} is {type(url).__name__} {str(url)[:60]}, "
                                     "expected a URL string")
                caption = values.pop(0) if caption_col else ""
                page_url = values.pop(0) if has_page else ""
                meta = json.dumps(dict(zip(extra_columns, values)), default=str) if extra_columns else None
                yield UrlRecord(url=str(url or "").strip(), alt_text=str(caption or ""),
                                page_url=str(page_url or "").strip(), source_meta=meta)


def _columns_to_read(list_file: ListFile, source: str, url_column: str, caption_column: str,
                     extra_columns: tuple[str, ...] | list[str]) -> tuple[str, str | None]:
    """(url column, caption column or None) of this file; any named column it lacks is an error."""
    columns = list_file.columns
    url_col = _pick_column(columns, url_column, "url", URL_ALIASES, source, required=True)
    caption_col = _pick_column(columns, caption_column, "caption", CAPTION_ALIASES, source, required=False)
    missing = [c for c in extra_columns if c not in columns]
    if missing:
        raise GadmsError(f"{source}: no extra column {missing[0]!r} (columns: {', '.join(columns[:20])})")
    return url_col, caption_col


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
