"""Benchmark: `gadms crawl` against img2dataset 1.47 on the same URL list served by nginx on loopback.

    .venv/bin/python benchmarks/crawl_vs_img2dataset.py [--images 20000] [--rounds 2] [--tools gadms_crawl,bare_aiohttp]

What it does, in one run:
  1. writes N synthetic 256×512 JPEGs (cached) and a robots.txt into a document root;
  2. serves them with nginx (Debian package; Python's threaded server tops out near 1,850 requests/s);
  3. installs img2dataset 1.47 into its own virtualenv under the cache folder (once; NO_ALBUMENTATIONS_UPDATE=1
     so it never calls home);
  4. downloads the same URL list with: ours (robots.txt on, per-host concurrency limit on, checks by magic bytes
     and header dimensions, Parquet output), img2dataset with re-encoding off, img2dataset with its default
     decode + re-encode, and the ceiling: a bare aiohttp loop per process that only reads the bodies
     (benchmarks/bare_aiohttp_fetch.py, same processes and requests in flight); each `--rounds` times, alternating, and reports images/s (images written / wall time
     of the whole command, start-up included) with the ratios of the medians;
  5. where cgroup v1 cpuacct is writable (root in a container), also measures the CPU seconds each command and
     all its processes used, a figure other users' load hardly moves (nginx's share is left out: it is the
     same work for every tool);
  6. saves the figures with the machine's load average to benchmarks/results/crawl_vs_img2dataset.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
IMG2DATASET_VERSION = "1.47.0"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gadms" / "bench-crawl"
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
TOOLS = ("gadms_crawl", "img2dataset_no_reencode", "img2dataset_default", "bare_aiohttp")


class CpuAccount:
    """CPU time of a command and all its descendants, from a cgroup v1 cpuacct group made for it (None where
    cgroups are not writable)."""

    def __init__(self, name: str):
        self.group: Path | None = CPUACCT / f"gadms-bench-{name}-{os.getpid()}"
        try:
            self.group.mkdir()
        except OSError:
            self.group = None

    def enter(self) -> None:
        """preexec_fn: move the child into the group before it executes the command."""
        if self.group is not None:
            (self.group / "cgroup.procs").write_text(str(os.getpid()))

    def seconds(self) -> float | None:
        if self.group is None:
            return None
        time.sleep(0.5)  # let helper processes (multiprocessing's forkserver) exit
        used = int((self.group / "cpuacct.usage").read_text()) / 1e9
        try:
            self.group.rmdir()
        except OSError:
            pass
        return used


def make_images(docroot: Path, count: int, seed: int = 0) -> list[str]:
    """Synthetic 256×512 JPEGs (smooth colour fields and shapes, ~15–30 KB like rendered person scenes)."""
    import numpy as np
    from PIL import Image, ImageDraw

    image_dir = docroot / "img"
    marker = docroot / f".complete-{count}-{seed}"
    names = [f"img/{i:06d}.jpg" for i in range(count)]
    if marker.exists():
        return names
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    for name in names:
        field = noise.integers(0, 256, size=(48, 24, 3), dtype=np.uint8)
        image = Image.fromarray(field).resize((256, 512), Image.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(3, 8)):
            x, y = rng.randint(0, 230), rng.randint(0, 480)
            colour = tuple(rng.randint(0, 255) for _ in range(3))
            draw.ellipse((x, y, x + rng.randint(10, 90), y + rng.randint(10, 160)), fill=colour)
        image.save(docroot / name, format="JPEG", quality=90)
    (docroot / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    marker.touch()
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(docroot: Path, workdir: Path, port: int, access_log: str = "access_log off;",
                server_extra: str = "") -> subprocess.Popen:
    """nginx serving `docroot` on 127.0.0.1:`port`, once it accepts connections; `access_log` and `server_extra`
    are nginx directives (crawl_1m.py logs connections and rewrites its many URLs onto few files)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        sys.exit("nginx is not installed: apt-get install -y nginx")
    conf = workdir / "nginx.conf"
    temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    conf.write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 2;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
daemon off;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    {access_log}
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_timeout 65; keepalive_requests 1000000;
    types {{ image/jpeg jpg; text/plain txt; }}
    default_type application/octet-stream;
    client_body_temp_path {temp['body']}; proxy_temp_path {temp['proxy']}; fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']}; scgi_temp_path {temp['scgi']};
    server {{ listen 127.0.0.1:{port} backlog=8192; root {docroot}; {server_extra} }}
}}
""")
    process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    sys.exit(f"nginx did not start; see {workdir}/error.log")


def img2dataset_venv(cache: Path) -> Path:
    venv = cache / f"img2dataset-{IMG2DATASET_VERSION}"
    exe = venv / "bin" / "img2dataset"
    if not exe.exists():
        print(f"installing img2dataset {IMG2DATASET_VERSION} into {venv} ...", flush=True)
        # A plain interpreter, not the project's venv: img2dataset's pins must not meet ours.
        base_python = getattr(sys, "_base_executable", None) or shutil.which("python3")
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"img2dataset=={IMG2DATASET_VERSION}"],
                       check=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    return exe


def run_ours(url_list: Path, out: Path, args, preexec) -> int:
    config = out.parent / f"{out.name}.yaml"
    config.write_text(
        "allow_private_addresses: ['127.0.0.1']\n"
        "robots: true\n"  # robots.txt fetched and obeyed
        f"per_host_concurrency: {args.per_host_concurrency}\n"  # the per-host limiter is on
        "per_host_min_delay_s: 0.0\n"
        f"concurrency: {args.concurrency}\n"
        f"workers: {args.workers}\n"
        "contact_url: https://example.org/gadms-benchmark\n"
    )
    command = [sys.executable, "-m", "flows.cli", "crawl", "--urls", str(url_list), "--out", str(out),
               "--config", str(config)]
    subprocess.run(command, check=True, cwd=REPO, stderr=subprocess.DEVNULL, preexec_fn=preexec)
    return sum(pq.ParquetFile(p).metadata.num_rows for p in (out / "downloads").glob("*.parquet"))


def run_img2dataset(exe: Path, url_list: Path, out: Path, args, reencode: bool, preexec) -> int:
    command = [
        str(exe), "--url_list", str(url_list), "--input_format", "parquet", "--url_col", "url",
        "--caption_col", "caption", "--output_format", "parquet", "--output_folder", str(out),
        "--processes_count", str(args.workers), "--thread_count", str(args.i2d_threads),
        "--resize_mode", "no", "--number_sample_per_shard", "10000", "--timeout", "10", "--retries", "0",
    ]
    if not reencode:
        command += ["--disable_all_reencoding", "True"]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   preexec_fn=preexec)
    return sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))


def run_bare_aiohttp(url_list: Path, args, preexec) -> int:
    command = [sys.executable, str(REPO / "benchmarks" / "bare_aiohttp_fetch.py"), str(url_list),
               "--workers", str(args.workers), "--concurrency", str(args.concurrency)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, preexec_fn=preexec)
    return int(done.stdout.split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="processes for both tools")
    parser.add_argument("--concurrency", type=int, default=256, help="ours: requests in flight")
    parser.add_argument("--per-host-concurrency", type=int, default=64, help="ours: per-host limit")
    parser.add_argument("--i2d-threads", type=int, default=256, help="img2dataset --thread_count (its default)")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"which of {','.join(TOOLS)} to run")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "crawl_vs_img2dataset.json")
    args = parser.parse_args()
    chosen = args.tools.split(",")
    if "gadms_crawl" not in chosen or not set(chosen) <= set(TOOLS):
        parser.error(f"--tools: gadms_crawl and any of {', '.join(TOOLS[1:])}")

    args.cache.mkdir(parents=True, exist_ok=True)
    docroot = args.cache / "docroot"
    print(f"images: {args.images} synthetic JPEGs under {docroot}", flush=True)
    names = make_images(docroot, args.images)
    exe = img2dataset_venv(args.cache) if any(t.startswith("img2dataset") for t in chosen) else None
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-crawl-") as tmp:
        tmp = Path(tmp)
        port = free_port()
        nginx = start_nginx(docroot, tmp, port)
        try:
            url_list = tmp / "urls.parquet"
            pq.write_table(pa.table({"url": [f"http://127.0.0.1:{port}/{n}" for n in names],
                                     "caption": [f"image {i}" for i in range(len(names))]}), url_list)
            tools = {
                "gadms_crawl": lambda out, pre: run_ours(url_list, out, args, pre),
                "img2dataset_no_reencode": lambda out, pre: run_img2dataset(exe, url_list, out, args, False, pre),
                "img2dataset_default": lambda out, pre: run_img2dataset(exe, url_list, out, args, True, pre),
                "bare_aiohttp": lambda out, pre: run_bare_aiohttp(url_list, args, pre),
            }
            tools = {name: tools[name] for name in chosen}
            for round_ in range(args.rounds):
                order = list(tools) if round_ % 2 == 0 else list(reversed(tools))
                for name in order:
                    out = tmp / f"{name}-{round_}"
                    cpu = CpuAccount(f"{name}-{round_}")
                    load_before = os.getloadavg()[0]
                    started = time.perf_counter()
                    images = tools[name](out, cpu.enter)
                    seconds = time.perf_counter() - started
                    load_after = os.getloadavg()[0]
                    cpu_s = cpu.seconds()
                    run = {"tool": name, "round": round_, "images": images, "seconds": round(seconds, 3),
                           "images_per_s": round(images / seconds, 1), "load1_before": round(load_before, 2),
                           "load1_after": round(load_after, 2),
                           "cpu_s": None if cpu_s is None else round(cpu_s, 2),
                           "images_per_cpu_s": None if not cpu_s else round(images / cpu_s, 1)}
                    runs.append(run)
                    print(json.dumps(run), flush=True)
                    shutil.rmtree(out, ignore_errors=True)
        finally:
            nginx.terminate()
            nginx.wait(10)

    median = {name: statistics.median(r["images_per_s"] for r in runs if r["tool"] == name) for name in tools}
    per_cpu = {name: statistics.median(r["images_per_cpu_s"] for r in runs if r["tool"] == name)
               for name in tools} if all(r["images_per_cpu_s"] for r in runs) else None
    result = {
        "benchmark": "crawl_vs_img2dataset",
        "urls": args.images,
        "rounds": args.rounds,
        "server": "nginx (Debian), 2 worker processes, 127.0.0.1, keep-alive on",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {
            "gadms_crawl": f"workers={args.workers}, concurrency={args.concurrency}, per_host_concurrency="
                           f"{args.per_host_concurrency}, robots on, magic bytes + header dimensions checked, "
                           "sha256, Parquet output",
            "img2dataset": f"{IMG2DATASET_VERSION}, processes_count={args.workers}, thread_count={args.i2d_threads},"
                           " resize_mode=no, output_format=parquet, retries=0; no_reencode adds "
                           "--disable_all_reencoding True",
            "bare_aiohttp": f"{args.workers} processes, {args.concurrency} requests in flight in all, bodies read "
                            "into memory, nothing checked or written",
        },
        "median_images_per_s": median,
        **{f"ratio_vs_{name}": round(median["gadms_crawl"] / median[name], 2) for name in tools if name != "gadms_crawl"},
        "median_images_per_cpu_s": per_cpu,
        **{f"cpu_ratio_vs_{name}": round(per_cpu["gadms_crawl"] / per_cpu[name], 2) if per_cpu else None
           for name in tools if name != "gadms_crawl"},
        "runs": runs,
        "note": "other engineers share this 2-core machine: load1_before/after record the load during each run",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("median", "ratio", "cpu_ratio"))}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
