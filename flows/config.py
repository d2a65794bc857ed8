"""The one config of a build-webperson run, validated at the edge (a YAML file or its fields)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curation.caption import CaptionConfig
from curation.crawl import CrawlConfig
from curation.dedup import DedupConfig
from curation.detect import DetectConfig
from storage.benchmarks import BENCHMARKS
from storage.configfile import ConfigError, load_config, validate_config
from storage.fs import is_local
from storage.layout import OutputLayout


class InputsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url_lists: list[str] = Field(default_factory=list, description="URL-list files or folders (csv/tsv/jsonl/parquet)")
    seed_pages: list[str] = Field(default_factory=list, description="HTML pages to crawl for <img> tags")
    limit: int | None = Field(default=None, ge=1, description="take only the first N URLs (trial runs)")

    @model_validator(mode="after")
    def _some_input(self) -> "InputsConfig":
        if not self.url_lists and not self.seed_pages:
            raise ValueError("give at least one of url_lists or seed_pages")
        return self


class RunnerConfig(BaseModel):
    """Where the chunk tasks run: threads on this machine, or a Ray cluster (prefect-ray)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "ray"] = "local"
    max_workers: int = Field(default=2, ge=1, description="chunks processed at once by the local runner")
    ray_address: str | None = Field(default=None, description="ray://host:10001 or 'auto'; None starts a local Ray")
    host_lease_address: str = Field(default="127.0.0.1", description="where the run's per-host lease server "
                                    "listens (curation.crawl.hostleases); on a Ray cluster, an address of the flow's "
                                    "host that every worker reaches")


class RejectThumbnailsConfig(BaseModel):
    """The budget of reject thumbnails kept per shard (storage.reject_thumbnails), for `gadms browse`."""

    model_config = ConfigDict(extra="forbid")

    per_reason_per_shard: int = Field(default=8, ge=0, le=1000, description="thumbnails per stage/reason per shard; 0: none")
    max_side: int = Field(default=96, ge=16, le=512, description="longest side of a thumbnail in pixels")


class BenchmarkGuardConfig(BaseModel):
    """A benchmark whose val and test images the dedup index is seeded with (curation.dedup.benchmark)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="cuhk-pedes, icfg-pedes or rstpreid (any case)")
    root: str = Field(description="the folder holding the released layout (or its parent)")

    @field_validator("dataset")
    @classmethod
    def _known(cls, dataset: str) -> str:
        if dataset.lower() not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {dataset!r}: expected one of {sorted(BENCHMARKS)}")
        return dataset.lower()


class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "webperson"
    inputs: InputsConfig
    output_root: str = Field(description="local folder or fsspec URL (s3://bucket/prefix) for shards and catalog")
    shard_size: int = Field(default=1000, ge=1, description="input URLs per chunk; each chunk becomes one shard")
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)
    detect: DetectConfig = Field(default_factory=dict, validate_default=True)  # `weights` has no default
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    reject_thumbnails: RejectThumbnailsConfig = Field(default_factory=RejectThumbnailsConfig)
    takedown_list: str | None = Field(default=None, description="blocklist file (storage.takedown); the lists "
                                      "`gadms takedown` applied to the root are applied as well")
    benchmark_guard: list[BenchmarkGuardConfig] = Field(default_factory=list, description="benchmarks whose val "
                                                        "and test images a crop may not be a near duplicate of")
    retries: int = Field(default=2, ge=0, description="retries of a chunk stage after a transient failure")
    retry_delay_seconds: float = Field(default=5.0, ge=0)
    work_dir: str | None = Field(default=None, description="local folder for resumable stage state (crawl state, "
                                 "caption cache, dedup index); default <output_root>, required for remote roots")
    catalog_path: str | None = Field(default=None, description="default: <output_root>/catalog.duckdb")
    duckdb_settings: dict[str, str] = Field(default_factory=dict, description="SET options for remote Parquet")


    @model_validator(mode="after")
    def _local_state(self) -> "BuildConfig":
        if self.work_dir is None and not is_local(self.output_root):
            raise ValueError("a remote output_root needs work_dir: a local (or shared POSIX) folder for the "
                             "crawl state, caption cache and dedup index")
        if self.benchmark_guard and not self.dedup.enabled:
            raise ValueError("benchmark_guard needs dedup.enabled: the guard is part of the dedup step")
        return self

    @property
    def state_layout(self) -> OutputLayout:
        """Where stage state lives: its work/ and dedup/ folders (the output root itself when it is local)."""
        return OutputLayout(self.work_dir or self.output_root)


def resolve_build_config(config: str | Path | dict | BuildConfig) -> BuildConfig:
    """A BuildConfig from a YAML/JSON path, a dict of its fields, or a BuildConfig."""
    if isinstance(config, BuildConfig):
        return config
    if isinstance(config, dict):
        return validate_config(config, BuildConfig, "build-webperson parameters")
    if isinstance(config, (str, Path)):
        return load_config(config, BuildConfig)
    raise ConfigError(f"build-webperson config: expected a file path or a mapping, got {type(config).__name__}")
