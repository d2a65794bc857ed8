"""The crawl stage's one config model: politeness, safety limits, input columns, seed crawl and resume knobs."""
from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from storage.images import DEFAULT_MAX_PIXELS

ImageFormat = Literal["jpeg", "png", "gif", "webp", "bmp"]

# X-Robots-Tag / <meta name="robots"> directives that opt a resource out of AI training or indexing.
DEFAULT_OPT_OUT = ["noai", "noimageai", "noindex", "noimageindex", "none"]


class CrawlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Throughput and politeness. `concurrency` is the total of requests in flight (shared by all workers).
    concurrency: int = Field(256, ge=1)
    per_host_concurrency: int = Field(4, ge=1)
    per_host_min_delay_s: float = Field(0.1, ge=0.0)  # between the starts of two requests to one host
    max_crawl_delay_s: float = Field(10.0, ge=0.0)  # robots.txt Crawl-delay is obeyed up to this
    workers: int = Field(0, ge=0, le=256)  # processes; 0 = one per CPU core (bounded: each is a process)
    min_urls_per_worker: int = Field(2000, ge=1)  # smaller chunks run in fewer processes (start-up costs)

    # Timeouts, retries, redirects.
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(20.0, gt=0)  # longest silence while reading
    total_timeout_s: float = Field(60.0, gt=0)  # one request, headers to last byte
    retries: int = Field(2, ge=0, le=20)  # extra attempts after timeouts, connection errors, 429 and 5xx
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    max_retry_after_s: float = Field(120.0, ge=0)  # a longer Retry-After gives up instead of waiting
    max_redirects: int = Field(5, ge=0)
    verify_tls: bool = True

    # Identity and consent.
    user_agent_token: str = Field("gadms-crawler", pattern=r"^[A-Za-z_-]+$")  # the robots.txt product token
    contact_url: str = ""  # where site owners reach the operator; goes into the User-Agent
    robots: bool = True
    robots_cache_ttl_s: float = Field(86400.0, gt=0)
    robots_max_bytes: int = Field(512 * 1024, ge=1024)
    opt_out_directives: list[str] = Field(default_factory=lambda: list(DEFAULT_OPT_OUT))

    # Safety.
    allow_private_addresses: list[str] = Field(default_factory=list)  # CIDRs / IPs / host names
    max_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)  # Pillow's own decompression-bomb threshold
    image_formats: list[ImageFormat] = Field(default_factory=lambda: ["jpeg", "png", "gif", "webp", "bmp"])

    # URL lists.
    url_column: str = "url"
    caption_column: str = "caption"
    extra_columns: list[str] = Field(default_factory=list)  # kept as source_meta (save_additional_columns)

    # Seed-page crawl.
    seed_max_depth: int = Field(2, ge=0)  # 0 = only the seed pages
    seed_max_pages: int = Field(100, ge=1)
    seed_allowed_domains: list[str] = Field(default_factory=list)  # empty = the seeds' hosts (and subdomains)
    max_page_bytes: int = Field(5 * 1024 * 1024, ge=1024)

    # Resume: finished URLs are written to the chunk's state folder every so many rows or seconds.
    state_flush_rows: int = Field(512, ge=1)
    state_flush_s: float = Field(2.0, gt=0)

    @field_validator("allow_private_addresses")
    @classmethod
    def _valid_allow_entries(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not entry or "/" in entry or " " in entry:
                    raise ValueError(f"{entry!r} is neither an IP address, a CIDR nor a host name") from None
        return entries

    @field_validator("opt_out_directives")
    @classmethod
    def _lowercase(cls, directives: list[str]) -> list[str]:
        return [d.strip().lower() for d in directives]

    @property
    def user_agent(self) -> str:
        contact = f"; +{self.contact_url}" if self.contact_url else ""
        return f"Mozilla/5.0 (compatible; {self.user_agent_token}/0.1; GA-DMS WebPerson curation{contact})"
