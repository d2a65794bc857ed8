"""The crawl job behind `gadms crawl`: a stream of URL records cut into chunks of `shard_size`, each a unit of
storage.jobs (`part-00000`, ...).

    <out>/rejects/<chunk>.parquet     REJECT_SCHEMA, stage "crawl"
    <out>/downloads/<chunk>.parquet   DOWNLOAD_SCHEMA, written last: the chunk's marker
    <out>/work/crawl/<chunk>/         the chunk's resumable state while it is in progress (curation.crawl.state)
    <out>/runs/<run_id>.json          the run record

A chunk done in an earlier run is counted from its files (after checking it came from the same URLs); the
interrupted one resumes from its state.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterable, Iterator

from curation.crawl.chunk import CrawlResult, crawl_chunk
from curation.crawl.config import CrawlConfig
from curation.crawl.output import check_same_urls, downloads_path, rejects_path, write_downloads
from curation.crawl.state import chunk_fingerprint
from curation.crawl.urllist import count_rows
from storage.fs import join
from storage.jobs import StageRun, Unit, part_id, run_units_overlapped, state_dir
from storage.records import UrlRecord
from storage.takedown import TakedownList


def run_crawl_job(records: Iterable[UrlRecord], out: str, config: CrawlConfig, shard_size: int, run: StageRun,
                  takedown: TakedownList, robots_cache=None,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Crawl every chunk not done yet; save the run record and return its counts: downloaded and rejected (all
    chunks), rejected_this_run (reason → count, the chunks crawled by this run)."""
    counts = {"downloaded": 0, "rejected": 0}
    reasons: dict[str, int] = {}
    progress = progress or (lambda ok, rejected: None)

    def finished(unit: Unit, chunk: list[UrlRecord]) -> None:
        rejects_file, downloads_file = unit.outputs
        check_same_urls(downloads_file, chunk)
        downloaded, rejected = count_rows(downloads_file), count_rows(rejects_file)
        progress(downloaded, rejected)
        counts["downloaded"] += downloaded
        counts["rejected"] += rejected

    def crawl(unit: Unit, chunk: list[UrlRecord], meanwhile: Callable[[], None]) -> CrawlResult:
        result = crawl_chunk(chunk, config, unit.state_dir, progress=progress, robots_cache=robots_cache,
                             takedown=takedown, meanwhile=meanwhile)
        counts["downloaded"] += result.downloads_table.num_rows
        counts["rejected"] += len(result.rejects)
        for reason, n in result.reason_counts().items():
            reasons[reason] = reasons.get(reason, 0) + n
        return result

    def write(unit: Unit, chunk: list[UrlRecord], result: CrawlResult) -> None:
        rejects_file, downloads_file = unit.outputs
        run.write_rejects(result.rejects, rejects_file, unit.id)
        write_downloads(result.downloads_table, downloads_file, unit.id, run.run_id,  # last: the marker
                        urls_fingerprint=chunk_fingerprint(chunk))

    def units() -> Iterator[tuple[Unit, list[UrlRecord]]]:
        iterator = iter(records)
        for number in itertools.count():
            chunk = list(itertools.islice(iterator, shard_size))
            if not chunk:
                return
            chunk_id = part_id(number)
            yield Unit(chunk_id, (rejects_path(out, chunk_id), downloads_path(out, chunk_id)),
                       state_dir(join(out, "work"), "crawl", chunk_id)), chunk

    # A chunk's outputs are written while the workers fetch the next chunk: ~1 s of the 7 s a chunk of 10,000
    # images takes.
    run_units_overlapped(units(), crawl, write, finished)
    summary = {"counts": {**counts, "rejected_this_run": reasons}}
    run.save_record({**config.model_dump(mode="json"), "shard_size": shard_size}, summary)
    return summary["counts"]
