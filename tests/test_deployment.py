"""The deployments as a user runs them: a real Prefect server on 127.0.0.1, a process work pool, `prefect deploy
--all` from prefect.yaml, a worker, `prefect deployment run 'build-webperson/...'`, and the train-gadms run that
the build's Completed event triggers. Every process started here is stopped by its PID (process group)."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from curation.synthweb import SiteServer, render_site, write_url_list
from storage.catalog import connect
from tests.flow_helpers import REPO, build_config, stop_group, write_config

pytestmark = pytest.mark.slow

PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, processes=()):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for process in processes:
            assert process.poll() is None, f"{process.args[:3]} exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def _api(url: str, path: str, body: dict | None = None):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"},
                                     method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _flow_runs(api: str, flow_name: str) -> list[dict]:
    return _api(api, "/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}, "limit": 20})


def test_deployments_build_then_triggered_training(tmp_path):
    home = tmp_path / "prefect-home"
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PWD": str(REPO),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_CLI_PROMPT": "false", "PYTHONPATH": str(REPO)}
    processes: list[subprocess.Popen] = []

    def start(*args, log: str) -> subprocess.Popen:
        process = subprocess.Popen([PREFECT, *args], cwd=REPO, env=env, start_new_session=True,
                                   stdout=open(tmp_path / log, "wb"), stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    def prefect(*args) -> str:
        done = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        return done.stdout

    info = render_site(tmp_path / "site", images=40, seed=5)
    with SiteServer(info.root, slow_seconds=2) as site:
        write_url_list(info.root, site.base_url, tmp_path / "urls.jsonl")
        config = write_config(tmp_path / "build.yaml", build_config(tmp_path / "urls.jsonl", tmp_path / "out"))
        try:
            server = start("server", "start", "--host", "127.0.0.1", "--port", str(port), log="server.log")
            _wait_for(lambda: _health(api), 120, "the Prefect server", [server])
            prefect("work-pool", "create", "gadms-process", "--type", "process")
            prefect("--no-prompt", "deploy", "--all")
            deployments = {d["name"] for d in _api(api, "/deployments/filter", {})}
            assert deployments == {"webperson-weekly", "after-curation", "benchmarks"}
            worker = start("worker", "start", "--pool", "gadms-process", log="worker.log")
            prefect("deployment", "run", "build-webperson/webperson-weekly", "--param", f"config={config}")

            def build_done():
                runs = _flow_runs(api, "build-webperson")
                states = [r["state_type"] for r in runs]
                assert not {"FAILED", "CRASHED"} & set(states), (tmp_path / "worker.log").read_text()[-4000:]
                return runs[0] if states == ["COMPLETED"] else None

            build_run = _wait_for(build_done, 420, "build-webperson to complete", [server, worker])
            con = connect(str(tmp_path / "out" / "catalog.duckdb"))
            kept, = con.execute("SELECT count(*) FROM samples").fetchone()
            assert kept > 0
            assert con.execute("SELECT run_id FROM runs").fetchall() == [(build_run["id"],)]
            con.close()

            train_run = _wait_for(lambda: _flow_runs(api, "train-gadms"), 120, "the triggered train-gadms run",
                                  [server, worker])[0]
            assert train_run["parameters"]["build_flow_run"] == f"prefect.flow-run.{build_run['id']}"
            assert train_run["parameters"]["config"] == "gadms_model/training/configs/pretrain-webperson.yaml"
        finally:
            for process in reversed(processes):
                stop_group(process)


def _health(api: str) -> bool:
    try:
        return _api(api, "/health") is True
    except OSError:
        return False
