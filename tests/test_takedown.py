"""Takedown blocklists: the format, matching, `gadms takedown` on built shards (atomic under SIGKILL), crawl and
export honouring the lists."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.crawl import CrawlConfig, crawl_chunk
from flows.cli import main
from storage.export import export_public
from storage.layout import OutputLayout
from storage.records import UrlRecord
from storage.shards import commit_shard, complete_shards
from storage.takedown import TakedownList, TakedownListError, parse_takedown_list, read_takedown_list
from tests.flow_helpers import REPO
from tests.storage_fixtures import captions_for, crop, jpeg, rejects

# Crops whose pHashes are far apart (≥ 16 bits between any two), so a pHash entry can match exactly one of them.
PHASHES = [0x0000_0000_0000_0000, 0xFFFF_0000_0000_0000, 0x0000_FFFF_0000_0000, 0x0000_0000_FFFF_0000,
           0x0000_0000_0000_FFFF, 0xFF00_FF00_FF00_FF00]


def _crops():
    made = []
    for n, phash in enumerate(PHASHES):
        c = crop(n, "cdn.photos.example" if n == 1 else "a.example")
        made.append(dataclasses.replace(c, phash=phash))
    return made


def _build_root(root: Path) -> tuple[OutputLayout, list]:
    """Three shards of two samples each; shard-00002's two samples match nothing in LIST_TEXT."""
    layout = OutputLayout(str(root))
    crops = _crops()
    for s in range(3):
        pair = crops[2 * s: 2 * s + 2]
        captions = [captions_for(c, f"caption {c.sample_id}", "") for c in pair]
        commit_shard(layout, f"shard-{s:05d}", "run-1", pair, captions, rejects(("crawl", "http_404")))
    return layout, crops


def _list_text(crops) -> str:
    # 0: by URL (written with an upper-case host and a fragment), 1: by its domain's parent, 2: by crop sha256,
    # 3: by a pHash 6 bits from its own. 4 and 5 stay.
    near = PHASHES[3] ^ 0b111111
    return "\n".join([
        "# takedown requests of 2026-12-01",
        "",
        "url https://A.EXAMPLE/img/0.jpg#top   # asked by the photographer",
        "domain photos.example",
        f"sha256 {crops[2].crop_sha256}",
        f"phash {near:016x}",
        "phash 00000000ffffffff",  # 16 bits from crop 4, 16 from crop 3: matches nothing
    ]) + "\n"


def _sha_matches_manifest(layout: OutputLayout) -> dict[str, bool]:
    out = {}
    for entry in complete_shards(layout):
        data = Path(layout.shard_path(entry["shard_id"])).read_bytes()
        out[entry["shard_id"]] = hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    return out


def test_list_format_and_matching():
    entries = parse_takedown_list(
        "# comment\nurl http://example.org:80/a.jpg?x=1\ndomain Example.COM.\nsha256 " + "AB" * 32
        + "\nphash 00000000000000ff  # trailing comment\n", "blocklist.txt")
    assert [str(e) for e in entries.entries()] == [
        "url http://example.org:80/a.jpg?x=1", "domain example.com", "sha256 " + "ab" * 32, "phash 00000000000000ff"]
    assert str(entries.url_entry("HTTP://EXAMPLE.ORG/a.jpg?x=1")) == "url http://example.org:80/a.jpg?x=1"
    assert entries.url_entry("http://example.org/a.jpg?x=2") is None
    assert str(entries.url_entry("https://img.cdn.example.com/p.png")) == "domain example.com"
    assert str(entries.url_entry("", "https://example.com/page")) == "domain example.com"
    assert entries.url_entry("https://notexample.com/p.png") is None
    assert entries.url_entry("https://example.com.evil.org/p.png") is None
    assert str(entries.sha256_entry(None, "ab" * 32)) == "sha256 " + "ab" * 32
    hashes = np.array([0xFF ^ 0b111111, 0xFF ^ 0b1111111, 0xFF], dtype=np.uint64)  # 6, 7 and 0 bits away
    assert entries.phash_matches(hashes, radius=6).tolist() == [0, -1, 0]
    assert entries.phash_matches(hashes, radius=7).tolist() == [0, 0, 0]


@pytest.mark.parametrize("line, message", [
    ("ur http://a.example/x.jpg", r"blocklist.txt:2: unknown entry kind 'ur'"),
    ("url", r"blocklist.txt:2: url needs exactly one value, got ''"),
    ("url http://a.example/x.jpg extra", r"blocklist.txt:2: url needs exactly one value"),
    ("url ftp://a.example/x.jpg", r"blocklist.txt:2: url 'ftp://a.example/x.jpg' is not an http\(s\) URL with a host"),
    ("domain https://a.example/", r"blocklist.txt:2: domain 'https://a.example/' is not a host name"),
    ("sha256 abc", r"blocklist.txt:2: sha256 'abc' is not 64 hex digits"),
    ("phash 12345678901234567", r"blocklist.txt:2: phash '12345678901234567' is not 16 hex digits"),
])
def test_a_bad_line_is_an_error_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "blocklist.txt"
    path.write_text(f"domain ok.example\n{line}\n")
    with pytest.raises(TakedownListError, match=message):
        read_takedown_list(str(path))


def test_takedown_removes_matches_records_them_and_refreshes_the_catalog(tmp_path, capsys):
    layout, crops = _build_root(tmp_path / "root")
    (tmp_path / "list.txt").write_text(_list_text(crops))
    untouched = Path(layout.shard_path("shard-00002")).read_bytes()
    assert main(["takedown", "--root", layout.root, "--list", str(tmp_path / "list.txt")]) == 0
    assert "removed 4 sample(s) (domain 1, phash 1, sha256 1, url 1) from 2 of 3 shard(s)" in capsys.readouterr().out

    con = duckdb.connect(str(tmp_path / "root" / "catalog.duckdb"), read_only=True)
    assert sorted(r[0] for r in con.execute("SELECT sample_id FROM samples").fetchall()) == sorted(
        c.sample_id for c in crops[4:])
    removed = con.execute("""SELECT sample_id, url, reason, detail FROM rejects WHERE stage = 'takedown'
                             ORDER BY url""").fetchall()
    assert removed == sorted([
        (crops[0].sample_id, crops[0].source_url, "url", "url https://A.EXAMPLE/img/0.jpg#top"),
        (crops[1].sample_id, crops[1].source_url, "domain", "domain photos.example"),
        (crops[2].sample_id, crops[2].source_url, "sha256", f"sha256 {crops[2].crop_sha256}"),
        (crops[3].sample_id, crops[3].source_url, "phash", f"phash {PHASHES[3] ^ 0b111111:016x}"),
    ], key=lambda r: r[1])
    # The rejects the build recorded are still there, and the manifest counts both.
    assert con.execute("SELECT shard_id, rows, rejects FROM manifest ORDER BY shard_id").fetchall() == [
        ("shard-00000", 0, 3), ("shard-00001", 0, 3), ("shard-00002", 2, 1)]
    assert con.execute("SELECT flow, json_extract(summary, '$.removed_total')::INT FROM runs "
                       "WHERE flow = 'takedown'").fetchall() == [("takedown", 4)]
    con.close()
    assert main(["stats", "--catalog", str(tmp_path / "root" / "catalog.duckdb"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["takedown_rejects"], stats["benchmark_overlap_rejects"], stats["samples"]) == (4, 0, 2)
    assert stats["rejects_by_stage"]["takedown"] == {"domain": 1, "phash": 1, "sha256": 1, "url": 1}
    assert main(["stats", "--catalog", str(tmp_path / "root" / "catalog.duckdb")]) == 0
    assert "  takedown 4, benchmark_overlap 0\n" in capsys.readouterr().out
    assert pq.read_table(layout.shard_path("shard-00000")).num_rows == 0
    assert Path(layout.shard_path("shard-00002")).read_bytes() == untouched
    assert _sha_matches_manifest(layout) == {"shard-00000": True, "shard-00001": True, "shard-00002": True}
    kept_lists = list((tmp_path / "root" / "takedown").glob("*.txt"))
    assert [p.read_text() for p in kept_lists] == [_list_text(crops)]
    assert not list((tmp_path / "root" / "takedown" / "pending").glob("*"))

    # Again: nothing left to remove, the list is not kept twice.
    assert main(["takedown", "--root", layout.root, "--list", str(tmp_path / "list.txt")]) == 0
    assert "removed 0 sample(s) (none) from 0 of 3 shard(s)" in capsys.readouterr().out
    assert len(list((tmp_path / "root" / "takedown").glob("*.txt"))) == 1


def test_a_bad_list_changes_nothing(tmp_path, capsys):
    layout, crops = _build_root(tmp_path / "root")
    before = {p.name: p.read_bytes() for p in Path(layout.shards_dir).iterdir()}
    (tmp_path / "good.txt").write_text(_list_text(crops))
    (tmp_path / "bad.txt").write_text("domain ok.example\n\nsha256 xyz\n")
    assert main(["takedown", "--root", layout.root, "--list", str(tmp_path / "good.txt"),
                 "--list", str(tmp_path / "bad.txt")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"gadms takedown: error: {tmp_path / 'bad.txt'}:3: sha256 'xyz' is not 64 hex digits")
    assert {p.name: p.read_bytes() for p in Path(layout.shards_dir).iterdir()} == before
    assert not (tmp_path / "root" / "takedown").exists()


def _killed_takedown(root: str, list_path: Path, wrapped: str) -> subprocess.CompletedProcess:
    """`gadms takedown` in a subprocess that SIGKILLs itself right after the first call of `wrapped`
    (storage.takedown_shards.commit_rewrite: after a whole shard; write_manifest_entry: before a manifest entry)."""
    script = f"""
import os, signal, sys
import storage.takedown_shards as m
original = m.{wrapped}
def wrapped(*args, **kwargs):
    {'original(*args, **kwargs)' if wrapped == 'commit_rewrite' else ''}
    os.kill(os.getpid(), signal.SIGKILL)
m.{wrapped} = wrapped
from flows.cli import main
sys.exit(main(["takedown", "--root", {root!r}, "--list", {str(list_path)!r}]))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("wrapped", ["commit_rewrite", "write_manifest_entry"])
def test_a_killed_takedown_leaves_old_or_new_shards_and_the_rerun_completes(tmp_path, wrapped, capsys):
    layout, crops = _build_root(tmp_path / "root")
    (tmp_path / "list.txt").write_text(_list_text(crops))
    old = {p.name: p.read_bytes() for p in Path(layout.shards_dir).glob("*.parquet")}
    reference, _ = _build_root(tmp_path / "reference")
    assert main(["takedown", "--root", reference.root, "--list", str(tmp_path / "list.txt")]) == 0
    new = {p.name: pq.read_table(p).column("sample_id").to_pylist()
           for p in Path(reference.shards_dir).glob("*.parquet")}

    result = _killed_takedown(layout.root, tmp_path / "list.txt", wrapped)
    assert result.returncode == -signal.SIGKILL, result.stderr
    # Every shard file is whole: the old bytes, or exactly the rows of the finished takedown.
    for path in Path(layout.shards_dir).glob("*.parquet"):
        rows = pq.read_table(path).column("sample_id").to_pylist()
        assert path.read_bytes() == old[path.name] or rows == new[path.name], path.name
    changed = [p.name for p in Path(layout.shards_dir).glob("*.parquet") if p.read_bytes() != old[p.name]]
    assert changed == ["shard-00000.parquet"]
    journals = sorted(p.name for p in (tmp_path / "root" / "takedown" / "pending").glob("*.json"))
    if wrapped == "commit_rewrite":  # killed between two shards: every shard agrees with its manifest entry
        assert journals == [] and all(_sha_matches_manifest(layout).values())
    else:  # killed past the commit point, before the manifest entry: the journal says how to finish
        assert journals == ["shard-00000.json"]
    assert list((tmp_path / "root" / "takedown").glob("*.txt"))  # kept before any shard changed

    assert main(["takedown", "--root", layout.root, "--list", str(tmp_path / "list.txt")]) == 0
    capsys.readouterr()
    assert _sha_matches_manifest(layout) == {"shard-00000": True, "shard-00001": True, "shard-00002": True}
    assert {p.name: pq.read_table(p).column("sample_id").to_pylist()
            for p in Path(layout.shards_dir).glob("*.parquet")} == new
    con = duckdb.connect(str(tmp_path / "root" / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT sample_id) FROM rejects "
                       "WHERE stage = 'takedown'").fetchone() == (4, 4)
    con.close()


def test_export_never_writes_a_listed_sample(tmp_path):
    layout, crops = _build_root(tmp_path / "root")
    (tmp_path / "list.txt").write_text(f"sha256 {crops[4].source_sha256}\n")
    export_public(layout.root, str(tmp_path / "out"), takedown_lists=(str(tmp_path / "list.txt"),))
    exported = [path for path in sorted((tmp_path / "out" / "data").glob("*.parquet"))]
    paths = [p for f in exported for p in pq.read_table(f).column("image_path").to_pylist()]
    assert paths == [f"images/{c.sample_id}.jpg" for c in crops if c is not crops[4]]
    # A list applied with `gadms takedown` is honoured by every later export without being named again.
    (tmp_path / "applied.txt").write_text(f"url {crops[0].source_url}\n")
    assert main(["takedown", "--root", layout.root, "--list", str(tmp_path / "applied.txt")]) == 0
    assert main(["export", "--root", layout.root, "--out", str(tmp_path / "out2"),
                 "--takedown-list", str(tmp_path / "list.txt")]) == 0
    paths = [p for f in sorted((tmp_path / "out2" / "data").glob("*.parquet"))
             for p in pq.read_table(f).column("image_path").to_pylist()]
    assert paths == [f"images/{c.sample_id}.jpg" for c in crops[1:] if c is not crops[4]]


class _ImageHandler(BaseHTTPRequestHandler):
    """Serves a distinct JPEG at every path (identical bytes would be crawl's duplicate_sha256) and logs the path."""

    def do_GET(self):  # noqa: N802 - the base class's name
        self.server.paths.append(self.path)
        body = jpeg((len(self.path) * 7 % 256, sum(map(ord, self.path)) % 256, 30), size=(40, 80))
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002
        pass


def test_crawl_never_fetches_a_listed_url_or_domain(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    server.paths = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        urls = [UrlRecord(f"http://127.0.0.1:{port}/img/{n}.jpg", page_url=f"http://127.0.0.1:{port}/page/{n}.html")
                for n in range(4)] + [UrlRecord(f"http://localhost:{port}/img/9.jpg")]
        takedown = parse_takedown_list(f"url http://127.0.0.1:{port}/img/1.jpg\n"
                                       f"url http://127.0.0.1:{port}/page/2.html\ndomain localhost\n", "list.txt")
        config = CrawlConfig(allow_private_addresses=["127.0.0.1"], robots=False, retries=0, workers=1)
        result = crawl_chunk(urls, config, str(tmp_path / "state"), takedown=takedown)
        assert [d.url for d in result.downloads] == [urls[0].url, urls[3].url]
        assert [(r.stage, r.reason, r.url, r.detail) for r in result.rejects] == [
            ("crawl", "takedown", urls[1].url, f"url http://127.0.0.1:{port}/img/1.jpg"),
            ("crawl", "takedown", urls[2].url, f"url http://127.0.0.1:{port}/page/2.html"),
            ("crawl", "takedown", urls[4].url, "domain localhost"),
        ]
        assert sorted(server.paths) == ["/img/0.jpg", "/img/3.jpg"]
        # Listed after a first crawl saved it: the rerun of the chunk drops the saved download too.
        later = TakedownList().extend(takedown).extend(parse_takedown_list(f"url {urls[0].url}\n", "later.txt"))
        again = crawl_chunk(urls, config, str(tmp_path / "state"), takedown=later)
        assert [d.url for d in again.downloads] == [urls[3].url]
        assert sorted(server.paths) == ["/img/0.jpg", "/img/3.jpg"]
    finally:
        server.shutdown()
        server.server_close()
