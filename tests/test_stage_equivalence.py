"""The stage commands in sequence (`gadms crawl` → `gadms detect` → `gadms caption`) and `gadms build` are two ways
to run the same stages: on the same input they keep the same samples and reject the same items for the same reasons."""
from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest
import yaml

from curation.synthweb import SiteServer, render_site, write_url_list
from flows.build_webperson import build_webperson
from flows.cli import main
from storage.catalog import connect
from tests.flow_helpers import build_config

pytestmark = pytest.mark.slow


def test_stage_commands_and_the_build_flow_agree(tmp_path, capsys):
    info = render_site(tmp_path / "site", images=40, seed=8)
    with SiteServer(info.root) as first:
        port = int(first.base_url.rsplit(":", 1)[1])
        write_url_list(info.root, first.base_url, tmp_path / "urls.jsonl")
    config = build_config(tmp_path / "urls.jsonl", tmp_path / "built", shard_size=1000)  # one chunk on both paths
    (tmp_path / "crawl.yaml").write_text(yaml.safe_dump(config["crawl"]))
    (tmp_path / "detect.yaml").write_text(yaml.safe_dump({"detect": config["detect"]}))

    # A fresh server per run: the site's 429 fault answers by request count.
    with SiteServer(info.root, port=port, slow_seconds=3):
        assert main(["crawl", "--urls", str(tmp_path / "urls.jsonl"), "--out", str(tmp_path / "crawled"),
                     "--config", str(tmp_path / "crawl.yaml"), "--shard-size", "1000"]) == 0
    assert main(["detect", "--downloads", str(tmp_path / "crawled"), "--out", str(tmp_path / "detected"),
                 "--config", str(tmp_path / "detect.yaml")]) == 0
    (crops,) = (tmp_path / "detected" / "crops").glob("*.parquet")
    assert main(["caption", "--crops", str(crops), "--out", str(tmp_path / "captioned"), "--backend", "alt-text"]) == 0
    capsys.readouterr()
    with SiteServer(info.root, port=port, slow_seconds=3):
        summary = build_webperson(config)

    staged_kept = set(pq.read_table(tmp_path / "captioned" / "captions.parquet")["sample_id"].to_pylist())
    staged_rejects = Counter(
        (r["url"], r["sample_id"], r["stage"], r["reason"])
        for folder in ("crawled/rejects", "detected/rejects", "captioned/rejects.parquet")
        for r in pq.read_table(tmp_path / folder).to_pylist())
    con = connect(summary["catalog"])
    built_kept = {row[0] for row in con.execute("SELECT sample_id FROM samples").fetchall()}
    built_rejects = Counter(con.execute("SELECT url, sample_id, stage, reason FROM rejects").fetchall())
    assert len(built_kept) > 0 and sum(built_rejects.values()) > 0
    assert staged_kept == built_kept
    assert staged_rejects == built_rejects
