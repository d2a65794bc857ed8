"""Export complete shards to the public WebPerson release layout, and read that layout back.

The release is Parquet with `image` (JPEG bytes), `image_path`, `caption1`, `caption2`; `image_path` is
`images/<sample_id>.jpg`, the name the crop would have in the authors' JSON + images/ layout.
"""
from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import GadmsError
from storage.fs import filesystem, join
from storage.layout import OutputLayout
from storage.schema import PUBLIC_SCHEMA
from storage.shards import complete_shards, read_shard, write_parquet_atomic

PUBLIC_COLUMNS = PUBLIC_SCHEMA.names


def public_image_path(sample_id: str) -> str:
    return f"images/{sample_id}.jpg"


def export_public(root: str, out_dir: str) -> list[str]:
    """Write one public-layout Parquet file per complete shard of `root` into `out_dir`; return their paths."""
    layout = OutputLayout(root)
    written = []
    for entry in complete_shards(layout):
        shard = read_shard(layout.shard_path(entry["shard_id"]), columns=["sample_id", "image", "caption1", "caption2"])
        table = pa.table(
            {
                "image": shard["image"],
                "image_path": pa.array([public_image_path(s) for s in shard["sample_id"].to_pylist()], pa.string()),
                "caption1": shard["caption1"],
                "caption2": shard["caption2"],
            },
            schema=PUBLIC_SCHEMA,
        )
        path = join(out_dir, f"{entry['shard_id']}.parquet")
        write_parquet_atomic(table, path)
        written.append(path)
    return written


def read_public(path: str) -> Iterator[dict]:
    """Rows of a public-layout Parquet file or folder of them: dicts with image, image_path, caption1, caption2."""
    fs, p = filesystem(path)
    if not fs.exists(p):
        raise GadmsError(f"{path}: not found")
    files = sorted(f for f in fs.find(p) if f.endswith(".parquet")) if fs.isdir(p) else [p]
    for file in files:
        with fs.open(file, "rb") as f:
            parquet = pq.ParquetFile(f)
            missing = [c for c in PUBLIC_COLUMNS if c not in parquet.schema_arrow.names]
            if missing:
                raise GadmsError(f"{file}: not a public WebPerson file: missing column(s) {', '.join(missing)}")
            for batch in parquet.iter_batches(columns=PUBLIC_COLUMNS, batch_size=256):
                yield from batch.to_pylist()
