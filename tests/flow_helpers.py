"""Shared pieces of the flow tests: a served synthetic site and a small build config for it."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import yaml

from curation.synthweb.detector import DEMO_WEIGHTS

REPO = Path(__file__).resolve().parents[1]


def build_config(url_list: Path, output_root: Path, shard_size: int = 20, **extra) -> dict:
    """A build over a loopback synthetic site: 127.0.0.1 allowed, short timeouts, the offline alt-text captioner."""
    config = {
        "inputs": {"url_lists": [str(url_list)]},
        "output_root": str(output_root),
        "shard_size": shard_size,
        "crawl": {
            "allow_private_addresses": ["127.0.0.1"],
            "retries": 1,
            "backoff_base_s": 0.05,
            "max_retry_after_s": 2,
            "connect_timeout_s": 2,
            "read_timeout_s": 1,
            "total_timeout_s": 2,
            "per_host_min_delay_s": 0,
            "per_host_concurrency": 8,
            "workers": 1,
        },
        "detect": {"weights": str(DEMO_WEIGHTS), "imgsz": 384, "batch_size": 8, "device": "cpu"},
        "caption": {"backend": "alt-text"},
        "runner": {"kind": "local", "max_workers": 1},
        "retries": 0,
    }
    config.update(extra)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def stop_group(process: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 20) -> None:
    """Stop a process started with start_new_session=True and everything it started, by its PID's group."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # children it left behind
        except ProcessLookupError:
            pass
