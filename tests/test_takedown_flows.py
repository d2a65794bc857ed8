"""The benchmark guard and takedown in real builds: benchmark images planted in a served synthetic web are caught
at dedup; `gadms takedown` removes samples and a rebuild does not bring them back."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import pytest

from curation.synthweb import SiteServer, render_site, write_url_list
from flows.build_webperson import build_webperson
from flows.cli import main
from curation.synthweb.benchmark import write_synthetic_benchmark
from storage.layout import OutputLayout
from storage.shards import complete_shards
from tests.flow_helpers import build_config

pytestmark = pytest.mark.slow

RADIUS = 6  # the build's dedup radius (the default)


def test_planted_benchmark_images_are_caught_and_taken_down_samples_stay_removed(tmp_path, capsys):
    info = render_site(tmp_path / "site", images=40, seed=3)
    bench = tmp_path / "bench"
    write_synthetic_benchmark(bench, train_identities=0, val_identities=2, test_identities=4, images_per_identity=2,
                              seed=11, train_captions="clean", size=(128, 384), first_identity=1_000_000)
    held_out = [r["img_path"] for r in json.loads((bench / "RSTPReid" / "data_captions.json").read_text())]
    for path in held_out:  # planted into the web, as a scraped copy of the benchmark would be
        (info.root / "www" / "planted" / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bench / "RSTPReid" / "imgs" / path, info.root / "www" / "planted" / path)

    out = tmp_path / "out"
    with SiteServer(info.root, slow_seconds=3) as server:
        write_url_list(info.root, server.base_url, tmp_path / "urls.jsonl")
        planted = {f"{server.base_url}/planted/{path}": f"RSTPReid:{path}" for path in held_out}
        (tmp_path / "planted.jsonl").write_text("".join(
            json.dumps({"url": url, "caption": "a person walking down the street", "page_url": ""}) + "\n"
            for url in planted))
        config = build_config(tmp_path / "urls.jsonl", out,
                              benchmark_guard=[{"dataset": "RSTPReid", "root": str(bench)}])
        config["inputs"]["url_lists"].append(str(tmp_path / "planted.jsonl"))
        summary = build_webperson(config)

        assert summary["benchmark_guard"] == [{"dataset": "RSTPReid", "images": 12, "skipped": False}]
        con = duckdb.connect(summary["catalog"], read_only=True)
        overlaps = con.execute("SELECT url, detail FROM rejects WHERE reason = 'benchmark_overlap'").fetchall()
        # Each caught crop names the very benchmark file that was planted at its URL; none of the web's own crops
        # (identities never in the benchmark) is caught.
        assert sorted(overlaps) == sorted(planted.items())  # each planted image's one crop, naming its file
        assert summary["rejects"]["dedup/benchmark_overlap"] == 12
        assert con.execute("SELECT count(*) FROM samples WHERE source_url LIKE '%/planted/%'").fetchone() == (0,)
        capsys.readouterr()
        assert main(["stats", "--catalog", summary["catalog"], "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["benchmark_overlap_rejects"] == 12

        # Take down three of the web's samples: by image URL, by source sha256, by pHash; samples dedup dropped no
        # near copy in favour of, since such a copy is another image that a rebuild of its chunk would keep once
        # the sample it duplicated is removed by URL or bytes (a pHash entry removes copies as well).
        site_samples = con.execute("""SELECT sample_id, source_url, source_sha256, phash FROM samples
                                      WHERE source_url NOT LIKE '%/planted/%' AND sample_id NOT IN
                                          (SELECT detail FROM rejects WHERE stage = 'dedup')
                                      ORDER BY sample_id""").fetchall()
        by_url, by_sha, by_phash = site_samples[0], site_samples[len(site_samples) // 2], site_samples[-1]
        expected_removed = {r[0] for r in con.execute(
            """SELECT sample_id FROM samples WHERE source_url = ? OR page_url = ? OR source_sha256 = ?
               OR crop_sha256 = ? OR bit_count(xor(phash, ?::UBIGINT)) <= ?""",
            [by_url[1], by_url[1], by_sha[2], by_sha[2], by_phash[3], RADIUS]).fetchall()}
        before = {r[0] for r in con.execute("SELECT sample_id FROM samples").fetchall()}
        remaining_sources = sorted(r[0] for r in con.execute(
            f"SELECT source_url FROM samples WHERE sample_id NOT IN ({', '.join('?' * len(expected_removed))})",
            sorted(expected_removed)).fetchall())
        con.close()
        (tmp_path / "takedown.txt").write_text(
            f"url {by_url[1]}\nsha256 {by_sha[2]}\nphash {by_phash[3]:016x}\n")
        capsys.readouterr()
        assert main(["takedown", "--root", str(out), "--list", str(tmp_path / "takedown.txt"), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["removed_total"] == len(expected_removed) >= 3

        con = duckdb.connect(summary["catalog"], read_only=True)
        assert {r[0] for r in con.execute("SELECT sample_id FROM samples").fetchall()} == before - expected_removed
        assert {r[0] for r in con.execute("SELECT sample_id FROM rejects WHERE stage = 'takedown'").fetchall()} == (
            expected_removed)
        con.close()
        layout = OutputLayout(str(out))
        for entry in complete_shards(layout):
            data = Path(layout.shard_path(entry["shard_id"])).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["shard_id"]

        # An incremental rebuild skips every complete shard; a rebuild of the affected chunks (their manifest
        # entries deleted) applies the root's takedown lists.
        unchanged = build_webperson(config)
        assert unchanged["chunks_skipped"] == unchanged["chunks"] and unchanged["kept"] == 0
        rewritten = [e["shard_id"] for e in complete_shards(layout) if e["run_id"] == report_run_id(out)]
        assert rewritten
        for shard_id in rewritten:
            Path(layout.manifest_path(shard_id)).unlink()
        again = build_webperson(config)
    assert again["chunks"] - again["chunks_skipped"] == len(rewritten)
    con = duckdb.connect(again["catalog"], read_only=True)
    # No removed sample is back, and every image kept before still gives as many samples. (A detector box can move
    # by a pixel when a chunk's batches change, here because one URL is no longer fetched, which renames a sample.)
    assert not {r[0] for r in con.execute("SELECT sample_id FROM samples").fetchall()} & expected_removed
    assert sorted(r[0] for r in con.execute("SELECT source_url FROM samples").fetchall()) == remaining_sources
    assert con.execute("""SELECT count(*) FROM samples WHERE source_url = ? OR source_sha256 = ?
                          OR bit_count(xor(phash, ?::UBIGINT)) <= ?""",
                       [by_url[1], by_sha[2], by_phash[3], RADIUS]).fetchone() == (0,)
    crawl_time = con.execute("SELECT url, detail FROM rejects WHERE stage = 'crawl' AND reason = 'takedown'").fetchall()
    dedup_time = {r[0] for r in con.execute(
        "SELECT sample_id FROM rejects WHERE stage = 'dedup' AND reason = 'takedown'").fetchall()}
    con.close()
    # The listed URL is never fetched again; every other removed sample is detected anew and dropped at dedup.
    assert crawl_time == [(by_url[1], f"url {by_url[1]}")]
    url_samples = {sample_id for sample_id, url, _, _ in site_samples if url == by_url[1]}
    assert expected_removed - url_samples <= dedup_time


def report_run_id(root: Path) -> str:
    runs = [json.loads(p.read_text()) for p in (root / "runs").glob("*.json")]
    return next(r["run_id"] for r in runs if r["flow"] == "takedown")
