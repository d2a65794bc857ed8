"""The ceiling for `benchmarks/crawl_vs_img2dataset.py`: a bare aiohttp loop per process over the same URL list.

    python benchmarks/bare_aiohttp_fetch.py URLS.parquet --workers 2 --concurrency 256

Each of `--workers` processes GETs its share of the list (every workers-th URL), `--concurrency` requests in flight
in all (split over the processes, as `gadms crawl` splits its `concurrency`), on a keep-alive connection pool, and
reads every body into memory: no robots.txt, no per-host limit, no
checks, no output. Prints the number of 200 answers.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing

import aiohttp
import pyarrow.parquet as pq


async def fetch_all(urls: list[str], concurrency: int) -> int:
    ok = 0
    queue = iter(urls)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def lane() -> None:
            nonlocal ok
            for url in queue:
                async with session.get(url) as response:
                    await response.read()
                    ok += response.status == 200

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return ok


def worker(urls: list[str], concurrency: int, results: multiprocessing.Queue) -> None:
    results.put(asyncio.run(fetch_all(urls, concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", help="a Parquet URL list with a `url` column")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=256, help="requests in flight, all processes together")
    args = parser.parse_args()
    urls = pq.read_table(args.urls, columns=["url"]).column("url").to_pylist()
    results = multiprocessing.Queue()
    per_process = math.ceil(args.concurrency / args.workers)
    processes = [multiprocessing.Process(target=worker, args=(urls[i::args.workers], per_process, results))
                 for i in range(args.workers)]
    for process in processes:
        process.start()
    ok = sum(results.get() for _ in processes)
    for process in processes:
        process.join()
    print(ok)


if __name__ == "__main__":
    main()
