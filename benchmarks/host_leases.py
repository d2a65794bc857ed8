"""Benchmark: what the run-wide per-host limits (curation.crawl.hostleases) cost.

    .venv/bin/python benchmarks/host_leases.py [--urls 6000] [--hosts 64] [--rounds 2]

1. Lease throughput: one HostLeaseServer (a child process, as in a build), `--clients` client processes,
   each with 256 concurrent lanes over distinct hosts, taking and returning slots as fast as they can.
2. Crawl with and without it: 4 chunks crawled at once from threads (as the build's thread pool runs them),
   `--urls` URLs in all over `--hosts` loopback hosts (one aiohttp server process listening on that many ports;
   a host is host:port), no delay; images/s of the whole run, alternating, `--rounds` each, in three set-ups:
   - `leases`: per_host_concurrency 4 held by the lease server (4 requests per host in all);
   - `per_chunk_same_total`: no server, per_host_concurrency 1 in each chunk (also 4 per host in all): the
     difference to `leases` is the lease server's own cost;
   - `per_chunk_4`: no server, per_host_concurrency 4 in each chunk (16 per host: the limit broken 4×).
   Also images per CPU-second of the crawling process and the lease server (not the image server), which the
   load of other jobs on the machine moves far less than wall time.

Saves benchmarks/results/host_leases.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from curation.crawl import CrawlConfig, crawl_chunk  # noqa: E402
from curation.crawl.hostleases import HostLeaseClient, HostLeaseServer  # noqa: E402
from storage.records import UrlRecord  # noqa: E402

SERVER = r"""
import asyncio, hashlib, io, sys
from aiohttp import web
from PIL import Image

count, ports = int(sys.argv[1]), int(sys.argv[2])
images = []
for i in range(count):
    buffer = io.BytesIO()
    Image.frombytes("RGB", (16, 16), (hashlib.sha256(str(i).encode()).digest() * 24)[:768]).save(buffer, "PNG")
    images.append(buffer.getvalue())

async def image(request):
    return web.Response(body=images[int(request.match_info["i"]) % count], content_type="image/png")

async def main():
    app = web.Application()
    app.router.add_get("/img/{i}.png", image)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    bound = []
    for _ in range(ports):
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        bound.append(site._server.sockets[0].getsockname()[1])
    print(" ".join(map(str, bound)), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def lease_client(address: str, lanes: int, seconds: float, results: multiprocessing.Queue) -> None:
    async def run() -> int:
        client = HostLeaseClient(address)
        done = 0
        deadline = time.monotonic() + seconds

        async def lane(host: str) -> None:
            nonlocal done
            while time.monotonic() < deadline:
                async with client.lease(host, 0.0):
                    done += 1

        await asyncio.gather(*(lane(f"host-{os.getpid()}-{i}:80") for i in range(lanes)))
        await client.aclose()
        return done

    results.put(asyncio.run(run()))


def lease_throughput(clients: int, seconds: float) -> float:
    with HostLeaseServer(4, 0.0) as server:
        results = multiprocessing.Queue()
        processes = [multiprocessing.Process(target=lease_client, args=(server.address, 256, seconds, results))
                     for _ in range(clients)]
        for process in processes:
            process.start()
        total = sum(results.get() for _ in processes)
        for process in processes:
            process.join()
    return total / seconds


SETUPS = {"leases": (4, True), "per_chunk_same_total": (1, False), "per_chunk_4": (4, False)}


def crawl_once(ports: list[int], urls: int, state_root: Path, per_host_concurrency: int,
               host_leases: str | None) -> float:
    config = CrawlConfig(allow_private_addresses=["127.0.0.1"], per_host_concurrency=per_host_concurrency,
                         per_host_min_delay_s=0.0, workers=1, robots=False, retries=0)
    records = [UrlRecord(f"http://127.0.0.1:{ports[i % len(ports)]}/img/{i}.png") for i in range(urls)]
    chunks = [records[c::4] for c in range(4)]
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: crawl_chunk(chunks[c], config, str(state_root / f"chunk-{c}"),
                                                      host_leases=host_leases), range(4)))
    seconds = time.perf_counter() - started
    downloaded = sum(len(r.downloads) for r in results)
    if downloaded != urls:
        raise SystemExit(f"only {downloaded} of {urls} downloaded: {[r.reason_counts() for r in results]}")
    return downloaded / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=12000)
    parser.add_argument("--hosts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--lease-seconds", type=float, default=5.0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "host_leases.json"))
    args = parser.parse_args()

    leases_per_s = lease_throughput(args.clients, args.lease_seconds)
    print(f"lease server: {leases_per_s:,.0f} slots/s ({args.clients} client processes × 256 lanes)")

    server = subprocess.Popen([sys.executable, "-c", SERVER, str(args.urls), str(args.hosts)],
                              stdout=subprocess.PIPE, text=True)
    rates: dict[str, list[float]] = {name: [] for name in SETUPS}
    per_cpu_second: dict[str, list[float]] = {name: [] for name in SETUPS}
    try:
        ports = [int(p) for p in server.stdout.readline().split()]
        for round_number in range(args.rounds):
            for name, (per_host_concurrency, shared) in SETUPS.items():
                used = cpu_seconds()
                with tempfile.TemporaryDirectory() as state, HostLeaseServer(4, 0.0) as leases:
                    rates[name].append(crawl_once(ports, args.urls, Path(state), per_host_concurrency,
                                                  leases.address if shared else None))
                # This process and the lease server (a child, waited for on leaving the block); not the image server.
                per_cpu_second[name].append(args.urls / (cpu_seconds() - used))
                print(f"round {round_number}: {name}: {rates[name][-1]:,.0f} images/s")
    finally:
        server.terminate()
        server.wait()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "lease_slots_per_s": round(leases_per_s),
        "lease_clients": args.clients,
        "crawl_urls": args.urls,
        "crawl_hosts": args.hosts,
        "crawl_images_per_s": {name: [round(v, 1) for v in values] for name, values in rates.items()},
        "crawl_median_images_per_s": {name: round(v, 1) for name, v in medians.items()},
        "ratio_leases_over_same_total": round(medians["leases"] / medians["per_chunk_same_total"], 3),
        "crawl_images_per_cpu_second": {name: [round(v, 1) for v in values] for name, values in per_cpu_second.items()},
        "median_images_per_cpu_second": {name: round(statistics.median(v), 1) for name, v in per_cpu_second.items()},
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
