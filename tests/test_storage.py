import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from storage.catalog import connect, refresh, write_run_record
from storage.errors import GadmsError
from storage.export import export_public
from storage.layout import OutputLayout
from storage.schema import SCHEMA_VERSION, SHARD_SCHEMA
from storage.shards import commit_shard, complete_shards, read_shard, shard_is_complete
from tests.storage_fixtures import build_root, captions_for, crop

REPO = Path(__file__).resolve().parents[1]


def test_shard_round_trip_keeps_every_field(tmp_path):
    layout = OutputLayout(str(tmp_path))
    c = crop(2)
    cap = captions_for(c, "caption one", "caption two", "t009")
    entry = commit_shard(layout, "shard-00007", "run-x", [c], [cap], [])
    assert entry["rows"] == 1 and entry["status"] == "complete" and entry["rejects"] == 0
    table = read_shard(layout.shard_path("shard-00007"))
    assert table.schema.equals(SHARD_SCHEMA, check_metadata=False)
    row = table.to_pylist()[0]
    assert row["sample_id"] == c.sample_id
    assert row["image"] == c.image
    assert (row["width"], row["height"]) == (32, 64)
    assert row["bbox"] == [20.0, 20.0, 70.0, 150.0]
    assert row["keypoints"] == [float(i) for i in range(51)]
    assert row["phash"] == 2**64 - 3
    assert row["source_meta"] == '{"key": "000000002"}'
    assert row["det_score"] == pytest.approx(0.52)
    assert (row["caption1"], row["caption2"], row["template_id"]) == ("caption one", "caption two", "t009")
    assert (row["shard_id"], row["run_id"], row["prompt_version"]) == ("shard-00007", "run-x", "v1")
    metadata = pq.ParquetFile(layout.shard_path("shard-00007")).schema_arrow.metadata
    assert metadata[b"gadms.schema_version"] == str(SCHEMA_VERSION).encode()
    assert pq.ParquetFile(layout.shard_path("shard-00007")).metadata.row_group(0).column(0).compression == "ZSTD"


def test_sample_id_is_stable_for_same_source_and_box():
    assert crop(3).sample_id == crop(3).sample_id
    assert crop(3).sample_id != crop(4).sample_id


def test_read_shard_rejects_foreign_parquet(tmp_path):
    import pyarrow as pa

    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    with pytest.raises(GadmsError, match="other.parquet: not a WebPerson shard"):
        read_shard(str(path))


_SLOW_WRITER = """
import sys, time
from storage.fs import atomic_write
with atomic_write(sys.argv[1]) as f:
    for _ in range(10_000):
        f.write(b"x" * 4096)
        f.flush()
        time.sleep(0.001)
"""

_KILLED_BEFORE_MANIFEST = """
import sys, time
import storage.shards as shards
from tests.storage_fixtures import captions_for, crop
from storage.layout import OutputLayout

def hang(*args, **kwargs):
    print("shard written", flush=True)
    time.sleep(600)

shards.write_manifest_entry = hang
c = crop(5)
shards.commit_shard(OutputLayout(sys.argv[1]), "shard-00009", "run-k", [c], [captions_for(c, "a", "b")], [])
"""


def _kill_when(proc: subprocess.Popen, ready) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "child never reached the kill point"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_writer_killed_mid_shard_leaves_no_visible_shard(tmp_path):
    target = tmp_path / "shards" / "shard-00000.parquet"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], cwd=REPO, stderr=subprocess.PIPE)
    _kill_when(proc, lambda: any(p.stat().st_size > 100_000 for p in (tmp_path / "shards").glob(".*tmp*")))
    assert not target.exists()
    assert list((tmp_path / "shards").glob("*.parquet")) == []
    con = connect(refresh(str(tmp_path)))
    assert con.execute("SELECT count(*) FROM samples").fetchone() == (0,)


def test_native_atomic_write_renames_only_a_finished_file(tmp_path):
    import pyarrow as pa

    from storage.fs import atomic_write

    target = tmp_path / "out" / "part.arrow"
    with pytest.raises(ValueError, match="stop"):
        with atomic_write(str(target), native=True) as f:
            assert isinstance(f, pa.NativeFile)  # Arrow writes to the disk without a copy through Python
            f.write(b"half")
            raise ValueError("stop")
    assert list((tmp_path / "out").iterdir()) == []  # neither the target nor the temporary file
    with atomic_write(str(target), native=True) as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole" and [p.name for p in (tmp_path / "out").iterdir()] == ["part.arrow"]
    with atomic_write("memory://native/part.arrow", native=True) as f:  # elsewhere: the fsspec file, as before
        assert not isinstance(f, pa.NativeFile)
        f.write(b"remote")
    from storage.fs import filesystem
    fs, p = filesystem("memory://native/part.arrow")
    assert fs.cat(p) == b"remote"


def test_shard_without_manifest_entry_is_not_counted(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_BEFORE_MANIFEST, str(tmp_path)], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.readline() == b"shard written\n", proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    layout = OutputLayout(str(tmp_path))
    assert Path(layout.shard_path("shard-00009")).exists()
    assert not shard_is_complete(layout.manifest_path("shard-00009"), layout.shard_path("shard-00009"))
    con = connect(refresh(str(tmp_path)))
    assert con.execute("SELECT count(*) FROM samples").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM manifest").fetchone() == (0,)


def test_catalog_views_over_shards_rejects_manifest_and_runs(tmp_path):
    layout = build_root(tmp_path)
    write_run_record(str(tmp_path), {"run_id": "run-1", "flow": "build-webperson", "status": "Completed",
                                     "output_root": str(tmp_path), "started_at": "2026-11-23T00:00:00+00:00",
                                     "finished_at": "2026-11-23T00:05:00+00:00", "config": {"shard_size": 2},
                                     "summary": {"kept": 3}})
    path = refresh(str(tmp_path))
    assert path == layout.default_catalog_path()
    con = connect(path)
    assert con.execute("SELECT count(*), count(DISTINCT shard_id) FROM samples").fetchone() == (3, 2)
    assert con.execute("SELECT stage, count(*) FROM rejects GROUP BY stage ORDER BY stage").fetchall() == [
        ("crawl", 2), ("dedup", 1), ("detect", 1)]
    assert con.execute("SELECT shard_id, rows, rejects, status FROM manifest ORDER BY shard_id").fetchall() == [
        ("shard-00000", 2, 3, "complete"), ("shard-00001", 1, 1, "complete")]
    assert con.execute("SELECT run_id, status, json_extract(summary, '$.kept')::INT FROM runs").fetchall() == [
        ("run-1", "Completed", 3)]
    assert [e["shard_id"] for e in complete_shards(layout)] == ["shard-00000", "shard-00001"]


def test_gadms_stats_exact_numbers(tmp_path, capsys):
    build_root(tmp_path)
    catalog = refresh(str(tmp_path))
    assert main(["stats", "--catalog", catalog, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["samples"] == 3
    assert stats["shards"] == 2
    assert stats["captions"] == 5
    assert stats["captions_per_sample"] == pytest.approx(5 / 3, abs=1e-4)
    # Word counts: 9, 5, 6, 9, 4.
    length = stats["caption_length_words"]
    assert (length["count"], length["min"], length["max"], length["mean"], length["median"]) == (5, 4, 9, 6.6, 6.0)
    assert length["histogram"] == [{"from": 0, "to": 4, "count": 1}, {"from": 5, "to": 9, "count": 4}]
    # a woman in red coat and black boots she carries bag man wears blue shirt the jeans white t-shirt he has shoes
    assert stats["vocabulary_size"] == 22
    assert stats["words_total"] == 33
    assert stats["top_colour_words"][:2] == [{"word": "red", "count": 3}, {"word": "black", "count": 2}]
    assert {w["word"]: w["count"] for w in stats["top_garment_words"]} == {
        "bag": 1, "boots": 1, "coat": 1, "jeans": 1, "shirt": 1, "shoes": 1, "t-shirt": 1}
    assert stats["templates_used"] == 3  # t002,t003: the two captions followed different templates
    assert stats["top_templates"] == [{"template_id": "t001", "count": 2}, {"template_id": "t002", "count": 1},
                                      {"template_id": "t003", "count": 1}]
    assert stats["rejects_by_stage"] == {"crawl": {"http_404": 2}, "dedup": {"near_duplicate": 1},
                                         "detect": {"no_person": 1}}
    assert stats["rejects_total"] == 4
    assert stats["top_source_domains"] == [{"domain": "a.example", "count": 2}, {"domain": "b.example", "count": 1}]
    assert stats["caption_backends"] == [{"backend": "alt-text", "model": "test-model", "count": 3}]

    assert main(["stats", "--catalog", catalog]) == 0
    text = capsys.readouterr().out
    assert "samples              3" in text and "near_duplicate 1" in text


def test_gadms_stats_missing_or_corrupt_catalog_is_one_line_error(tmp_path, capsys):
    assert main(["stats", "--catalog", str(tmp_path / "nope.duckdb")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"gadms stats: error: {tmp_path / 'nope.duckdb'}: catalog not found (run `gadms catalog refresh --root DIR` first)"
    corrupt = tmp_path / "corrupt.duckdb"
    corrupt.write_bytes(b"this is not a database" * 100)
    assert main(["stats", "--catalog", str(corrupt)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"gadms stats: error: {corrupt}: not a readable gadms catalog")


def test_export_public_layout_and_read_back(tmp_path):
    build_root(tmp_path / "root")
    paths = export_public(str(tmp_path / "root"), str(tmp_path / "public"))
    assert [Path(p).relative_to(tmp_path / "public").as_posix() for p in paths] == [
        "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    rows = [row for path in paths for row in pq.read_table(path).to_pylist()]
    assert [r["caption2"] for r in rows] == ["She carries a red bag.", "", "He has red shoes."]
    assert rows[0]["image"] == {"bytes": crop(0).image, "path": None}  # the `datasets` Image struct, bytes embedded
    assert rows[0]["image_path"] == f"images/{crop(0).sample_id}.jpg"
    assert list(rows[0]) == ["image", "image_path", "caption1", "caption2"]


def test_rerunning_a_chunk_is_idempotent(tmp_path):
    build_root(tmp_path)
    first = Path(OutputLayout(str(tmp_path)).shard_path("shard-00001")).read_bytes()
    build_root(tmp_path)
    con = connect(refresh(str(tmp_path)))
    assert con.execute("SELECT count(*) FROM samples").fetchone() == (3,)
    assert con.execute("SELECT count(*) FROM rejects").fetchone() == (4,)
    table = read_shard(OutputLayout(str(tmp_path)).shard_path("shard-00001"), columns=["sample_id"])
    assert table.num_rows == 1 and len(first) > 0


def test_shards_on_an_fsspec_url(tmp_path):
    root = "memory://gadms-test/webperson"
    layout = build_root(root)
    assert [e["shard_id"] for e in complete_shards(layout)] == ["shard-00000", "shard-00001"]
    assert read_shard(layout.shard_path("shard-00001"), columns=["caption2"]).to_pylist() == [
        {"caption2": "He has red shoes."}]
    assert layout.default_catalog_path() == "catalog.duckdb"  # DuckDB writes local files only
    paths = export_public(root, str(tmp_path / "public"))
    assert sum(pq.read_metadata(path).num_rows for path in paths) == 3 and len(paths) == 2
