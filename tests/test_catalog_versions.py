"""One root, shards of schema versions 1 and 2: the catalog reads each with its version's columns, opening no
footer beyond one per run of shards, and plain DuckDB from another folder sees version 2's columns."""
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from storage.catalog import refresh
from storage.errors import GadmsError
from storage.layout import OutputLayout
from storage.schema import ADDED_IN_V2, SHARD_SCHEMA, SHARD_SCHEMAS
from storage.shards import commit_shard
from tests.storage_fixtures import captions_for, crop, rejects

def commit(layout: OutputLayout, index: int, samples: int) -> str:
    shard_id = f"shard-{index:05d}"
    crops = [dataclasses.replace(crop(10 * index + i), num_faces=i + 1, face_boxes=[[1.0, 2.0, 3.0, 4.0]],
                                 http_status=200) for i in range(samples)]
    commit_shard(layout, shard_id, "run-1", crops,
                 [captions_for(c, f"a woman in a red coat number {index}", "she carries a bag") for c in crops],
                 rejects(("crawl", "http_404")))
    return shard_id


def rewrite_as_version_1(layout: OutputLayout, shard_id: str, record_version: bool = True) -> None:
    """The shard as a version 1 writer wrote it (no provenance, face or filter columns), its entry recording v1
    (or, with `record_version` false, no version, as entries written before versions were recorded)."""
    path = layout.shard_path(shard_id)
    table = pq.read_table(path).drop_columns(list(ADDED_IN_V2)).replace_schema_metadata(SHARD_SCHEMAS[1].metadata)
    pq.write_table(table, path, row_group_size=256)
    data = Path(path).read_bytes()
    manifest = Path(layout.manifest_path(shard_id))
    entry = json.loads(manifest.read_text())
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), schema_version=1)
    if not record_version:
        del entry["schema_version"]
    manifest.write_text(json.dumps(entry))


def plain_duckdb(catalog: str, sql: str, cwd: Path) -> list[tuple]:
    cwd.mkdir(exist_ok=True)
    here = os.getcwd()
    os.chdir(cwd)
    try:
        con = duckdb.connect(catalog, read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    finally:
        os.chdir(here)


def test_a_root_mixing_versions_reads_each_shard_with_its_columns(tmp_path, capsys):
    root = tmp_path / "root"
    layout = OutputLayout(str(root))
    ids = [commit(layout, i, samples) for i, samples in enumerate((2, 3, 1, 2))]
    rewrite_as_version_1(layout, ids[0])
    rewrite_as_version_1(layout, ids[3], record_version=False)  # the footer says v1
    catalog = refresh(str(root))
    elsewhere = tmp_path / "elsewhere"
    # Catalog order is shard order across the runs v1, v2, v2, v1, so `gadms browse` pages as before.
    rows = plain_duckdb(catalog, "SELECT shard_id, num_faces, face_boxes, http_status, caption1 FROM samples", elsewhere)
    assert [(s, n, b, h) for s, n, b, h, _ in rows] == [
        ("shard-00000", None, None, None), ("shard-00000", None, None, None),
        ("shard-00001", 1, [[1.0, 2.0, 3.0, 4.0]], 200), ("shard-00001", 2, [[1.0, 2.0, 3.0, 4.0]], 200),
        ("shard-00001", 3, [[1.0, 2.0, 3.0, 4.0]], 200),
        ("shard-00002", 1, [[1.0, 2.0, 3.0, 4.0]], 200),
        ("shard-00003", None, None, None), ("shard-00003", None, None, None)]
    assert rows[0][4] == "a woman in a red coat number 0"
    types = dict(plain_duckdb(catalog, "SELECT column_name, column_type FROM (DESCRIBE samples)", elsewhere))
    assert list(types) == SHARD_SCHEMA.names
    assert (types["num_faces"], types["face_boxes"], types["http_status"], types["bbox"]) == (
        "INTEGER", "FLOAT[][]", "SMALLINT", "FLOAT[]")
    # One read_parquet per run of one version (three runs here), none reading every footer by name.
    view, = plain_duckdb(catalog, "SELECT sql FROM duckdb_views() WHERE view_name = 'samples'", elsewhere)[0]
    assert view.count("read_parquet(") == 3 and "union_by_name" not in view
    assert plain_duckdb(catalog, "SELECT shard_id, schema_version FROM manifest ORDER BY shard_id", elsewhere) == [
        ("shard-00000", 1), ("shard-00001", 2), ("shard-00002", 2), ("shard-00003", None)]
    assert main(["stats", "--catalog", catalog, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["samples"], stats["shards"], stats["rejects_total"]) == (8, 4, 4)


def test_a_root_of_version_1_only_shows_the_new_columns_as_typed_nulls(tmp_path):
    root = tmp_path / "root"
    layout = OutputLayout(str(root))
    for index, samples in ((0, 2), (1, 1)):
        rewrite_as_version_1(layout, commit(layout, index, samples))
    catalog = refresh(str(root))
    elsewhere = tmp_path / "elsewhere"
    assert plain_duckdb(catalog, "SELECT shard_id, num_faces, face_boxes FROM samples", elsewhere) == [
        ("shard-00000", None, None), ("shard-00000", None, None), ("shard-00001", None, None)]
    types = dict(plain_duckdb(catalog, "SELECT column_name, column_type FROM (DESCRIBE samples)", elsewhere))
    assert (types["num_faces"], types["face_boxes"]) == ("INTEGER", "FLOAT[][]")
    view, = plain_duckdb(catalog, "SELECT sql FROM duckdb_views() WHERE view_name = 'samples'", elsewhere)[0]
    assert view.count("read_parquet(") == 1 and "union_by_name" not in view


def test_a_version_this_code_does_not_know_is_a_one_line_error(tmp_path, capsys):
    root = tmp_path / "root"
    layout = OutputLayout(str(root))
    commit(layout, 0, 1)
    manifest = Path(layout.manifest_path("shard-00000"))
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "schema_version": 9}))
    message = (f"{layout.shard_path('shard-00000')}: shard schema v2, its manifest entry says 9: delete "
               f"{layout.manifest_path('shard-00000')} and rerun gadms build to rewrite it")
    with pytest.raises(GadmsError) as raised:
        refresh(str(root))
    assert str(raised.value) == message
    assert main(["catalog", "refresh", "--root", str(root)]) == 2
    assert capsys.readouterr().err == f"gadms catalog: error: {message}\n"
