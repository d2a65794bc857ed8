"""`gadms crawl`: download images from URL lists (--urls) or seed pages (--seed) into Parquet under --out.

    gadms crawl --urls urls.parquet --out crawl_out [--config crawl.yaml]
    gadms crawl --seed https://example.org/gallery/ --out crawl_out --config crawl.yaml

The list is cut into chunks of `--shard-size` URLs (as `shard_size` in a build config); each chunk writes <out>/downloads/<chunk>.parquet and
<out>/rejects/<chunk>.parquet when it is done and keeps its progress under <out>/work/crawl/<chunk>/ meanwhile;
each run saves its record in <out>/runs/<run_id>.json (curation.crawl.job runs the chunks as storage.jobs units).
Rerunning the same command skips finished chunks and resumes the interrupted one.
"""
from __future__ import annotations

import argparse

def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--urls", metavar="FILE_OR_DIR",
                        help="URL list: txt/csv/tsv/json/jsonl(.gz) or parquet, a file or a folder (top level, "
                             "one format), local or fsspec URL")
    source.add_argument("--seed", metavar="URL", nargs="+", help="seed page(s) to crawl for <img> tags")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; reruns resume)")
    parser.add_argument("--config", metavar="FILE", help="YAML/JSON CrawlConfig (see curation/crawl/config.py)")
    parser.add_argument("--allow-private", metavar="CIDR_OR_HOST", nargs="+", default=[],
                        help="also allow these non-public addresses, e.g. 127.0.0.1 for a local test site")
    parser.add_argument("--workers", type=int, metavar="N", help="processes (default: config, 0 = one per core)")
    parser.add_argument("--url-column", metavar="NAME", help="URL column (default: config's url_column)")
    parser.add_argument("--caption-column", metavar="NAME", help="caption column (default: config's caption_column)")
    parser.add_argument("--extra-columns", metavar="NAME", nargs="+",
                        help="input columns kept as source_meta (default: config's extra_columns)")
    parser.add_argument("--shard-size", type=int, default=10_000, metavar="N",
                        help="URLs per chunk: one state folder and one output file each (as a build's shard_size)")
    parser.add_argument("--takedown-list", metavar="FILE", action="append", default=[],
                        help="blocklist (storage/takedown.py format): its URLs and domains are never fetched; "
                             "repeatable")
    parser.add_argument("--run-id", metavar="ID", help="run id written to the outputs (default: a new one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import itertools
    import logging

    from tqdm import tqdm

    from curation.crawl import CrawlConfig, read_url_list
    from curation.crawl.fetcher import check_http_url
    from curation.crawl.job import run_crawl_job
    from curation.crawl.robots import RobotsCache
    from curation.crawl.urllist import count_rows
    from storage.configfile import dump_config, load_config, validate_config
    from storage.errors import check_range
    from storage.fs import is_local, join, make_folder
    from storage.jobs import StageRun
    from storage.takedown import TakedownList, read_takedown_list

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    check_range("--shard-size", args.shard_size, 1, 10**8)
    overrides = {
        key: value for key, value in (
            ("workers", args.workers), ("url_column", args.url_column), ("caption_column", args.caption_column),
            ("extra_columns", args.extra_columns),
        ) if value is not None
    }
    if args.config:
        config = load_config(args.config, CrawlConfig, overrides)
    else:
        config = validate_config(overrides, CrawlConfig, "command line")
    if args.allow_private:
        config = validate_config(
            {**config.model_dump(), "allow_private_addresses": config.allow_private_addresses + args.allow_private},
            CrawlConfig, "--allow-private",
        )
    takedown = TakedownList()
    for path in args.takedown_list:  # a bad line fails here, before anything is fetched
        takedown.extend(read_takedown_list(path))
    robots_cache = RobotsCache(config.robots_cache_ttl_s)
    out = args.out
    for seed in args.seed or ():
        check_http_url(seed, "--seed")
    if not args.seed:  # read_url_list checks the list's columns now, before anything is written
        records = read_url_list(args.urls, config.url_column, config.caption_column, config.extra_columns)
        total = count_rows(args.urls)
        first_chunk = list(itertools.islice(records, args.shard_size))  # its rows too: an int URL, a bad line
        records = itertools.chain(first_chunk, records)
    make_folder(out, "crawl output folder")
    if is_local(out):
        dump_config(config, join(out, "crawl_config.yaml"))
    run = StageRun.start(out, "crawl", args.run_id)
    if not config.contact_url:
        logging.getLogger("curation.crawl").warning(
            "no contact_url in the config: site owners cannot reach you from the User-Agent; please set one")
    if args.seed:
        records = _seed_records(args.seed, config, out, robots_cache)
        total = len(records)

    counts = {"ok": 0, "rejected": 0}
    tqdm.monitor_interval = 0  # no monitor thread: with a single thread, crawl workers can be forked
    bars: list[tqdm] = []  # opened at the first progress, so an error before it stays the only line

    def progress(ok: int, rejected: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="url", desc="crawl", dynamic_ncols=True))
        bar = bars[0]
        counts["ok"] += ok
        counts["rejected"] += rejected
        bar.set_postfix(ok=counts["ok"], rejected=counts["rejected"], refresh=False)
        bar.update(ok + rejected)

    try:
        totals = run_crawl_job(records, out, config, args.shard_size, run, takedown, robots_cache, progress)
    finally:
        for bar in bars:
            bar.close()
    reasons = totals["rejected_this_run"]
    summary = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    print(f"crawl: {totals['downloaded']} downloaded, {totals['rejected']} rejected -> {out}/downloads, "
          f"{out}/rejects" + (f"; rejected this run: {summary}" if summary else ""))
    return 0


def _seed_records(seeds: list[str], config, out: str, robots_cache) -> list:
    """Discover images from the seed pages once; a rerun with the same seeds reads the saved list, so its
    chunks line up with the interrupted run's."""
    import json

    from curation.crawl import discover_images
    from storage.errors import GadmsError
    from storage.fs import atomic_write, filesystem, join
    from storage.records import UrlRecord

    path = join(out, "work", "crawl", "discovered.json")
    fs, p = filesystem(path)
    if fs.exists(p):
        with fs.open(p, "r") as f:
            saved = json.load(f)
        if saved["seeds"] != seeds:
            other = " ".join(saved["seeds"])
            raise GadmsError(f"{out}: holds a crawl of other seed pages ({other}); use another --out")
        return [UrlRecord(**record) for record in saved["records"]]
    records = discover_images(seeds, config, robots_cache=robots_cache)
    if records:  # nothing found is more likely a config problem than a result worth keeping
        with atomic_write(path, "w") as f:
            json.dump({"seeds": seeds, "records": [vars(r) for r in records]}, f)
    return records
