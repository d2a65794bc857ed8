"""The public WebPerson layout: Parquet with `image`, `image_path`, `caption1`, `caption2`; its files, column checks
and image bytes, for the readers of that layout (gadms_model.data's training source, the retrieval gallery).

Two encodings of `image` are read: the Hugging Face one (the `datasets` Image feature, struct<bytes, path>),
which is how WebPerson-5M is published on the Hub and what `gadms export` writes, and plain binary (JPEG bytes),
which older exports wrote. A folder is searched recursively, so a Hub repository (`data/train-*.parquet`) and
a flat folder of Parquet files both work. The authors' JSON + images/ layout is read by the training sources.
"""
from __future__ import annotations

import pyarrow as pa

from storage.errors import GadmsError
from storage.fs import filesystem, join
from storage.schema import PUBLIC_COLUMNS

_TEXT_TYPES = (pa.string(), pa.large_string())
_BINARY_TYPES = (pa.binary(), pa.large_binary())


def public_files(path: str) -> list[str]:
    """`path` itself when it is a file, else the *.parquet files under the folder (no hidden ones), sorted."""
    fs, p = filesystem(path)
    if not fs.exists(p):
        raise GadmsError(f"{path}: not found")
    if not fs.isdir(p):
        return [path]
    found = sorted(f[len(p.rstrip("/")) + 1:] for f in fs.find(p) if f.endswith(".parquet"))
    return [join(path, *f.split("/")) for f in found if not any(part.startswith(".") for part in f.split("/"))]


def check_columns(schema: pa.Schema, where: str, columns: tuple[str, ...] = PUBLIC_COLUMNS) -> None:
    """One-line GadmsError naming `where` and the column when `schema` lacks a column or has one of the wrong type."""
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise GadmsError(f"{where}: missing column(s) {', '.join(missing)}")
    for name in columns:
        kind = schema.field(name).type
        if name == "image" and not _is_image_type(kind):
            raise GadmsError(f"{where}: column 'image' is {kind}, expected binary or struct<bytes: binary, path: string>")
        if name != "image" and kind not in _TEXT_TYPES:
            raise GadmsError(f"{where}: column {name!r} is {kind}, expected string")


def _is_image_type(kind: pa.DataType) -> bool:
    if kind in _BINARY_TYPES:
        return True
    return pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0 and kind.field("bytes").type in _BINARY_TYPES


def image_bytes(column: pa.ChunkedArray | pa.Array, where: str) -> list[bytes]:
    """The encoded image of every row of an `image` column, plain binary or Hugging Face struct<bytes, path>."""
    if pa.types.is_struct(column.type):
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        values = [v for chunk in chunks for v in chunk.field("bytes").to_pylist()]
        field = "image.bytes"
    else:
        values, field = column.to_pylist(), "image"
    for row, value in enumerate(values):
        if value is None:
            # The Image feature may point at a file instead of holding bytes; a release embeds them.
            raise GadmsError(f"{where}: row {row}: {field} is null (images must be embedded in the file)")
    return values

