"""The DuckDB catalog of one output root: views over the complete shards, their rejects and the manifest,
and a table of run records.

The catalog holds no data of its own besides the run records: every view reads the Parquet/JSON files, so a
catalog can be deleted and rebuilt with `refresh` at any time. Only shards whose manifest entry is complete are
visible, which is what makes a half-written rebuild invisible to readers.

    samples   one row per person crop (SHARD_SCHEMA, the current version's columns), from complete shards only
    shard_stats  per-shard counts behind `gadms stats` (SHARD_STATS_SCHEMA, see storage.stats)
    rejects   one row per rejected URL/image/person of those shards (REJECT_SCHEMA)
    reject_thumbnails  small JPEGs of a bounded sample of those rejects (REJECT_THUMBNAIL_SCHEMA), where kept
    manifest  one row per shard manifest entry (any status)
    runs      run records (run_id, flow, status, started_at, finished_at, config, summary)
    catalog_origin  the root and catalog file it was built for (see storage.catalog_origin)

The views name files by absolute path, so the catalog opens from any working directory, in our tools and in
plain DuckDB alike. A moved or copied local root fails with a one-line "run gadms catalog refresh --root NEW"
error (plain DuckDB: an Invalid Input Error with that text, or "No files found" if the original is gone) until it
is refreshed where it now lives; it never reads the original's files.

No view opens every file's footer to bind (`union_by_name` would, at ~0.9 MB and ~1 ms per shard on every
query): the manifest records each shard's schema version, and `samples` reads each run of consecutive shards of
one version with one read_parquet, selecting the current version's columns, a column that version lacks as a
typed NULL (storage.schema.SHARD_SCHEMAS). Runs, not one group per version, keep the shard-id order that
`gadms browse` pages by; a root of one version is one read_parquet.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pyarrow as pa

from storage.catalog_origin import ORIGIN_GUARD, origin_view_sql, sql_string
from storage.errors import GadmsError
from storage.fs import atomic_write, exists, filesystem, is_local
from storage.layout import OutputLayout
from storage.schema import (
    REJECT_SCHEMA,
    REJECT_THUMBNAIL_SCHEMA,
    SHARD_SCHEMA,
    SHARD_SCHEMAS,
    SHARD_STATS_SCHEMA,
)
from storage.shards import (
    complete_shards,
    current_shard_stats,
    json_files,
    manifest_entries,
    read_parquet,
    read_shard,
)
from storage.stats import statistics_sql

RUNS_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    flow VARCHAR,
    status VARCHAR,
    output_root VARCHAR,
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    config JSON,
    summary JSON
)
"""

MANIFEST_SCHEMA = pa.schema(
    [
        ("shard_id", pa.string()),
        ("path", pa.string()),
        ("rows", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("status", pa.string()),
        ("run_id", pa.string()),
        ("rejects", pa.int64()),
        ("created_at", pa.string()),
        ("schema_version", pa.int64()),  # null: an entry written before entries recorded it (a v1 shard)
    ]
)


class CatalogError(GadmsError):
    pass


_DUCKDB_SCALARS = {
    pa.string(): "VARCHAR", pa.binary(): "BLOB", pa.large_binary(): "BLOB", pa.bool_(): "BOOLEAN",
    pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
    pa.uint8(): "UTINYINT", pa.uint16(): "USMALLINT", pa.uint32(): "UINTEGER", pa.uint64(): "UBIGINT",
    pa.float32(): "FLOAT", pa.float64(): "DOUBLE",
}


def duckdb_type(arrow_type: pa.DataType) -> str:
    """The DuckDB type of a column of `arrow_type` as DuckDB reads it from Parquet (fixed-size lists as lists)."""
    if arrow_type in _DUCKDB_SCALARS:
        return _DUCKDB_SCALARS[arrow_type]
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP WITH TIME ZONE" if arrow_type.tz else "TIMESTAMP"
    if pa.types.is_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"{duckdb_type(arrow_type.value_type)}[]"
    if pa.types.is_struct(arrow_type):
        fields = ", ".join(f'"{f.name}" {duckdb_type(f.type)}' for f in arrow_type)
        return f"STRUCT({fields})"
    raise CatalogError(f"no DuckDB type for Arrow type {arrow_type}")


def _listing(paths: list[str]) -> str:
    return "[" + ", ".join(sql_string(p) for p in paths) + "]"


def _runs(entries: list[dict], key) -> list[tuple[object, list[dict]]]:
    """Consecutive entries with the same key(entry), in order."""
    runs: list[tuple[object, list[dict]]] = []
    for entry in entries:
        if runs and runs[-1][0] == key(entry):
            runs[-1][1].append(entry)
        else:
            runs.append((key(entry), [entry]))
    return runs


def _samples_source(layout: OutputLayout, done: list[dict]) -> str:
    if not done:
        return "SELECT * FROM empty_samples"
    selects = []
    for version, run in _runs(done, lambda e: e["schema_version"]):
        has = set(SHARD_SCHEMAS[version].names)
        columns = ", ".join(f.name if f.name in has else f"NULL::{duckdb_type(f.type)} AS {f.name}"
                            for f in SHARD_SCHEMA)
        selects.append(f"SELECT {columns} "
                       f"FROM read_parquet({_listing([layout.shard_path(e['shard_id']) for e in run])})")
    return selects[0] if len(selects) == 1 else " UNION ALL ".join(f"({select})" for select in selects)


def _rejects_source(layout: OutputLayout, done: list[dict]) -> str:
    """Rejects files of entries that record their row groups (written since) all have REJECT_SCHEMA's columns;
    older ones may lack `bbox` (added later), so only those are read by name, opening their footers."""
    if not done:
        return "SELECT * FROM empty_rejects"
    selects = []
    for recorded, run in _runs(done, lambda e: "row_groups" in e):
        listing = _listing([layout.rejects_path(e["shard_id"]) for e in run])
        selects.append(f"SELECT * FROM read_parquet({listing}{'' if recorded else ', union_by_name = true'})")
    return selects[0] if len(selects) == 1 else " UNION ALL BY NAME ".join(f"({select})" for select in selects)


def _shard_stats_source(layout: OutputLayout, done: list[dict]) -> str:
    """The statistics files of the shards that have a current one (storage.shards.current_shard_stats); the others
    (written before them, or rewritten without them) counted by storage.stats' own query over their files."""
    if not done:
        return "SELECT * FROM empty_shard_stats"
    current = current_shard_stats(layout, done)
    with_file = [e for e in done if e["shard_id"] in current]
    without = [e for e in done if e["shard_id"] not in current]
    selects = []
    if with_file:
        selects.append(f"SELECT * FROM read_parquet({_listing([layout.shard_stats_path(e['shard_id']) for e in with_file])})")
    if without:
        selects.append("SELECT * FROM (" + statistics_sql(f"({_samples_source(layout, without)})",
                                                          f"({_rejects_source(layout, without)})") + ")")
    return selects[0] if len(selects) == 1 else " UNION ALL ".join(f"({select})" for select in selects)


def _manifest_source(layout: OutputLayout, entries: list[dict]) -> str:
    if not entries:
        return "SELECT * FROM empty_manifest"
    listing = _listing([layout.manifest_path(e["shard_id"]) for e in entries])
    columns = ", ".join(f"{sql_string(f.name)}: {sql_string(duckdb_type(f.type))}" for f in MANIFEST_SCHEMA)
    return f"SELECT * FROM read_json({listing}, columns = {{{columns}}})"


def connect(path: str | Path, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open an existing catalog. A missing, corrupt or moved catalog gives a one-line CatalogError."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: catalog not found (run `gadms catalog refresh --root DIR` first)")
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        raise CatalogError(_open_failure(path, exc)) from None
    try:
        # The origin first: a copy whose original is gone would otherwise fail with DuckDB's "No files found".
        con.execute("SELECT root FROM catalog_origin").fetchone()
        # Binding opens one footer per read_parquet of the view: a catalog whose shards are gone fails here.
        con.execute("SELECT * FROM samples LIMIT 0").fetchall()
    except duckdb.Error as exc:
        con.close()
        raise CatalogError(_open_failure(path, exc)) from None
    return con


def catalog_root(path: str | Path) -> str:
    """The output root a catalog file was built for (a CatalogError naming the file when it is not a catalog)."""
    con = connect(path)
    try:
        root, = con.execute("SELECT root FROM catalog_origin").fetchone()
    finally:
        con.close()
    return root


def _open_failure(path: Path, exc: duckdb.Error) -> str:
    message = str(exc).splitlines()[0]
    moved = message.removeprefix("Invalid Input Error: ")
    if moved.startswith("catalog of "):  # the origin guard's message names both paths and the fix
        return moved
    return f"{path}: not a readable gadms catalog: {message}"


def run_records(layout: OutputLayout) -> list[dict]:
    """The run records of an output root (runs/*.json), sorted by file name."""
    records = []
    for path in json_files(layout.runs_dir):
        fs, p = filesystem(path)
        with fs.open(p, "r") as f:
            try:
                record = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CatalogError(f"{path}: corrupt run record: {exc}") from None
        if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
            raise CatalogError(f"{path}: corrupt run record: expected an object with a run_id string")
        records.append(record)
    return records


def _absolute(root: str) -> str:
    """A local root as an absolute path (what the views name); a remote URL as it is."""
    return os.path.abspath(filesystem(root)[1]) if is_local(root) else root


def refresh(root: str, catalog_path: str | None = None, duckdb_settings: dict[str, str] | None = None,
            check_sha256: bool = True) -> str:
    """(Re)build the catalog of output root `root`; return the catalog path.

    Every complete shard is verified against its manifest entry first (storage.shards.verify_shard; the sha256
    too unless `check_sha256` is false), so a damaged shard fails the refresh and the old catalog stays.
    `duckdb_settings` (e.g. s3_region, s3_endpoint) are applied with SET before views over remote Parquet are
    created; remote roots need DuckDB's httpfs extension available to DuckDB.
    """
    layout = OutputLayout(_absolute(root))
    catalog_path = catalog_path or OutputLayout(root).default_catalog_path()
    catalog_in_root = os.path.realpath(catalog_path) == os.path.realpath(layout.default_catalog_path())
    entries = manifest_entries(layout)
    # In shard id order: the views read their files in this order, which `gadms browse` pages by.
    done = sorted(complete_shards(layout, check_sha256), key=lambda e: e["shard_id"])
    runs = run_records(layout)
    Path(catalog_path).parent.mkdir(parents=True, exist_ok=True)
    thumbnail_paths = [p for p in (layout.reject_thumbnails_path(e["shard_id"]) for e in done) if exists(p)]
    try:
        con = duckdb.connect(catalog_path)
    except duckdb.Error as exc:
        raise CatalogError(f"{catalog_path}: cannot open catalog: {str(exc).splitlines()[0]}") from None
    try:
        if not is_local(root):
            con.execute("LOAD httpfs")
        built_as, = con.execute(
            "SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
        con.execute(origin_view_sql(layout.root, built_as, catalog_in_root, guarded=is_local(root)))
        for key, value in (duckdb_settings or {}).items():
            if not key.replace("_", "").isalnum():
                raise CatalogError(f"duckdb setting {key!r}: not a setting name")
            con.execute(f"SET {key} = {sql_string(value)}")
        con.register("empty_samples_arrow", SHARD_SCHEMA.empty_table())
        con.register("empty_rejects_arrow", REJECT_SCHEMA.empty_table())
        con.execute("CREATE OR REPLACE TABLE empty_samples AS SELECT * FROM empty_samples_arrow")
        con.execute("CREATE OR REPLACE TABLE empty_rejects AS SELECT * FROM empty_rejects_arrow")
        con.register("empty_reject_thumbnails_arrow", REJECT_THUMBNAIL_SCHEMA.empty_table())
        con.execute("CREATE OR REPLACE TABLE empty_reject_thumbnails AS SELECT * FROM empty_reject_thumbnails_arrow")
        con.register("empty_manifest_arrow", MANIFEST_SCHEMA.empty_table())
        con.execute("CREATE OR REPLACE TABLE empty_manifest AS SELECT * FROM empty_manifest_arrow")
        con.register("empty_shard_stats_arrow", SHARD_STATS_SCHEMA.empty_table())
        con.execute("CREATE OR REPLACE TABLE empty_shard_stats AS SELECT * FROM empty_shard_stats_arrow")
        thumbnails = (f"SELECT * FROM read_parquet({_listing(thumbnail_paths)})" if thumbnail_paths
                      else "SELECT * FROM empty_reject_thumbnails")
        for view, source in (("samples", _samples_source(layout, done)),
                             ("rejects", _rejects_source(layout, done)),
                             ("reject_thumbnails", thumbnails),
                             ("shard_stats", _shard_stats_source(layout, done)),
                             ("manifest", _manifest_source(layout, entries))):
            con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM ({source}) WHERE {ORIGIN_GUARD}")
        con.execute(RUNS_TABLE_SQL)
        for record in runs:
            upsert_run(con, record)
        for view in ("samples", "rejects", "shard_stats"):  # each binds: a file that does not fit fails here
            con.execute(f"SELECT * FROM {view} LIMIT 0").fetchall()
    except duckdb.Error as exc:
        raise CatalogError(f"{catalog_path}: refresh failed: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    return catalog_path


def memory_catalog(root: str, sample_columns: list[str]) -> duckdb.DuckDBPyConnection:
    """An in-memory catalog of `root` read through fsspec, so any root works without DuckDB's httpfs: the views
    samples (only `sample_columns`), rejects, manifest and shard_stats (counted from samples and rejects, so
    `sample_columns` holds what storage.stats counts) over the complete shards, as `refresh` defines them."""
    layout = OutputLayout(root)
    entries = manifest_entries(layout)
    done = complete_shards(layout)
    samples = [read_shard(layout.shard_path(e["shard_id"]), columns=sample_columns) for e in done]
    rejects = [read_parquet(layout.rejects_path(e["shard_id"])) for e in done]
    con = duckdb.connect()
    con.register("samples", pa.concat_tables(samples) if samples else SHARD_SCHEMA.empty_table().select(sample_columns))
    # Rejects files written before the bbox column lack it: promote, as refresh reads those by name.
    con.register("rejects", pa.concat_tables(rejects, promote_options="default") if rejects
                 else REJECT_SCHEMA.empty_table())
    con.register("manifest", pa.Table.from_pylist(entries, schema=MANIFEST_SCHEMA))
    con.execute(f"CREATE VIEW shard_stats AS {statistics_sql('samples', 'rejects')}")
    return con


def write_run_record(root: str, record: dict) -> None:
    """Save a run record as runs/<run_id>.json (the source of truth the catalog's runs table is rebuilt from)."""
    layout = OutputLayout(root)
    with atomic_write(layout.run_path(record["run_id"]), "w") as f:
        f.write(json.dumps(record, default=str, sort_keys=True))


def upsert_run(con: duckdb.DuckDBPyConnection, record: dict) -> None:
    con.execute(
        "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            record["run_id"],
            record.get("flow"),
            record.get("status"),
            record.get("output_root"),
            record.get("started_at"),
            record.get("finished_at"),
            json.dumps(record.get("config", {})),
            json.dumps(record.get("summary", {})),
        ],
    )
