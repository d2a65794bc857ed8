"""Where everything of one WebPerson output root lives.

    <root>/shards/<shard_id>.parquet     samples (SHARD_SCHEMA), one shard per input chunk
    <root>/rejects/<shard_id>.parquet    rejects of that chunk (REJECT_SCHEMA)
    <root>/reject_thumbnails/<shard_id>.parquet  small JPEGs of a bounded sample of that chunk's rejects
    <root>/shard_stats/<shard_id>.parquet  that shard's counts behind `gadms stats` (SHARD_STATS_SCHEMA)
    <root>/manifest/<shard_id>.json      manifest entry; written last, so it decides whether a shard is done
    <root>/runs/<run_id>.json            run records (config, counts, timings)
    <root>/retries/<shard_id>-retry-<digest>.jsonl  rows of a shard refetched by `gadms build --retry-failed`
    <root>/work/                         stage state for resuming (crawl chunks, caption cache, ...)
    <root>/dedup/                        global near-duplicate hash index (and the guarded benchmarks' images)
    <root>/takedown/                     takedown lists applied to the root; pending/ journals of a running takedown
    <root>/catalog.duckdb                DuckDB views over all of the above (local roots; configurable)
"""
from __future__ import annotations

from dataclasses import dataclass

from storage.fs import is_local, join


@dataclass(frozen=True)
class OutputLayout:
    root: str

    @property
    def shards_dir(self) -> str:
        return join(self.root, "shards")

    @property
    def rejects_dir(self) -> str:
        return join(self.root, "rejects")

    @property
    def reject_thumbnails_dir(self) -> str:
        return join(self.root, "reject_thumbnails")

    @property
    def shard_stats_dir(self) -> str:
        return join(self.root, "shard_stats")

    @property
    def manifest_dir(self) -> str:
        return join(self.root, "manifest")

    @property
    def runs_dir(self) -> str:
        return join(self.root, "runs")

    @property
    def retries_dir(self) -> str:
        return join(self.root, "retries")

    @property
    def work_dir(self) -> str:
        return join(self.root, "work")

    @property
    def dedup_dir(self) -> str:
        return join(self.root, "dedup")

    def shard_path(self, shard_id: str) -> str:
        return join(self.shards_dir, f"{shard_id}.parquet")

    def rejects_path(self, shard_id: str) -> str:
        return join(self.rejects_dir, f"{shard_id}.parquet")

    def reject_thumbnails_path(self, shard_id: str) -> str:
        return join(self.reject_thumbnails_dir, f"{shard_id}.parquet")

    def shard_stats_path(self, shard_id: str) -> str:
        return join(self.shard_stats_dir, f"{shard_id}.parquet")

    def manifest_path(self, shard_id: str) -> str:
        return join(self.manifest_dir, f"{shard_id}.json")

    def run_path(self, run_id: str) -> str:
        return join(self.runs_dir, f"{run_id}.json")

    def default_catalog_path(self) -> str:
        """DuckDB writes only local files: a remote root keeps its catalog in the working directory."""
        if is_local(self.root):
            return join(self.root, "catalog.duckdb")
        return "catalog.duckdb"
