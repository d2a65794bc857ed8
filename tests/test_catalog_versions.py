"""One root, shards of two schema versions: the catalog reads each with its version's columns, opening no
footer beyond one per run of shards, and plain DuckDB from another folder sees the current version's columns."""
import hashlib
import json
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gadms_model.cli import main
from storage import catalog as storage_catalog
from storage.catalog import refresh
from storage.errors import GadmsError
from storage.layout import OutputLayout
from storage.schema import SCHEMA_VERSION_KEY, SHARD_SCHEMAS
from storage.shards import commit_shard
from tests.storage_fixtures import captions_for, crop, rejects

FACE_BOXES = pa.list_(pa.list_(pa.float32(), 4))
# A version 2 as the responsible-dataset work adds one: version 1's columns and a few more.
V2 = pa.schema(list(SHARD_SCHEMAS[1]) + [pa.field("num_faces", pa.int32()), pa.field("face_boxes", FACE_BOXES),
                                          pa.field("http_status", pa.int32())],
               metadata={SCHEMA_VERSION_KEY: b"2"})


@pytest.fixture
def version_2(monkeypatch):
    """This code as it is once version 2 exists: SHARD_SCHEMAS knows both, the catalog's views are v2's."""
    monkeypatch.setitem(SHARD_SCHEMAS, 2, V2)
    monkeypatch.setattr(storage_catalog, "SHARD_SCHEMA", V2)


def commit(layout: OutputLayout, index: int, samples: int) -> str:
    shard_id = f"shard-{index:05d}"
    crops = [crop(10 * index + i) for i in range(samples)]
    commit_shard(layout, shard_id, "run-1", crops,
                 [captions_for(c, f"a woman in a red coat number {index}", "she carries a bag") for c in crops],
                 rejects(("crawl", "http_404")))
    return shard_id


def rewrite_as_version_2(layout: OutputLayout, shard_id: str) -> None:
    """The shard as a version 2 writer writes it: the extra columns filled, its manifest entry recording v2."""
    table = pq.read_table(layout.shard_path(shard_id))
    n = table.num_rows
    table = (table.append_column("num_faces", pa.array(range(1, n + 1), pa.int32()))
             .append_column("face_boxes", pa.array([[[1.0, 2.0, 3.0, 4.0]]] * n, FACE_BOXES))
             .append_column("http_status", pa.array([200] * n, pa.int32()))
             .replace_schema_metadata(V2.metadata))
    pq.write_table(table, layout.shard_path(shard_id))
    data = Path(layout.shard_path(shard_id)).read_bytes()
    manifest = Path(layout.manifest_path(shard_id))
    entry = json.loads(manifest.read_text())
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), schema_version=2)
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


def test_a_root_mixing_versions_reads_each_shard_with_its_columns(tmp_path, version_2, capsys):
    root = tmp_path / "root"
    layout = OutputLayout(str(root))
    ids = [commit(layout, i, samples) for i, samples in enumerate((2, 3, 1, 2))]
    for shard_id in ids[1:3]:
        rewrite_as_version_2(layout, shard_id)
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
    assert list(types) == V2.names
    assert (types["num_faces"], types["face_boxes"], types["http_status"], types["bbox"]) == (
        "INTEGER", "FLOAT[][]", "INTEGER", "FLOAT[]")
    # One read_parquet per run of one version (three runs here), none reading every footer by name.
    view, = plain_duckdb(catalog, "SELECT sql FROM duckdb_views() WHERE view_name = 'samples'", elsewhere)[0]
    assert view.count("read_parquet(") == 3 and "union_by_name" not in view
    assert plain_duckdb(catalog, "SELECT shard_id, schema_version FROM manifest ORDER BY shard_id", elsewhere) == [
        ("shard-00000", 1), ("shard-00001", 2), ("shard-00002", 2), ("shard-00003", 1)]
    assert main(["stats", "--catalog", catalog, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["samples"], stats["shards"], stats["rejects_total"]) == (8, 4, 4)


def test_a_root_of_version_1_only_shows_the_new_columns_as_typed_nulls(tmp_path, version_2):
    root = tmp_path / "root"
    layout = OutputLayout(str(root))
    commit(layout, 0, 2)
    commit(layout, 1, 1)
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
    message = "manifest entry of shard-00000: schema_version 9, this version reads 1"
    with pytest.raises(GadmsError) as raised:
        refresh(str(root))
    assert str(raised.value) == message
    assert main(["catalog", "refresh", "--root", str(root)]) == 2
    assert capsys.readouterr().err == f"gadms catalog: error: {message}\n"
