import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.chunks import Chunk, ListSource, chunk_rows, chunk_urls, plan_chunks
from flows.config import resolve_build_config
from storage.errors import GadmsError


def _plan(*paths, shard_size=2, limit=None) -> list[Chunk]:
    return list(plan_chunks([ListSource(str(p)) for p in paths], shard_size, limit))


def _write_lines(path, urls):
    path.write_text("".join(f"{u}\n" for u in urls))
    return path


def test_chunks_are_stable_and_deduplicated(tmp_path):
    urls = [f"http://x.example/{i}.jpg" for i in range(5)] + ["http://x.example/1.jpg", "http://x.example/1.jpg"]
    chunks = _plan(_write_lines(tmp_path / "urls.txt", urls))
    assert [len(chunk_urls(c)) for c in chunks] == [2, 2, 2, 1]  # exact URL dedup within a chunk
    assert [c.shard_id for c in _plan(tmp_path / "urls.txt")] == [c.shard_id for c in chunks]
    changed = _plan(_write_lines(tmp_path / "urls.txt", urls[:2] + ["http://x.example/new.jpg"] + urls[3:]))
    assert changed[0].shard_id == chunks[0].shard_id  # same rows, same shard: skipped on a rebuild
    assert changed[1].shard_id != chunks[1].shard_id  # different rows get a new shard instead of an overwrite
    assert [c.shard_id for c in changed[2:]] == [c.shard_id for c in chunks[2:]]  # later chunks keep their ids


def test_chunk_rows_keep_repeated_urls_for_the_crawl_to_reject(tmp_path):
    urls = ["http://x.example/a.jpg", "http://x.example/b.jpg", "http://x.example/a.jpg", "http://x.example/a.jpg"]
    chunk, = _plan(_write_lines(tmp_path / "urls.txt", urls), shard_size=4)
    assert [r.url for r in chunk_rows(chunk)] == urls  # crawl_chunk makes rows 2 and 3 duplicate_url rejects
    assert [r.url for r in chunk_urls(chunk)] == urls[:2]  # one per URL: what a retry refetches


def test_shard_ids_survive_an_added_file_and_appended_rows(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    _write_lines(lists / "b.txt", [f"http://b.example/{i}.jpg" for i in range(4)])
    table = pa.table({"url": [f"http://p.example/{i}.jpg" for i in range(5)], "text": ["a person"] * 5})
    pq.write_table(table, lists / "p.parquet", row_group_size=5)
    before = {c.shard_id for c in _plan(lists / "b.txt", lists / "p.parquet")}
    _write_lines(lists / "a.txt", ["http://a.example/0.jpg"])  # sorts first
    _write_lines(lists / "b.txt", [f"http://b.example/{i}.jpg" for i in range(7)])
    with pq.ParquetWriter(lists / "p.parquet", table.schema) as writer:  # the same rows, then a new row group
        writer.write_table(table, row_group_size=5)
        writer.write_table(pa.table({"url": ["http://p.example/5.jpg"], "text": ["x"]}), row_group_size=5)
    after = _plan(lists / "a.txt", lists / "b.txt", lists / "p.parquet")
    assert before < {c.shard_id for c in after}
    assert [(c.rows.path.rsplit("/", 1)[-1], c.rows.start, c.rows.stop) for c in after if c.shard_id not in before] == [
        ("a.txt", 0, 1), ("b.txt", 4, 6), ("b.txt", 6, 7), ("p.parquet", 5, 6)]


def test_limit_takes_the_first_rows_across_files(tmp_path):
    a = _write_lines(tmp_path / "a.txt", [f"http://a.example/{i}.jpg" for i in range(3)])
    b = _write_lines(tmp_path / "b.txt", [f"http://b.example/{i}.jpg" for i in range(3)])
    chunks = _plan(a, b, limit=4)
    assert [r.url for c in chunks for r in chunk_urls(c)] == [
        "http://a.example/0.jpg", "http://a.example/1.jpg", "http://a.example/2.jpg", "http://b.example/0.jpg"]


def test_parquet_ranges_read_their_row_groups(tmp_path):
    rows = [f"http://p.example/{i}.jpg" for i in range(23)]
    pq.write_table(pa.table({"url": rows, "text": [f"t{i}" for i in range(23)], "k": list(range(23))}),
                   tmp_path / "p.parquet", row_group_size=10)
    chunks = list(plan_chunks([ListSource(str(tmp_path / "p.parquet"), extra_columns=("k",))], 4))
    assert [(c.rows.start, c.rows.stop) for c in chunks] == [(0, 4), (4, 8), (8, 10), (10, 14), (14, 18), (18, 20),
                                                             (20, 23)]
    records = [r for c in chunks for r in chunk_urls(c)]
    assert [r.url for r in records] == rows and records[9].alt_text == "t9" and records[9].source_meta == '{"k": 9}'


def test_remote_output_root_needs_a_local_work_dir():
    fields = {"inputs": {"url_lists": ["urls.parquet"]}, "output_root": "s3://bucket/webperson",
              "detect": {"weights": "yolo11x-pose.pt"}}
    with pytest.raises(GadmsError, match="a remote output_root needs work_dir"):
        resolve_build_config(fields)
    config = resolve_build_config({**fields, "work_dir": "/data/webperson-state"})
    assert config.state_layout.dedup_dir == "/data/webperson-state/dedup"
    local = resolve_build_config({**fields, "output_root": "runs/wp"})
    assert local.state_layout.work_dir == "runs/wp/work"


def test_unknown_stage_option_is_rejected():
    with pytest.raises(GadmsError, match=r"field 'crawl.speed': Extra inputs are not permitted"):
        resolve_build_config({"inputs": {"url_lists": ["u"]}, "output_root": "o", "crawl": {"speed": 3},
                              "detect": {"weights": "yolo11x-pose.pt"}})


def test_a_build_must_name_its_detector_weights():
    """No default weights: a real run that forgets `weights:` must not fall back to the synthetic-only demo detector."""
    with pytest.raises(GadmsError, match=r"field 'detect.weights': Value error, required for the yolo backend"):
        resolve_build_config({"inputs": {"url_lists": ["u"]}, "output_root": "o"})
    assert resolve_build_config({"inputs": {"url_lists": ["u"]}, "output_root": "o",
                                 "detect": {"backend": "hog"}}).detect.weights is None
