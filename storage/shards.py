"""Write and read WebPerson shards, rejects files and manifest entries.

A shard is written to a temporary sibling and renamed into place (storage.fs.atomic_write), then its manifest
entry is written the same way. Readers count a shard only when its manifest says it is complete, so a writer
killed at any point leaves either nothing visible or a whole shard.
"""
from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timezone
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import GadmsError
from storage.fs import atomic_write, filesystem, join, require_folder
from storage.layout import OutputLayout
from storage.records import Captions, PersonCrop, Reject
from storage.schema import (
    ADDED_IN_V2,
    MANIFEST_FIELDS,
    MANIFEST_RECORDED_FIELDS,
    READABLE_SCHEMA_VERSIONS,
    MANIFEST_STATUS_COMPLETE,
    REJECT_SCHEMA,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    SHARD_SCHEMA,
    SHARD_SCHEMAS,
    SHARD_STATS_REJECTS_KEY,
    SHARD_STATS_SHA256_KEY,
)
from storage.stats import shard_statistics

# Row groups small enough for streaming readers, large enough for zstd to work well on JPEG-heavy rows.
ROW_GROUP_SIZE = 256


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def shard_table(
    crops: Iterable[PersonCrop], captions: dict[str, Captions], shard_id: str, run_id: str,
    created_at: datetime | None = None,
) -> pa.Table:
    """Join kept crops with their captions into a table of SHARD_SCHEMA (crops without captions are skipped)."""
    created_at = created_at or utc_now()
    rows = []
    for crop in crops:
        caption = captions.get(crop.sample_id)
        if caption is None:
            continue
        row = {
            "sample_id": crop.sample_id,
            "image": crop.image,
            "width": crop.width,
            "height": crop.height,
            "source_url": crop.source_url,
            "page_url": crop.page_url,
            "alt_text": crop.alt_text,
            "source_sha256": crop.source_sha256,
            "crop_sha256": crop.crop_sha256,
            "source_meta": crop.source_meta,
            "bbox": [float(v) for v in crop.bbox],
            "det_score": float(crop.det_score),
            "keypoints": None if crop.keypoints is None else [float(v) for v in crop.keypoints],
            "phash": int(crop.phash),
            "fetched_at": crop.fetched_at,
            "http_status": crop.http_status,
            "x_robots_tag": crop.x_robots_tag,
            "num_faces": crop.num_faces,
            "face_boxes": crop.face_boxes,
            "caption1": caption.caption1,
            "caption2": caption.caption2,
            "caption_model": caption.caption_model,
            "caption_backend": caption.caption_backend,
            "template_id": caption.template_id,
            "prompt_version": caption.prompt_version,
            "filter_keep": caption.filter_keep,
            "filter_reason": caption.filter_reason,
            "filter_model": caption.filter_model,
            "shard_id": shard_id,
            "run_id": run_id,
            "created_at": created_at,
        }
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)


def rejects_table(rejects: Iterable[Reject], shard_id: str, run_id: str, created_at: datetime | None = None) -> pa.Table:
    created_at = created_at or utc_now()
    rows = [
        {
            "url": r.url or None,
            "sample_id": r.sample_id or None,
            "stage": r.stage,
            "reason": r.reason,
            "detail": r.detail or None,
            "bbox": list(r.bbox) if r.bbox is not None else None,
            "shard_id": shard_id,
            "run_id": run_id,
            "created_at": created_at,
        }
        for r in rejects
    ]
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)


def _parquet_bytes(table: pa.Table) -> bytes:
    # Dictionary encoding and min/max statistics of JPEG bytes cost seconds per 10k rows and help nothing.
    small_columns = [name for name in table.column_names if name != "image"]
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=ROW_GROUP_SIZE,
                   use_dictionary=small_columns, write_statistics=small_columns)
    return buffer.getvalue()


def write_parquet_atomic(table: pa.Table, path: str) -> dict:
    """Write `table` to `path` atomically; return its size, sha256 and the rows of each of its row groups."""
    data = _parquet_bytes(table)
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    with atomic_write(path) as f:
        f.write(data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "row_groups": [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]}


def write_shard(table: pa.Table, path: str) -> dict:
    """Write a shard atomically. Returns {"rows", "schema_version", "row_groups", "bytes", "sha256"} for its
    manifest entry (`row_groups`: the rows of each row group, so a reader lays out its blocks without the footer)."""
    if not table.schema.equals(SHARD_SCHEMA, check_metadata=False):
        raise GadmsError(f"{path}: table does not match the shard schema v{SCHEMA_VERSION}")
    table = table.replace_schema_metadata(SHARD_SCHEMA.metadata)
    return {"rows": table.num_rows, "schema_version": SCHEMA_VERSION, **write_parquet_atomic(table, path)}


def read_shard(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read a shard, checking its schema version. Raises GadmsError naming the file when it is not one.

    A shard of an older readable version gives the columns it lacks (ADDED_IN_V2) as NULL, typed as in
    SHARD_SCHEMA, so callers see one schema whatever version wrote the file."""
    fs, p = filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            parquet = pq.ParquetFile(f)
            version = (parquet.schema_arrow.metadata or {}).get(SCHEMA_VERSION_KEY)
            if version is None:
                raise GadmsError(f"{path}: not a WebPerson shard (no {SCHEMA_VERSION_KEY.decode()} metadata)")
            if int(version) not in READABLE_SCHEMA_VERSIONS:
                raise GadmsError(f"{path}: shard schema v{int(version)}, this version reads "
                                 f"v{', v'.join(map(str, READABLE_SCHEMA_VERSIONS))}")
            wanted = columns if columns is not None else SHARD_SCHEMA.names
            present = set(parquet.schema_arrow.names)
            table = parquet.read(columns=[c for c in wanted if c in present or c not in ADDED_IN_V2])
    except FileNotFoundError:
        raise GadmsError(f"{path}: shard not found") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise GadmsError(f"{path}: unreadable shard: {exc}") from None
    for index, name in enumerate(wanted):
        if name not in present and name in ADDED_IN_V2:
            kind = SHARD_SCHEMA.field(name).type
            table = table.add_column(index, pa.field(name, kind), pa.nulls(table.num_rows, kind))
    return table


def read_parquet(path: str) -> pa.Table:
    """A whole Parquet file of any root (local or fsspec); GadmsError naming the file when it is missing or unreadable."""
    fs, p = filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            return pq.read_table(f)
    except FileNotFoundError:
        raise GadmsError(f"{path}: not found") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise GadmsError(f"{path}: unreadable Parquet file: {exc}") from None


def write_manifest_entry(path: str, entry: dict) -> None:
    missing = [k for k in MANIFEST_FIELDS if k not in entry]
    if missing:
        raise GadmsError(f"{path}: manifest entry lacks {', '.join(missing)}")
    fields = MANIFEST_FIELDS + tuple(k for k in MANIFEST_RECORDED_FIELDS if k in entry)
    with atomic_write(path, "w") as f:
        f.write(json.dumps({k: entry[k] for k in fields}, default=str, sort_keys=True))


def read_manifest_entry(path: str) -> dict | None:
    """The manifest entry at `path`, or None when it does not exist. A corrupt entry raises GadmsError."""
    fs, p = filesystem(path)
    if not fs.exists(p):
        return None
    try:
        with fs.open(p, "r") as f:
            entry = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GadmsError(f"{path}: corrupt manifest entry: {exc}") from None
    if not isinstance(entry, dict) or "status" not in entry:
        raise GadmsError(f"{path}: corrupt manifest entry: no status")
    return entry


def json_files(directory: str, suffix: str = ".json") -> list[str]:
    """The *.json (or other `suffix`) files of a folder (local or fsspec), sorted, without in-progress temporary
    files; one listing, however many files."""
    fs, path = filesystem(directory)
    if not fs.exists(path):
        return []
    names = sorted(fs.ls(path, detail=False))
    return [join(directory, n.rsplit("/", 1)[-1]) for n in names
            if n.endswith(suffix) and not n.rsplit("/", 1)[-1].startswith(".")]


def manifest_entries(layout: OutputLayout) -> list[dict]:
    """Every manifest entry of an output root (any status), sorted by shard id. A missing root is an error, not
    an empty dataset: a mistyped --root would otherwise "succeed" with nothing in it."""
    require_folder(layout.root, "output root")
    entries = (read_manifest_entry(path) for path in json_files(layout.manifest_dir))
    return [e for e in entries if e is not None]


def complete_shards(layout: OutputLayout, check_sha256: bool = False, read_footers: bool = True) -> list[dict]:
    """Manifest entries of the complete shards of an output root, sorted by shard id, each shard verified
    against its entry (see verify_shard): a damaged shard is an error naming it, never silently served or
    skipped, since either would change what a dataset holds without anyone noticing.

    With `read_footers` each entry comes with its shard's `schema_version`, from the footer where the entry
    records none. `read_footers=False` checks only the sizes, from one listing of shards/, for a reader that
    checks each footer when it opens the file anyway (check_shard_footer): training starts without reading every
    footer.
    """
    entries = [e for e in manifest_entries(layout) if e["status"] == MANIFEST_STATUS_COMPLETE]
    if read_footers:
        return [{**entry, "schema_version": verify_shard(layout, entry, check_sha256)} for entry in entries]
    sizes = listed_sizes(layout.shards_dir) if entries else {}
    for entry in entries:
        check_shard_size(layout, entry, sizes.get(f"{entry['shard_id']}.parquet"))
    return entries


def listed_sizes(directory: str) -> dict[str, int]:
    """File name -> size of every file in a folder (local or fsspec), from one listing."""
    fs, path = filesystem(directory)
    if not fs.exists(path):
        return {}
    return {info["name"].rstrip("/").rsplit("/", 1)[-1]: info["size"] for info in fs.ls(path, detail=True)
            if info.get("type") == "file"}


def _fix(layout: OutputLayout, entry: dict) -> str:
    return f"delete {layout.manifest_path(entry['shard_id'])} and rerun gadms build to rewrite it"


def verify_shard(layout: OutputLayout, entry: dict, check_sha256: bool = False) -> int:
    """The shard's schema version; a GadmsError naming the shard when its file disagrees with its complete
    manifest entry.

    Size, row count (from the Parquet footer) and columns are always checked, as they cost one small read;
    the sha256 reads the whole file, so only `gadms catalog refresh` (or a caller that asks) pays for it.
    """
    path = layout.shard_path(entry["shard_id"])
    fs, p = filesystem(path)
    try:
        size = fs.size(p)
    except FileNotFoundError:
        size = None
    check_shard_size(layout, entry, size)
    try:
        with fs.open(p, "rb") as f:
            version = check_shard_footer(layout, entry, pq.ParquetFile(f))
    except (pa.ArrowInvalid, OSError) as exc:
        raise GadmsError(f"{path}: unreadable shard: {exc}: {_fix(layout, entry)}") from None
    if check_sha256 and file_sha256(path) != entry["sha256"]:
        raise GadmsError(f"{path}: sha256 differs from its manifest entry: {_fix(layout, entry)}")
    return version


def check_shard_size(layout: OutputLayout, entry: dict, size: int | None) -> None:
    """GadmsError naming the shard when its file's `size` (None: no file) is not its manifest entry's."""
    path = layout.shard_path(entry["shard_id"])
    if size is None:
        raise GadmsError(f"{path}: shard missing, its manifest entry says complete: {_fix(layout, entry)}")
    if size != entry["bytes"]:
        raise GadmsError(f"{path}: {size} bytes, its manifest entry says {entry['bytes']}: {_fix(layout, entry)}")


def check_shard_footer(layout: OutputLayout, entry: dict, parquet: pq.ParquetFile) -> int:
    """The shard's schema version (from its footer); a GadmsError naming the shard when its footer disagrees with
    its manifest entry: the row count, the rows of each row group and the schema version (where the entry records
    them), and the columns of that version."""
    path = layout.shard_path(entry["shard_id"])
    metadata = parquet.metadata
    if metadata.num_rows != entry["rows"]:
        raise GadmsError(f"{path}: {metadata.num_rows} rows, its manifest entry says {entry['rows']}: "
                         f"{_fix(layout, entry)}")
    groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    if "row_groups" in entry and groups != entry["row_groups"]:
        raise GadmsError(f"{path}: row groups of {groups} rows, its manifest entry says {entry['row_groups']}: "
                         f"{_fix(layout, entry)}")
    written = (parquet.schema_arrow.metadata or {}).get(SCHEMA_VERSION_KEY, b"")
    version = int(written) if written.isdigit() else None
    if version not in SHARD_SCHEMAS:
        raise GadmsError(f"{path}: shard schema {written.decode(errors='replace') or 'unknown'}, this version reads "
                         f"v{', v'.join(map(str, READABLE_SCHEMA_VERSIONS))}: {_fix(layout, entry)}")
    if entry.get("schema_version", version) != version:
        raise GadmsError(f"{path}: shard schema v{version}, its manifest entry says {entry['schema_version']!r}: "
                         f"{_fix(layout, entry)}")
    names = set(parquet.schema_arrow.names)
    missing = [name for name in SHARD_SCHEMAS[version].names if name not in names]
    if missing:
        raise GadmsError(f"{path}: missing column(s) {', '.join(missing)}: {_fix(layout, entry)}")
    return version


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    fs, p = filesystem(path)
    with fs.open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_is_complete(manifest_path: str, shard_path: str) -> bool:
    """True when the manifest says the shard is complete and the shard file has the size it records, so a
    rebuild rewrites a truncated shard instead of keeping it."""
    entry = read_manifest_entry(manifest_path)
    if entry is None or entry["status"] != MANIFEST_STATUS_COMPLETE:
        return False
    fs, p = filesystem(shard_path)
    return fs.exists(p) and fs.size(p) == entry.get("bytes")


def manifest_entry(shard_id: str, path: str, written: dict, run_id: str, rejects: int) -> dict:
    return {
        "shard_id": shard_id,
        "path": path,
        "rows": written["rows"],
        "row_groups": written["row_groups"],
        "bytes": written["bytes"],
        "sha256": written["sha256"],
        "status": MANIFEST_STATUS_COMPLETE,
        "run_id": run_id,
        "rejects": rejects,
        "created_at": utc_now().isoformat(),
        "schema_version": written["schema_version"],
    }


def supersede_rejects(layout: OutputLayout, shard_id: str, rows: set[tuple[str, str, str]]) -> int:
    """Drop the rejects matching `rows` ((stage, url, reason) triples) from a complete shard's rejects file,
    atomically, because another shard now holds what those URLs became (`gadms build --retry-failed`); the
    manifest entry's count follows. Returns the rows dropped. Idempotent: a rerun after a kill between the two
    writes puts the count right."""
    path = layout.rejects_path(shard_id)
    table = read_parquet(path)
    superseded = [row in rows for row in zip(*(table.column(c).to_pylist() for c in ("stage", "url", "reason")))]
    if any(superseded):
        table = table.filter(pa.array([not s for s in superseded], pa.bool_()))
        write_parquet_atomic(table, path)
    manifest_path = layout.manifest_path(shard_id)
    entry = read_manifest_entry(manifest_path)
    if entry is not None and entry.get("rejects") != table.num_rows:
        write_manifest_entry(manifest_path, {**entry, "rejects": table.num_rows})
    return sum(superseded)


def commit_shard(
    layout: OutputLayout, shard_id: str, run_id: str, crops: Iterable[PersonCrop], captions: Iterable[Captions],
    rejects: Iterable[Reject], reject_thumbnails: pa.Table | None = None,
) -> dict:
    """Join a chunk's kept crops with their captions and commit them with its rejects (commit_tables); return
    the manifest entry."""
    rejects = list(rejects)
    created_at = utc_now()
    return commit_tables(
        layout, shard_id, run_id, shard_table(crops, {c.sample_id: c for c in captions}, shard_id, run_id, created_at),
        rejects_table(rejects, shard_id, run_id, created_at), reject_thumbnails)


def commit_tables(layout: OutputLayout, shard_id: str, run_id: str, samples: pa.Table, rejected: pa.Table,
                  reject_thumbnails: pa.Table | None = None) -> dict:
    """Write a chunk's rejects (and their thumbnails, storage.reject_thumbnails), its shard, its statistics
    (storage.stats.shard_statistics, marked with the shard's sha256), then (last) its manifest entry; return the
    manifest entry.

    Re-running a chunk overwrites all of them with the same content, so a rerun after a kill is idempotent.
    """
    write_parquet_atomic(rejected, layout.rejects_path(shard_id))
    if reject_thumbnails is not None:
        write_parquet_atomic(reject_thumbnails, layout.reject_thumbnails_path(shard_id))
    written = write_shard(samples, layout.shard_path(shard_id))
    statistics = shard_statistics(samples, rejected)
    statistics = statistics.replace_schema_metadata({
        **statistics.schema.metadata, SHARD_STATS_SHA256_KEY: written["sha256"].encode(),
        SHARD_STATS_REJECTS_KEY: str(rejected.num_rows).encode()})
    write_parquet_atomic(statistics, layout.shard_stats_path(shard_id))
    entry = manifest_entry(shard_id, layout.shard_path(shard_id), written, run_id, rejected.num_rows)
    write_manifest_entry(layout.manifest_path(shard_id), entry)
    return entry


def current_shard_stats(layout: OutputLayout, entries: list[dict]) -> set[str]:
    """The shard ids among `entries` whose statistics file was counted from the shard and rejects their entry
    describes (its footer records that shard's sha256 and the rejects count): a shard rewritten, or rejects
    superseded (supersede_rejects), without new statistics is counted afresh."""
    listed = set(json_files(layout.shard_stats_dir, ".parquet"))
    current = set()
    for entry in entries:
        path = layout.shard_stats_path(entry["shard_id"])
        if path not in listed:
            continue
        fs, p = filesystem(path)
        with fs.open(p, "rb") as f:
            metadata = pq.ParquetFile(f).schema_arrow.metadata or {}
        if (metadata.get(SHARD_STATS_SHA256_KEY) == entry["sha256"].encode()
                and metadata.get(SHARD_STATS_REJECTS_KEY) == str(entry["rejects"]).encode()):
            current.add(entry["shard_id"])
    return current
