"""The crawl stage against real HTTP servers on 127.0.0.1: the synthetic web (curation.synthweb.SiteServer, every
hostile case) and a small aiohttp server in this file for what the site does not serve (streams without a
length, gzip bombs, redirects to other addresses, Crawl-delay)."""
from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
from aiohttp import web

from curation.crawl import CrawlConfig, crawl_chunk, discover_images, read_url_list
from curation.crawl.state import load_segments, saved_rows
from curation.synthweb import SiteServer, render_site, write_url_list
from flows.cli import main
from storage.errors import GadmsError
from storage.records import UrlRecord

FAULT_REASON = {
    "truncated_jpeg": "truncated",
    "html_as_jpeg": "not_an_image",
    "decompression_bomb": "too_many_pixels",
    "http_404": "http_404",
    "noai": "opt_out",
    "slow": "timeout",
    "redirect_loop": "redirect_loop",
    "http_500": "http_500",
    "short_read": "connection_error",
}
FAST = dict(
    allow_private_addresses=["127.0.0.1"], per_host_min_delay_s=0.0, per_host_concurrency=8, workers=1,
    connect_timeout_s=2.0, read_timeout_s=1.5, total_timeout_s=1.5, retries=2, backoff_base_s=0.01,
    backoff_max_s=0.05,
)


def fast_config(**overrides) -> CrawlConfig:
    return CrawlConfig(**{**FAST, **overrides})


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return render_site(tmp_path_factory.mktemp("crawl-site") / "web", images=40, seed=3)


@pytest.fixture(scope="module")
def server(site):
    with SiteServer(site.root, slow_seconds=4.0) as running:
        yield running


@pytest.fixture(scope="module")
def ground_truth(site, server):
    records = [json.loads(line) for line in site.ground_truth.read_text(encoding="utf-8").splitlines()]
    return {server.base_url + r["path"]: r for r in records if r["pages"]}


@pytest.fixture(scope="module")
def url_list(site, server, tmp_path_factory) -> list[UrlRecord]:
    path = tmp_path_factory.mktemp("lists") / "urls.parquet"
    write_url_list(site.root, server.base_url, path)
    return list(read_url_list(path))


@pytest.fixture(scope="module")
def site_crawl(server, url_list, tmp_path_factory):
    """One crawl of the whole URL list; several tests read it."""
    before = len(server.requests)
    started = time.monotonic()
    result = crawl_chunk(url_list, fast_config(), str(tmp_path_factory.mktemp("state") / "chunk"))
    return result, server.requests[before:], time.monotonic() - started


def _plain_images(url_list, ground_truth) -> list[UrlRecord]:
    """Public images with no fault and no duplicate: each one downloads."""
    return [r for r in url_list if ground_truth[r.url]["fault"] is None and not ground_truth[r.url]["robots_disallowed"]
            and ground_truth[r.url]["duplicate_of"] is None]


def _summary(result):
    """Downloads (in the order they were saved, which timing decides) as a sorted list; rejects in input order."""
    return (sorted((d.url, d.sha256, d.width, d.height, d.alt_text) for d in result.downloads),
            [(r.url, r.reason, r.detail) for r in result.rejects])


@pytest.mark.slow
def test_every_url_ends_in_its_expected_state(site_crawl, url_list, ground_truth, server):
    result, _, _ = site_crawl
    assert len(result.downloads) + len(result.rejects) == len(url_list)
    outcome = {d.url: "downloaded" for d in result.downloads}
    for reject in result.rejects:
        assert reject.stage == "crawl" and reject.url not in outcome
        outcome[reject.url] = reject.reason
    assert len(outcome) == len(url_list)
    first_url_by_sha: dict[str, str] = {}
    for record in url_list:
        truth = ground_truth[record.url]
        if truth["robots_disallowed"]:
            expected = "robots_disallowed"
        elif truth["fault"] in FAULT_REASON:
            expected = FAULT_REASON[truth["fault"]]
        elif truth["fault"] == "rate_limited":
            expected = "downloaded"  # 429 twice with Retry-After: 1, then the image; retries=2 suffices
        elif truth["sha256"] in first_url_by_sha:
            expected = "duplicate_sha256"  # an exact copy, or the redirect to an image listed earlier
        else:
            expected = "downloaded"
        if expected == "downloaded":
            first_url_by_sha[truth["sha256"]] = record.url
        assert outcome[record.url] == expected, record.url
    for download in result.downloads:
        truth = ground_truth[download.url]
        assert download.sha256 == truth["sha256"]
        assert (download.width, download.height) == (truth["width"], truth["height"])
        assert download.mime == "image/jpeg" and download.alt_text == truth["alt_text"]
        assert download.page_url == server.base_url + truth["pages"][0]
    duplicates = {r.url: r.detail for r in result.rejects if r.reason == "duplicate_sha256"}
    assert duplicates[server.base_url + "/moved/photo.jpg"] == server.base_url + "/img/s00000.jpg"
    assert all(first_url_by_sha[ground_truth[url]["sha256"]] == kept for url, kept in duplicates.items())


@pytest.mark.slow
def test_robots_txt_fetched_once_and_obeyed(site_crawl, url_list, ground_truth):
    _, requests, _ = site_crawl
    assert requests.count("/robots.txt") == 1
    private = [r.url for r in url_list if ground_truth[r.url]["robots_disallowed"]]
    assert private and not [p for p in requests if p.startswith("/private/")]


@pytest.mark.slow
def test_retries_follow_retry_after_and_give_up_on_404(site_crawl):
    _, requests, elapsed = site_crawl
    assert requests.count("/fault/busy.jpg") == 3  # 429, 429, 200
    assert requests.count("/fault/error.jpg") == 3  # 500 is retried, then rejected
    assert requests.count("/img/missing.jpg") == 1  # 404 is not
    assert requests.count("/slow/photo.jpg") == 3  # timeouts are retried
    assert requests.count("/loop/a.jpg") == 2 and requests.count("/loop/b.jpg") == 2
    assert elapsed >= 2.0  # two Retry-After: 1 pauses of the host


@pytest.mark.slow
def test_429_after_retries_is_rejected_with_retry_after_waited(site, tmp_path):
    with SiteServer(site.root) as fresh:  # the 429 counter is per server
        url = fresh.base_url + "/fault/busy.jpg"
        started = time.monotonic()
        result = crawl_chunk([UrlRecord(url)], fast_config(retries=1), str(tmp_path / "s1"))
        elapsed = time.monotonic() - started
        assert [(r.reason, r.url) for r in result.rejects] == [("http_429", url)]
        assert fresh.requests.count("/fault/busy.jpg") == 2 and elapsed >= 1.0
    with SiteServer(site.root) as fresh:
        result = crawl_chunk([UrlRecord(fresh.base_url + "/fault/busy.jpg")],
                             fast_config(max_retry_after_s=0.5), str(tmp_path / "s2"))
        assert [r.reason for r in result.rejects] == ["http_429"]
        assert "Retry-After 1s exceeds" in result.rejects[0].detail
        assert fresh.requests.count("/fault/busy.jpg") == 1


def test_default_config_refuses_loopback_and_private_addresses(server, tmp_path):
    port = server.base_url.rsplit(":", 1)[1]
    urls = [
        f"{server.base_url}/img/s00000.jpg",
        f"http://localhost:{port}/img/s00000.jpg",  # a host name: refused by the resolver
        f"http://[::1]:{port}/img/s00000.jpg",
        "http://10.0.0.1/img.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://192.168.0.1/a.jpg",
        "http://[fe80::1]/a.jpg",
        "http://0.0.0.0/a.jpg",
    ]
    before = len(server.requests)
    result = crawl_chunk([UrlRecord(u) for u in urls], CrawlConfig(), str(tmp_path / "state"))
    assert [(r.url, r.reason) for r in result.rejects] == [(u, "private_address") for u in urls]
    assert result.downloads == [] and len(server.requests) == before  # not a single request went out
    legacy = crawl_chunk([UrlRecord(f"http://2130706433:{port}/img/s00000.jpg")], CrawlConfig(),
                         str(tmp_path / "legacy"))
    assert legacy.rejects[0].reason == "invalid_url" and len(server.requests) == before


@pytest.mark.slow
def test_byte_and_pixel_caps(server, url_list, ground_truth, tmp_path):
    plain = _plain_images(url_list, ground_truth)[:4]
    small = crawl_chunk(plain, fast_config(max_bytes=2000), str(tmp_path / "bytes"))
    assert [r.reason for r in small.rejects] == ["too_large"] * 4
    assert all(r.detail.startswith("Content-Length ") for r in small.rejects)
    pixels = crawl_chunk(plain, fast_config(max_pixels=1000), str(tmp_path / "pixels"))
    assert [r.reason for r in pixels.rejects] == ["too_many_pixels"] * 4


def test_source_meta_reaches_the_downloads_file(server, url_list, ground_truth, tmp_path):
    import pyarrow.parquet as pq

    from curation.crawl.output import write_downloads

    plain = _plain_images(url_list, ground_truth)[:3]
    records = [dataclasses.replace(r, source_meta=json.dumps({"key": str(i)})) for i, r in enumerate(plain)]
    result = crawl_chunk(records + [UrlRecord(server.base_url + "/img/missing.jpg")], fast_config(),
                         str(tmp_path / "state"))
    path = str(tmp_path / "downloads.parquet")
    write_downloads(result.downloads_table, path, "part-00000", "run")
    meta = {r.url: r.source_meta for r in records}
    assert {row["url"]: row["source_meta"] for row in pq.read_table(path).to_pylist()} == meta
    assert {d.url: d.source_meta for d in result.downloads} == meta


@pytest.mark.slow
def test_rerun_is_idempotent_and_fetches_nothing(server, url_list, ground_truth, tmp_path):
    plain = _plain_images(url_list, ground_truth)[:10]
    first = crawl_chunk(plain, fast_config(), str(tmp_path / "state"))
    before = len(server.requests)
    ticks = []
    again = crawl_chunk(plain, fast_config(), str(tmp_path / "state"), progress=lambda ok, bad: ticks.append((ok, bad)))
    assert _summary(again) == _summary(first) and len(server.requests) == before
    assert ticks == [(10, 0)]
    with pytest.raises(GadmsError, match="holds the state of another URL list"):
        crawl_chunk(plain[:5], fast_config(), str(tmp_path / "state"))


@pytest.mark.slow
def test_resume_after_kill_loses_nothing_and_repeats_nothing(server, url_list, ground_truth, tmp_path):
    records = _plain_images(url_list, ground_truth)[:30] + [UrlRecord(server.base_url + "/img/missing.jpg")]
    records.append(records[0])  # a repeated URL row
    config = fast_config(per_host_min_delay_s=0.06, per_host_concurrency=1, state_flush_rows=3)
    state = tmp_path / "state"
    (tmp_path / "urls.json").write_text(json.dumps([vars(r) for r in records]))
    script = (
        "import json, sys\n"
        "from curation.crawl import CrawlConfig, crawl_chunk\n"
        "from storage.records import UrlRecord\n"
        "records = [UrlRecord(**r) for r in json.load(open(sys.argv[1]))]\n"
        "crawl_chunk(records, CrawlConfig.model_validate_json(sys.argv[2]), sys.argv[3])\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "urls.json"),
                              config.model_dump_json(), str(state)])
    try:
        deadline = time.monotonic() + 60
        while len(list(state.glob("seg-*.arrow"))) < 3 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)  # a kill -9 in the middle of the chunk
    finally:
        child.wait()
    saved = saved_rows(load_segments(str(state)))
    assert 9 <= len(saved) < 31, "the kill should land mid-chunk"
    before = len(server.requests)
    resumed = crawl_chunk(records, config, str(state))
    refetched = [p for p in server.requests[before:] if p != "/robots.txt"]
    saved_paths = {records[i].url[len(server.base_url):] for i in saved}
    assert len(refetched) == 31 - len(saved) and not saved_paths & set(refetched)
    clean = crawl_chunk(records, config.model_copy(update={"per_host_min_delay_s": 0.0}), str(tmp_path / "clean"))
    assert _summary(resumed) == _summary(clean)
    assert len(resumed.downloads) + len(resumed.rejects) == len(records)
    assert [r.reason for r in resumed.rejects] == ["http_404", "duplicate_url"]


@pytest.mark.slow
def test_worker_processes_give_the_same_result(server, url_list, tmp_path):
    records = [r for r in url_list if "/slow/" not in r.url and "/fault/busy" not in r.url]
    single = crawl_chunk(records, fast_config(), str(tmp_path / "one"))
    ticks = [0, 0]

    def progress(ok, rejected):
        ticks[0] += ok
        ticks[1] += rejected

    multi = crawl_chunk(records, fast_config(workers=2, min_urls_per_worker=1), str(tmp_path / "two"),
                        progress=progress)
    assert _summary(multi) == _summary(single)
    assert sum(ticks) == len(records)
    assert {p.name.split("-")[1] for p in (tmp_path / "two").glob("seg-*.arrow")} == {"w0", "w1"}


@pytest.mark.slow
def test_discover_images_from_seed_pages(server, url_list, ground_truth):
    before = len(server.requests)
    found = discover_images([server.base_url + "/"], fast_config(seed_max_depth=3))
    requested = server.requests[before:]
    # Every public image once, srcset's best (2x) candidate instead of its small `src`.
    expected = {r.url for r in url_list
                if not ground_truth[r.url]["robots_disallowed"] and ground_truth[r.url]["duplicate_kind"] != "resized"
                or ground_truth[r.url]["duplicate_kind"] == "resized" and "-w" not in r.url}
    assert {f.url for f in found} == expected and len(found) == len(expected)
    for record in found:
        assert record.alt_text == " ".join(ground_truth[record.url]["alt_text"].split())
        assert record.page_url in {server.base_url + p for p in ground_truth[record.url]["pages"]}
    assert requested.count("/robots.txt") == 1 and not [p for p in requested if p.startswith("/private/")]
    shallow = discover_images([server.base_url + "/gallery/page-1.html"], fast_config(seed_max_depth=0))
    assert {f.page_url for f in shallow} == {server.base_url + "/gallery/page-1.html"}
    budget = discover_images([server.base_url + "/"], fast_config(seed_max_depth=3, seed_max_pages=2))
    assert {f.page_url for f in budget} == {server.base_url + "/gallery/page-1.html"}


@pytest.mark.slow
def test_cli_writes_parquet_and_resumes(server, site, tmp_path, capsys):
    list_path = tmp_path / "urls.jsonl"
    write_url_list(site.root, server.base_url, list_path)
    config = tmp_path / "crawl.yaml"
    config.write_text("per_host_min_delay_s: 0\nper_host_concurrency: 8\ntotal_timeout_s: 1.5\nretries: 0\n")
    args = ["crawl", "--urls", str(list_path), "--out", str(tmp_path / "out"), "--config", str(config),
            "--allow-private", "127.0.0.1", "--extra-columns", "page_url", "--shard-size", "20"]
    assert main(args) == 0
    rows = sum(1 for _ in read_url_list(list_path))
    downloads = pq.read_table(tmp_path / "out" / "downloads").to_pylist()
    rejects = pq.read_table(tmp_path / "out" / "rejects").to_pylist()
    assert len(downloads) + len(rejects) == rows
    assert downloads and all(json.loads(d["source_meta"]) == {"page_url": d["page_url"]} for d in downloads)
    assert sorted(p.name for p in (tmp_path / "out" / "downloads").iterdir()) == [
        f"part-{i:05d}.parquet" for i in range((rows + 19) // 20)]
    assert not list((tmp_path / "out" / "work" / "crawl").iterdir())  # finished chunks leave no state
    assert {r["stage"] for r in rejects} == {"crawl"} and {"http_404", "too_many_pixels"} <= {r["reason"] for r in rejects}
    assert all(len(d["image"]) > 0 and d["sha256"] for d in downloads)
    before = len(server.requests)
    assert main(args) == 0  # rerun: every chunk is done already
    assert len(server.requests) == before
    assert f"crawl: {len(downloads)} downloaded, {len(rejects)} rejected" in capsys.readouterr().out
    config.write_text("per_host_min_delay: 0\n")
    assert main(args) == 2  # a bad config: one line naming the file and the field
    assert "crawl.yaml: field 'per_host_min_delay': Extra inputs are not permitted" in capsys.readouterr().err


def test_crawl_chunk_from_inside_a_running_event_loop(server, url_list, ground_truth, tmp_path):
    plain = _plain_images(url_list, ground_truth)[:2]

    async def caller():  # e.g. an async Prefect task or a notebook
        return crawl_chunk(plain, fast_config(), str(tmp_path / "s"))

    result = asyncio.run(caller())
    assert sorted(d.url for d in result.downloads) == sorted(r.url for r in plain)


@pytest.mark.slow
def test_cli_forks_workers_from_a_single_threaded_process(server, url_list, ground_truth, tmp_path):
    plain = _plain_images(url_list, ground_truth)
    list_path = tmp_path / "urls.jsonl"
    list_path.write_text("".join(json.dumps({"url": r.url, "caption": r.alt_text}) + "\n" for r in plain))
    config = tmp_path / "crawl.yaml"
    config.write_text("per_host_min_delay_s: 0\nworkers: 2\nmin_urls_per_worker: 1\n"
                      "contact_url: https://example.org/contact\n")
    completed = subprocess.run(
        [sys.executable, "-m", "flows.cli", "crawl", "--urls", str(list_path), "--out", str(tmp_path / "out"),
         "--config", str(config), "--allow-private", "127.0.0.1"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    table = pq.read_table(tmp_path / "out" / "downloads")
    assert sorted(table.column("url").to_pylist()) == sorted(r.url for r in plain)
    assert sorted(table.column("sha256").to_pylist()) == sorted(ground_truth[r.url]["sha256"] for r in plain)
    assert f"crawl: {len(plain)} downloaded, 0 rejected" in completed.stdout


# --- a hostile aiohttp server for what the synthetic site does not serve ------------------------------------

class HostileServer:
    """aiohttp.web on 127.0.0.1 in a background thread."""

    def __init__(self):
        self.hits: list[tuple[str, float]] = []
        self.user_agents: set[str] = set()
        self.aborted = threading.Event()
        app = web.Application()
        app.router.add_get("/robots.txt", self.robots)
        app.router.add_get("/stream.jpg", self.stream)
        app.router.add_get("/gzip-bomb.jpg", self.gzip_bomb)
        app.router.add_get("/to-other-loopback.jpg", self.redirect_other)
        app.router.add_get("/to-ipv6-loopback.jpg", self.redirect_ipv6)
        app.router.add_get("/delayed/{n}.jpg", self.image)
        app.router.add_get("/ours-only/{n}.jpg", self.image)
        app.router.add_get("/noimageai.jpg", self.opted_out)
        app.router.add_get("/hop/{n}", self.hop)
        app.router.add_get("/tagged.jpg", self.tagged)
        app.router.add_get("/to-tagged.jpg", self.redirect_tagged)
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

    async def robots(self, request):
        return web.Response(text="User-agent: gadms-crawler\nDisallow: /ours-only/\nCrawl-delay: 0.25\n")

    async def hop(self, request):
        raise web.HTTPMovedPermanently(f"/hop/{int(request.match_info['n']) + 1}")

    async def image(self, request):
        self.user_agents.add(request.headers.get("User-Agent", ""))
        self.hits.append((request.path, time.monotonic()))
        return web.Response(body=_tiny_gif(int(request.match_info["n"]) + 1), content_type="image/gif")

    async def opted_out(self, request):
        return web.Response(body=_tiny_gif(), content_type="image/gif",
                            headers={"X-Robots-Tag": "otherbot: noindex, gadms-crawler: noimageai"})

    async def tagged(self, request):
        # Two header lines, neither an opt-out for us: the image is kept, and what it said is recorded.
        headers = [("X-Robots-Tag", "otherbot: noimageai"), ("X-Robots-Tag", "noarchive")]
        return web.Response(body=_tiny_gif(9), content_type="image/gif", status=203, headers=headers)

    async def redirect_tagged(self, request):
        raise web.HTTPFound("/tagged.jpg")

    async def stream(self, request):
        response = web.StreamResponse()  # chunked: no Content-Length to check up front
        await response.prepare(request)
        try:
            await response.write(b"\xff\xd8\xff\xe0" + b"\x00" * 60_000)
            for _ in range(1000):
                await response.write(b"\x00" * 65536)
                await asyncio.sleep(0.001)
        except (ConnectionResetError, asyncio.CancelledError):
            self.aborted.set()
            raise
        return response

    async def gzip_bomb(self, request):
        body = gzip.compress(b"\x00" * 50_000_000, compresslevel=9)  # 50 MB from ~50 KB
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "image/jpeg"})

    async def redirect_other(self, request):
        raise web.HTTPFound(f"http://127.0.0.2:{self.port}/delayed/1.jpg")

    async def redirect_ipv6(self, request):
        raise web.HTTPFound(f"http://[::1]:{self.port}/delayed/1.jpg")

    def __enter__(self):
        def serve():
            asyncio.set_event_loop(self.loop)
            runner = web.AppRunner(self.app)
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            self.runner = runner
            self.ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(runner.cleanup())

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        self.ready.wait(10)
        self.base_url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _tiny_gif(width: int = 1) -> bytes:
    """A valid GIF whose header says `width`×1 (distinct bytes per width)."""
    return (b"GIF89a" + bytes([width]) + b"\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
            b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


@pytest.fixture(scope="module")
def hostile():
    with HostileServer() as running:
        yield running


def test_streamed_body_is_cut_at_the_byte_cap(hostile, tmp_path):
    urls = [hostile.base_url + "/stream.jpg", hostile.base_url + "/gzip-bomb.jpg"]
    result = crawl_chunk([UrlRecord(u) for u in urls], fast_config(max_bytes=1_000_000, total_timeout_s=20),
                         str(tmp_path / "s"))
    assert [(r.url, r.reason) for r in result.rejects] == [(u, "too_large") for u in urls]
    assert all(r.detail == "body passed 1000000 bytes" for r in result.rejects)
    assert hostile.aborted.wait(5)  # the server saw the connection dropped, not read to the end


def test_redirects_are_checked_hop_by_hop(hostile, tmp_path):
    urls = [hostile.base_url + "/to-other-loopback.jpg", hostile.base_url + "/to-ipv6-loopback.jpg"]
    result = crawl_chunk([UrlRecord(u) for u in urls], fast_config(), str(tmp_path / "s"))
    assert [r.reason for r in result.rejects] == ["private_address", "private_address"]
    assert "127.0.0.2" in result.rejects[0].detail and "::1" in result.rejects[1].detail
    assert not [p for p, _ in hostile.hits if p == "/delayed/1.jpg"]


@pytest.mark.slow
def test_robots_group_for_our_token_crawl_delay_and_scoped_opt_out(hostile, tmp_path):
    urls = [f"{hostile.base_url}/delayed/{n}.jpg" for n in range(4)]
    urls += [hostile.base_url + "/ours-only/1.jpg", hostile.base_url + "/noimageai.jpg"]
    result = crawl_chunk([UrlRecord(u) for u in urls], fast_config(), str(tmp_path / "s"))
    assert sorted(d.url for d in result.downloads) == urls[:4]
    assert [(r.url, r.reason) for r in result.rejects] == [(urls[4], "robots_disallowed"), (urls[5], "opt_out")]
    starts = sorted(t for p, t in hostile.hits if p.startswith("/delayed/"))
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 0.24  # Crawl-delay: 0.25 beats per_host_min_delay 0
    assert sorted(d.width for d in result.downloads) == [1, 2, 3, 4] and result.downloads[0].mime == "image/gif"


def test_fetch_provenance_reaches_downloads_and_resumes_from_old_state(hostile, tmp_path):
    from datetime import datetime, timezone

    import pyarrow as pa

    from curation.crawl.output import write_downloads
    from curation.crawl.state import OUTCOME_SCHEMA
    from curation.detect.parquet_io import iter_downloads

    urls = [hostile.base_url + "/to-tagged.jpg", f"{hostile.base_url}/delayed/5.jpg"]
    before = datetime.now(timezone.utc)
    result = crawl_chunk([UrlRecord(u) for u in urls], fast_config(), str(tmp_path / "s"))
    after = datetime.now(timezone.utc)
    path = str(tmp_path / "downloads.parquet")
    write_downloads(result.downloads_table, path, "part-00000", "run")
    read_back = [d for batch, _ in iter_downloads(path, batch_rows=256) for d in batch]  # as `gadms detect` reads
    for downloads in (result.downloads, read_back):
        got = {d.url: (d.http_status, d.x_robots_tag) for d in downloads}
        assert got == {urls[0]: (203, "otherbot: noimageai, noarchive"), urls[1]: (200, None)}
        assert all(before <= d.fetched_at <= after for d in downloads)
    # A state folder written before these columns existed still resumes: its rows load with them NULL.
    old = tmp_path / "old"
    sha256 = crawl_chunk([UrlRecord(urls[1])], fast_config(), str(old)).downloads[0].sha256
    (segment,) = old.glob("seg-*.arrow")
    with pa.OSFile(str(segment)) as f:
        table = pa.ipc.open_file(f).read_all().drop_columns(["fetched_at", "http_status", "x_robots_tag"])
    with pa.ipc.new_file(str(tmp_path / "v1.arrow"), table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp_path / "v1.arrow", segment)
    hits = len(hostile.hits)
    again = crawl_chunk([UrlRecord(urls[1])], fast_config(), str(old))
    assert len(hostile.hits) == hits  # nothing fetched again
    assert [(d.sha256, d.http_status, d.fetched_at) for d in again.downloads] == [(sha256, None, None)]
    assert load_segments(str(old)).schema == OUTCOME_SCHEMA


def test_redirect_limit_and_identifying_user_agent(hostile, tmp_path):
    config = fast_config(max_redirects=3, contact_url="https://example.org/crawler-contact")
    urls = [hostile.base_url + "/hop/0", f"{hostile.base_url}/delayed/7.jpg"]
    hostile.user_agents.clear()
    result = crawl_chunk([UrlRecord(u) for u in urls], config, str(tmp_path / "s"))
    assert [(r.reason, r.detail) for r in result.rejects] == [
        ("too_many_redirects", f"more than 3, last {hostile.base_url}/hop/4")]
    assert hostile.user_agents == {config.user_agent}
    assert "gadms-crawler/0.1" in config.user_agent and "https://example.org/crawler-contact" in config.user_agent
