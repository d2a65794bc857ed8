"""`gadms build --retry-failed`: only URLs whose crawl failed for a listed reason are fetched again, through every
stage, into retry shards; their old rejects are dropped, so the catalog then equals a build that never failed."""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import pytest

from curation.synthweb.detector import DEMO_WEIGHTS
from curation.synthweb import render_site, write_url_list
from flows.build_webperson import build_webperson
from flows.cli import main
from storage.errors import GadmsError
from tests.flow_helpers import build_config, write_config

RETRIED = ("timeout", "http_5xx", "http_429")


class FlakySite:
    """The site's document root on 127.0.0.1; while `broken`, the paths in `faults` fail (503, 429 with a long
    Retry-After, a stall past the read timeout, 404), and the 404 stays after it heals. Counts concurrent requests."""

    def __init__(self, docroot: Path, faults: dict[str, str]):
        self.broken = True
        self.faults = faults
        self.requested: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        lock = threading.Lock()
        site = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(docroot), **kwargs)

            def do_GET(self):
                with lock:
                    site.requested.append(self.path)
                    site.in_flight += 1
                    site.max_in_flight = max(site.max_in_flight, site.in_flight)
                try:
                    fault = self.site_fault()
                    if fault == "stall":
                        time.sleep(3)  # past read_timeout_s and total_timeout_s
                    elif fault is not None:
                        with lock:
                            site.in_flight -= 1
                        self.send_response(fault)
                        if fault == 429:
                            self.send_header("Retry-After", "600")  # longer than max_retry_after_s: give up now
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    with lock:
                        site.in_flight -= 1
                    super().do_GET()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def site_fault(self):
                fault = site.faults.get(self.path)
                if fault == "http_404":
                    return 404
                if not site.broken or fault is None:
                    return None
                return {"http_503": 503, "http_429": 429, "timeout": "stall"}[fault]

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FlakySite:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()


def _config(urls: Path, out: Path) -> dict:
    config = build_config(urls, out, shard_size=4, runner={"kind": "local", "max_workers": 2},
                          detect={"imgsz": 384, "batch_size": 8, "device": "cpu", "weights": str(DEMO_WEIGHTS)})
    config["crawl"].update(per_host_concurrency=2, retries=0, robots=False, extra_columns=["page_url"])
    return config


def _catalog(out: Path) -> dict:
    con = duckdb.connect(str(out / "catalog.duckdb"), read_only=True)
    try:
        return {
            "samples": sorted(con.execute("SELECT sample_id, source_url, caption1, source_meta FROM samples").fetchall()),
            "rejects": sorted(con.execute("SELECT url, stage, reason FROM rejects").fetchall()),
            "crawl_rejects": dict(con.execute("SELECT reason, count(*) FROM rejects WHERE stage = 'crawl' "
                                              "GROUP BY ALL").fetchall()),
            "shards": con.execute("SELECT count(*) FROM manifest WHERE status = 'complete'").fetchone()[0],
            "manifest_rejects": con.execute("SELECT sum(rejects) FROM manifest").fetchone()[0],
            # URLs whose outcome (their samples, or their rejects at any stage) is in more than one shard.
            "urls_counted_twice": con.execute("""
                SELECT count(*) FROM (SELECT url, count(DISTINCT shard_id) AS shards FROM (
                    SELECT source_url AS url, shard_id FROM samples UNION ALL SELECT url, shard_id FROM rejects)
                GROUP BY url) WHERE shards > 1""").fetchone()[0],
        }
    finally:
        con.close()


def _task_runs(out: Path) -> list[Counter]:
    """The Prefect task runs of each build of a root (oldest first), counted by task name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    con = duckdb.connect(str(out / "catalog.duckdb"), read_only=True)
    run_ids = [uuid.UUID(r) for (r,) in con.execute("SELECT run_id FROM runs ORDER BY started_at").fetchall()]
    con.close()
    with get_client(sync_client=True) as client:
        return [Counter(t.name.rsplit("-", 1)[0] for t in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))) for run_id in run_ids]


@pytest.mark.slow
def test_retry_failed_refetches_only_transient_failures_and_counts_each_url_once(tmp_path):
    info = render_site(tmp_path / "site", images=40, seed=5)
    with FlakySite(info.root / "www", {}) as probe:
        write_url_list(info.root, probe.base_url, tmp_path / "all.jsonl")
    plain = [r for r in map(json.loads, open(tmp_path / "all.jsonl"))
             if re.fullmatch(r"/img/s\d{5}\.jpg", urlsplit(r["url"]).path)][:8]
    paths = [urlsplit(r["url"]).path for r in plain]
    faults = {paths[0]: "http_503", paths[1]: "http_429", paths[2]: "timeout", paths[3]: "http_404",
              paths[5]: "timeout"}

    def site_list(site: FlakySite, name: str) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps({**r, "url": site.base_url + urlsplit(r["url"]).path}) + "\n"
                                for r in plain))
        return path

    with FlakySite(info.root / "www", faults) as site:
        urls = site_list(site, "urls.jsonl")
        config = _config(urls, tmp_path / "out")
        first = build_webperson(config)
        before = _catalog(tmp_path / "out")
        assert before["crawl_rejects"] == {"http_503": 1, "http_429": 1, "timeout": 2, "http_404": 1}
        assert (first["chunks"], before["shards"], first["retried"]) == (2, 2, 0)

        site.broken = False
        site.requested.clear()
        site.max_in_flight = 0
        retried = build_webperson(config, retry_failed=",".join(RETRIED))
        assert sorted(site.requested) == sorted(paths[i] for i in (0, 1, 2, 5))  # nothing else was fetched
        assert site.max_in_flight <= 2
        again = build_webperson(config, retry_failed=",".join(RETRIED))

    # A build of the same list on a site that never failed: what the retried root must now hold.
    with FlakySite(info.root / "www", {paths[3]: "http_404"}) as healthy:
        healthy.broken = False
        reference_urls = site_list(healthy, "reference.jsonl")
        build_webperson(_config(reference_urls, tmp_path / "reference"))

    after, reference = _catalog(tmp_path / "out"), _catalog(tmp_path / "reference")
    assert (retried["retried"], retried["superseded"]) == (4, 4)
    assert after["crawl_rejects"] == {"http_404": 1}
    assert after["shards"] == 4  # two chunk shards, one retry shard for each of them
    same_port = lambda rows: [tuple(v.replace(site.base_url, "URL").replace(healthy.base_url, "URL")
                                    if isinstance(v, str) else v for v in row) for row in rows]
    assert same_port(after["samples"]) == same_port(reference["samples"])
    assert same_port(after["rejects"]) == same_port(reference["rejects"])
    assert len(after["samples"]) > len(before["samples"])
    assert after["urls_counted_twice"] == 0
    assert after["manifest_rejects"] == len(after["rejects"])
    # Nothing left to retry: the third run fetched nothing and wrote no shard.
    assert (again["retried"], again["kept"]) == (0, 0) and _catalog(tmp_path / "out") == after
    # What Prefect tracks: one task run per chunk (the third run also plans the two retry lists as chunks), each
    # with its stages' seconds in its result; no task run per stage.
    assert _task_runs(tmp_path / "out") == [
        Counter({"plan-chunks": 1, "process-chunk": 2}),
        Counter({"plan-chunks": 1, "plan-retry-lists": 1, "process-chunk": 2}),
        Counter({"plan-chunks": 1, "plan-retry-lists": 1, "process-chunk": 4}),
    ]
    assert set(first["stage_seconds"]) == {"crawl", "detect", "dedup", "caption", "thumbnails", "write"}


def test_retry_failed_names_an_unknown_reason_in_one_line(tmp_path, capsys):
    config = write_config(tmp_path / "build.yaml", build_config(tmp_path / "urls.jsonl", tmp_path / "out"))
    (tmp_path / "urls.jsonl").write_text('{"url": "http://127.0.0.1:9/a.jpg"}\n')
    assert main(["build", "--config", str(config), "--retry-failed", "timeout,http_5xx,flaky"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gadms build: error: --retry-failed: 'flaky' is not a crawl reject reason (one of "), err
    assert not (tmp_path / "out").exists()
    with pytest.raises(GadmsError, match="'http_6xx' is not a crawl reject reason"):
        build_webperson(build_config(tmp_path / "urls.jsonl", tmp_path / "out"), retry_failed="http_6xx")
