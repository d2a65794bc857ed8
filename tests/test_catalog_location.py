"""The catalog opens from any working directory; a copied root never reads the original's files."""
import json
import os
import shutil

import duckdb
import pytest

from flows.cli import main
from storage.catalog import refresh
from storage.catalog_origin import origin_view_sql
from storage.layout import OutputLayout
from storage.shards import commit_shard
from tests.storage_fixtures import build_root, captions_for, crop

CAPTIONS = "SELECT caption1 FROM samples ORDER BY caption1"
ORIGINAL_CAPTIONS = [("A man wears a blue shirt.",), ("A woman in a red coat and black boots.",),
                     ("The man in black jeans and a white t-shirt.",)]


def _query(catalog: str, sql: str) -> list[tuple]:
    """What a user of plain DuckDB gets."""
    con = duckdb.connect(catalog, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture
def built(tmp_path, monkeypatch):
    """runs/webperson under tmp_path/build, refreshed from tmp_path/build with the relative root a user types."""
    (tmp_path / "build").mkdir()
    (tmp_path / "elsewhere").mkdir()
    build_root(tmp_path / "build" / "runs" / "webperson")
    monkeypatch.chdir(tmp_path / "build")
    assert refresh("runs/webperson") == os.path.join("runs", "webperson", "catalog.duckdb")
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "build" / "runs" / "webperson"


def test_plain_duckdb_opens_the_catalog_from_another_directory(built, tmp_path):
    relative = "../build/runs/webperson/catalog.duckdb"
    for catalog in (relative, str(built / "catalog.duckdb")):
        assert _query(catalog, CAPTIONS) == ORIGINAL_CAPTIONS
        assert _query(catalog, "SELECT stage, count(*) FROM rejects GROUP BY stage ORDER BY stage") == [
            ("crawl", 2), ("dedup", 1), ("detect", 1)]
        assert _query(catalog, "SELECT shard_id, rows FROM manifest ORDER BY shard_id") == [
            ("shard-00000", 2), ("shard-00001", 1)]
    # DuckDB names a database by its resolved path, so a symlinked route to the original is the original.
    os.symlink(tmp_path / "build" / "runs", tmp_path / "link")
    assert _query(str(tmp_path / "link" / "webperson" / "catalog.duckdb"), "SELECT count(*) FROM samples") == [(3,)]
    con = duckdb.connect()
    con.execute(f"ATTACH '{relative}' AS webperson (READ_ONLY)")
    assert con.execute("SELECT count(*) FROM webperson.samples").fetchall() == [(3,)]


def test_gadms_stats_and_info_from_another_directory(built, capsys):
    catalog = "../build/runs/webperson/catalog.duckdb"
    assert main(["stats", "--catalog", catalog, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["samples"], stats["shards"], stats["captions"], stats["rejects_total"]) == (3, 2, 5, 4)
    assert main(["catalog", "info", "--catalog", catalog]) == 0
    assert capsys.readouterr().out.splitlines()[1:3] == ["samples  3", "rejects  4"]


def test_copied_root_fails_with_the_refresh_hint_until_refreshed(built, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    catalog = str(copy / "catalog.duckdb")
    moved = f"catalog of {built} opened at {catalog}: run gadms catalog refresh --root {copy}"
    for view in ("samples", "rejects", "manifest", "catalog_origin"):
        with pytest.raises(duckdb.InvalidInputException) as raised:
            _query(catalog, f"SELECT count(*) FROM {view}")
        assert str(raised.value).splitlines()[0] == f"Invalid Input Error: {moved}"
    assert main(["stats", "--catalog", catalog]) == 2
    assert capsys.readouterr().err == f"gadms stats: error: {moved}\n"
    # With the original gone, plain DuckDB fails on its missing files; our tools still give the hint.
    shutil.rmtree(built)
    with pytest.raises(duckdb.Error):
        _query(catalog, CAPTIONS)
    assert main(["catalog", "info", "--catalog", catalog]) == 2
    assert capsys.readouterr().err == f"gadms catalog: error: {moved}\n"

    assert main(["catalog", "refresh", "--root", str(copy)]) == 0
    assert capsys.readouterr().out == f"catalog refreshed: {catalog}\n"
    assert _query(catalog, CAPTIONS) == ORIGINAL_CAPTIONS
    # The views read the copy's own files: a changed shard shows without another refresh.
    c = crop(2, "b.example")
    commit_shard(OutputLayout(str(copy)), "shard-00001", "run-2", [c],
                 [captions_for(c, "Changed in the copy.", "")], [])
    assert _query(catalog, CAPTIONS) == ORIGINAL_CAPTIONS[:2] + [("Changed in the copy.",)]
    assert main(["stats", "--catalog", catalog, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["captions"] == 4  # 5, less the changed shard's caption2


def test_remote_root_catalog_has_no_location_guard(tmp_path):
    # Its views name absolute URLs, so the catalog file itself may be moved or shared.
    built_as = tmp_path / "catalog.duckdb"
    con = duckdb.connect(str(built_as))
    con.execute(origin_view_sql("s3://bucket/webperson", str(built_as), catalog_in_root=False, guarded=False))
    con.close()
    shutil.copy(built_as, tmp_path / "moved.duckdb")
    assert _query(str(tmp_path / "moved.duckdb"), "SELECT root FROM catalog_origin") == [("s3://bucket/webperson",)]
