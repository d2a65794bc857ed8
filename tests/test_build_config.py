import pytest

from curation.chunks import plan_chunks
from flows.config import resolve_build_config
from storage.errors import GadmsError
from storage.records import UrlRecord


def test_chunks_are_stable_and_deduplicated():
    urls = [UrlRecord(f"http://x.example/{i}.jpg") for i in range(5)] + [UrlRecord("http://x.example/1.jpg")]
    chunks = plan_chunks(urls, shard_size=2)
    assert [len(c.urls) for c in chunks] == [2, 2, 1]
    assert [c.shard_id[:11] for c in chunks] == ["shard-00000", "shard-00001", "shard-00002"]
    assert [c.shard_id for c in plan_chunks(urls, 2)] == [c.shard_id for c in chunks]
    changed = plan_chunks(urls[:2] + [UrlRecord("http://x.example/new.jpg")] + urls[3:5], 2)
    assert changed[0].shard_id == chunks[0].shard_id  # same URLs, same shard: skipped on a rebuild
    assert changed[1].shard_id != chunks[1].shard_id  # different URLs get a new shard instead of an overwrite


def test_remote_output_root_needs_a_local_work_dir():
    fields = {"inputs": {"url_lists": ["urls.parquet"]}, "output_root": "s3://bucket/webperson"}
    with pytest.raises(GadmsError, match="a remote output_root needs work_dir"):
        resolve_build_config(fields)
    config = resolve_build_config({**fields, "work_dir": "/data/webperson-state"})
    assert config.state_layout.dedup_dir == "/data/webperson-state/dedup"
    local = resolve_build_config({**fields, "output_root": "runs/wp"})
    assert local.state_layout.work_dir == "runs/wp/work"


def test_unknown_stage_option_is_rejected():
    with pytest.raises(GadmsError, match=r"field 'crawl.speed': Extra inputs are not permitted"):
        resolve_build_config({"inputs": {"url_lists": ["u"]}, "output_root": "o", "crawl": {"speed": 3}})
