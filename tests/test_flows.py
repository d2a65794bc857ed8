import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from curation.synthweb import SiteServer, render_site, write_url_list
from curation.synthweb.quality import CROP_STAGES, curation_quality
from flows.build_webperson import build_webperson
from storage.catalog import connect
from storage.layout import OutputLayout
from storage.shards import read_parquet, read_shard
from tests.flow_helpers import REPO, build_config, stop_group, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path):
    """A rendered site and its URL list. Serve it with `served(site)`: a fresh server per build, on the same port,
    because the site's 429 fault answers by request count."""
    info = render_site(tmp_path / "site", images=60, seed=3)
    with SiteServer(info.root) as first:
        port = int(first.base_url.rsplit(":", 1)[1])
        write_url_list(info.root, first.base_url, tmp_path / "urls.jsonl")
    return {"urls": tmp_path / "urls.jsonl", "info": info, "port": port}


def served(site) -> SiteServer:
    return SiteServer(site["info"].root, port=site["port"], slow_seconds=3)


def _shard_contents(root: Path) -> dict[str, list[tuple]]:
    layout = OutputLayout(str(root))
    contents = {}
    for path in sorted(Path(layout.shards_dir).glob("*.parquet")):
        table = read_shard(str(path), columns=["sample_id", "caption1", "caption2", "bbox"])
        contents[path.stem] = sorted(zip(*(table[c].to_pylist() for c in table.column_names)))
    return contents


def assert_same_build(root: Path, reference_root: Path) -> None:
    """Two builds of the same input agree: the same shards, the same crops reaching dedup (kept, or rejected there or
    later), as many kept, and the same rows for the samples both kept. Which crop of a duplicate pair is kept depends on which chunk reaches the
    global dedup first, and parallel chunks (threads, Ray tasks) arrive in either order."""
    def outcome(root: Path) -> tuple[dict, set]:
        layout = OutputLayout(str(root))
        rows = {row[0]: row for rows in _shard_contents(root).values() for row in rows}
        dropped = {r["sample_id"] for path in sorted(Path(layout.shards_dir).glob("*.parquet"))
                   for r in read_parquet(layout.rejects_path(path.stem)).to_pylist() if r["stage"] in CROP_STAGES}
        return rows, dropped

    (kept, dropped), (reference_kept, reference_dropped) = outcome(root), outcome(reference_root)
    assert set(_shard_contents(root)) == set(_shard_contents(reference_root))
    assert len(kept) == len(reference_kept) > 0
    assert set(kept) | dropped == set(reference_kept) | reference_dropped
    both = set(kept) & set(reference_kept)
    assert {sample: kept[sample] for sample in both} == {sample: reference_kept[sample] for sample in both}


def test_build_webperson_on_the_synthetic_web(site, tmp_path):
    out = tmp_path / "out"
    config = build_config(site["urls"], out)
    config["crawl"]["extra_columns"] = ["page_url"]  # any list column would do; this one is checkable
    with served(site):
        summary = build_webperson(config)
    urls = sum(1 for _ in open(site["urls"]))
    crawl_rejects = sum(n for key, n in summary["rejects"].items() if key.startswith("crawl/"))
    # Every URL ends as a download or a crawl reject; every person either is kept or has a reject.
    assert summary["urls"] == urls
    assert summary["downloaded"] + crawl_rejects == urls
    assert summary["kept"] > 0 and summary["chunks_skipped"] == 0
    # Against the site's ground truth, every URL-list row ends at exactly one stage.
    accounting = curation_quality(site["info"].root, out)["urls"]
    assert accounting["rows"] == urls and accounting["accounted"], accounting
    con = connect(summary["catalog"])
    assert con.execute("SELECT count(*), count(DISTINCT sample_id) FROM samples").fetchone() == (summary["kept"],) * 2
    assert con.execute("SELECT count(*) FROM rejects").fetchone()[0] == sum(summary["rejects"].values())
    assert con.execute("SELECT count(*) FROM manifest WHERE status = 'complete'").fetchone()[0] == summary["chunks"]
    assert con.execute("SELECT count(*) FROM runs WHERE flow = 'build-webperson'").fetchone() == (1,)
    assert con.execute("SELECT count(*) FROM samples WHERE caption_backend <> 'alt-text'").fetchone() == (0,)
    for page_url, source_meta in con.execute("SELECT page_url, source_meta FROM samples").fetchall():
        assert json.loads(source_meta) == {"page_url": page_url}
    # Provenance and faces of every sample (schema v2). The site serves no X-Robots-Tag on the images it lets
    # through (its noai images are crawl rejects), and the alt-text backend runs no filter.
    started, finished = con.execute("SELECT started_at, finished_at FROM runs").fetchone()
    assert con.execute("""SELECT count(*), count(*) FILTER (WHERE fetched_at BETWEEN ? AND ?), list(DISTINCT http_status),
                                 count(x_robots_tag), count(num_faces), count(*) FILTER (WHERE len(face_boxes) = num_faces),
                                 count(filter_keep) + count(filter_reason) + count(filter_model) FROM samples""",
                       [started, finished]).fetchone() == (summary["kept"], summary["kept"], [200], 0, summary["kept"],
                                                           summary["kept"], 0)
    # A bounded sample of every image-stage reject reason has a thumbnail, per shard, within the budget.
    thumbnails = con.execute("""SELECT shard_id, stage, reason, count(*), max(greatest(width, height)),
                                       sum(octet_length(image)) FROM reject_thumbnails GROUP BY ALL""").fetchall()
    image_reasons = con.execute("""SELECT DISTINCT shard_id, stage, reason FROM rejects
                                   WHERE stage IN ('detect', 'pose', 'dedup', 'filter', 'caption', 'quality')""").fetchall()
    assert sorted(t[:3] for t in thumbnails) == sorted(image_reasons)
    assert all(n <= 8 and side <= 96 for *_, n, side, _ in thumbnails)
    assert summary["reject_thumbnail_bytes"] == sum(t[5] for t in thumbnails)
    reports = list((out / "reports").glob("*/*.png"))
    assert sorted(p.name for p in reports) == ["caption_lengths.png", "contact_sheet.png"]
    con.close()

    with served(site):
        again = build_webperson(config)
    assert again["chunks_skipped"] == again["chunks"] == summary["chunks"]
    assert again["kept"] == 0


def _write_jsonl(path: Path, records: list[dict], mode: str = "w") -> None:
    with path.open(mode, encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_rebuild_with_an_added_file_and_appended_rows_processes_only_new_chunks(site, tmp_path):
    """Shard ids come from the rows' identity: the first build's chunks are skipped, only new rows are crawled; a URL
    listed again in the added file is crawled there too, and the sha256 dedup keeps its crops once."""
    plain = [r for r in map(json.loads, open(site["urls"]))
             if re.fullmatch(r"/img/s\d{5}\.jpg", urlsplit(r["url"]).path)]  # plain scenes: no fault, no resize
    lists = tmp_path / "lists"
    lists.mkdir()
    _write_jsonl(lists / "a.jsonl", plain[:6])
    config = build_config(lists, tmp_path / "out", shard_size=3)
    with served(site):
        first = build_webperson(config)
    con = connect(first["catalog"])
    kept = dict(con.execute("SELECT source_url, count(*) FROM samples GROUP BY ALL").fetchall())
    first_shards = {s for (s,) in con.execute("SELECT shard_id FROM manifest").fetchall()}
    con.close()
    assert first["chunks"] == 2 and kept
    listed_twice = next(r for r in plain[:6] if r["url"] in kept)

    _write_jsonl(lists / "a.jsonl", plain[6:8], mode="a")
    _write_jsonl(lists / "b.jsonl", [plain[8], listed_twice])
    with served(site):
        second = build_webperson(config)
    assert (second["chunks"], second["chunks_skipped"], second["urls"]) == (4, 2, 4)
    con = connect(second["catalog"])
    assert first_shards < {s for (s,) in con.execute("SELECT shard_id FROM manifest").fetchall()}
    assert con.execute("SELECT count(*) FROM samples WHERE source_url = ?", [listed_twice["url"]]).fetchone() == (
        kept[listed_twice["url"]],)
    assert con.execute("SELECT count(*) FROM rejects WHERE stage = 'dedup' AND url = ?",
                       [listed_twice["url"]]).fetchone() == (kept[listed_twice["url"]],)
    assert con.execute("SELECT count(*), count(DISTINCT sample_id) FROM samples").fetchone() == (
        first["kept"] + second["kept"],) * 2
    con.close()


def test_a_url_repeated_within_a_chunk_is_a_duplicate_url_reject(site, tmp_path):
    """As `gadms crawl` does: the URL is fetched once, each later row of it is a crawl reject, so every row of the
    list is accounted for."""
    plain = [r for r in map(json.loads, open(site["urls"]))
             if re.fullmatch(r"/img/s\d{5}\.jpg", urlsplit(r["url"]).path)]
    rows = [plain[0], plain[1], plain[0], plain[2], plain[0], plain[1]]
    _write_jsonl(tmp_path / "urls.jsonl", rows)
    with served(site):
        summary = build_webperson(build_config(tmp_path / "urls.jsonl", tmp_path / "out", shard_size=6))
    assert (summary["chunks"], summary["urls"], summary["downloaded"]) == (1, 6, 3)
    assert summary["rejects"].get("crawl/duplicate_url") == 3
    assert sum(n for key, n in summary["rejects"].items() if key.startswith("crawl/")) == 3
    con = connect(summary["catalog"])
    assert con.execute("SELECT url, detail FROM rejects WHERE reason = 'duplicate_url' ORDER BY detail, url"
                       ).fetchall() == [(plain[0]["url"], "same URL as row 0"), (plain[0]["url"], "same URL as row 0"),
                                        (plain[1]["url"], "same URL as row 1")]
    con.close()


def test_seed_pages_build_takes_the_first_limit_images(site, tmp_path):
    """Images found on seed pages are planned as a list in the work dir; `limit` takes the first N rows."""
    base = f"http://127.0.0.1:{site['port']}"
    config = build_config(site["urls"], tmp_path / "out", shard_size=2, inputs={
        "seed_pages": [base + "/gallery/page-1.html"], "limit": 3})
    config["crawl"]["seed_max_depth"] = 0
    with served(site):
        summary = build_webperson(config)
    seed_list = [json.loads(line) for line in open(tmp_path / "out" / "work" / "seed-pages.jsonl")]
    assert (summary["chunks"], summary["urls"]) == (2, 3) and len(seed_list) > 3
    assert {seed_list[0]["page_url"]} == {base + "/gallery/page-1.html"}
    con = connect(summary["catalog"])
    crawled = {u for (u,) in con.execute("SELECT source_url FROM samples UNION SELECT url FROM rejects "
                                         "WHERE stage = 'crawl'").fetchall()}
    assert crawled <= {r["url"] for r in seed_list[:3]} and crawled
    con.close()


def test_killed_build_reruns_to_the_same_shards(site, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    clean = write_config(tmp_path / "clean.yaml", build_config(site["urls"], tmp_path / "clean", shard_size=8))
    killed = write_config(tmp_path / "killed.yaml", build_config(site["urls"], tmp_path / "killed", shard_size=8))
    gadms = [sys.executable, "-m", "flows.cli", "build", "--config"]

    with served(site):
        process = subprocess.Popen(gadms + [str(killed)], cwd=REPO, env=env, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        manifest = tmp_path / "killed" / "manifest"
        deadline = time.monotonic() + 300
        while not (manifest.is_dir() and len(list(manifest.glob("*.json"))) >= 2):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the build wrote no shard in time"
            time.sleep(0.2)
        stop_group(process, signal.SIGKILL)
    done_before_kill = len(list(manifest.glob("*.json")))
    for config in (killed, clean):
        with served(site):
            subprocess.run(gadms + [str(config)], cwd=REPO, env=env, check=True, capture_output=True, timeout=600)

    assert_same_build(tmp_path / "killed", tmp_path / "clean")
    resumed = _shard_contents(tmp_path / "killed")
    assert len(resumed) > done_before_kill
    ids = Counter(row[0] for rows in resumed.values() for row in rows)
    assert ids and max(ids.values()) == 1
    con = connect(str(tmp_path / "killed" / "catalog.duckdb"))
    runs = con.execute("SELECT json_extract(summary, '$.chunks_skipped')::INT FROM runs").fetchall()
    assert runs == [(done_before_kill,)]  # only the rerun finished; it skipped what the killed run had completed


def test_build_webperson_on_a_local_ray_instance(site, tmp_path):
    pytest.importorskip("prefect_ray")
    config = build_config(site["urls"], tmp_path / "ray-out", shard_size=25,
                          runner={"kind": "ray", "ray_address": None})
    with served(site):
        reference = build_webperson(build_config(site["urls"], tmp_path / "local-out", shard_size=25))
    with served(site):
        summary = build_webperson(config)
    assert summary["chunks"] == reference["chunks"] == 4
    assert summary["kept"] == reference["kept"] > 0
    assert_same_build(tmp_path / "ray-out", tmp_path / "local-out")


def test_ctrl_c_ends_a_build_within_seconds_and_the_rerun_resumes(site, tmp_path):
    """Chunk 0 is one plain image, chunk 1 the site's slow URL: Ctrl-C while chunk 1 waits on it."""
    records = [json.loads(line) for line in open(site["urls"])]
    plain = next(r for r in records if "/slow/" not in r["url"])
    base = plain["url"].split("/", 3)[:3]
    urls = tmp_path / "two.jsonl"
    urls.write_text("".join(json.dumps({"url": url, "caption": "a person"}) + "\n"
                            for url in (plain["url"], "/".join(base) + "/slow/photo.jpg")))
    config = build_config(urls, tmp_path / "out", shard_size=1)
    config["crawl"].update(read_timeout_s=300, total_timeout_s=300)
    config_path = write_config(tmp_path / "build.yaml", config)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    gadms = [sys.executable, "-m", "flows.cli", "build", "--config", str(config_path), "--json"]
    manifest = tmp_path / "out" / "manifest"

    with SiteServer(site["info"].root, port=site["port"], slow_seconds=300):
        process = subprocess.Popen(gadms, cwd=REPO, env=env, start_new_session=True, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 300
            while not list(manifest.glob("*.json")):
                assert process.poll() is None, process.stderr.read()[-3000:]
                assert time.monotonic() < deadline, "the build finished no chunk in time"
                time.sleep(0.2)
            time.sleep(1)  # chunk 1 now waits on the slow URL
            os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
            interrupted = time.monotonic()
            _, err = process.communicate(timeout=45)
            print(f"exit {time.monotonic() - interrupted:.1f} s after SIGINT")
            assert time.monotonic() - interrupted < 45
        finally:
            stop_group(process, signal.SIGKILL)
    assert process.returncode == 130, err[-3000:]
    assert err.rstrip().endswith("gadms build: interrupted") and "Traceback" not in err, err[-3000:]
    assert len(list(manifest.glob("*.json"))) == 1

    with SiteServer(site["info"].root, port=site["port"], slow_seconds=0.1):
        done = subprocess.run(gadms, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert (summary["chunks"], summary["chunks_skipped"], summary["downloaded"]) == (2, 1, 1)


def test_chunk_threads_starting_together_share_one_detector():
    """The task runner's first chunks start at once; each must get the process's one detector, not its own."""
    import threading

    from curation.detect import DetectConfig
    from flows.build_webperson import _detector

    config_json = DetectConfig(weights="yolo11n-pose.yaml", imgsz=128, device="cpu").model_dump_json()
    start, got = threading.Barrier(4), []

    def get() -> None:
        start.wait()
        got.append(_detector(config_json))

    threads = [threading.Thread(target=get) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 4 and len({id(detector) for detector in got}) == 1
