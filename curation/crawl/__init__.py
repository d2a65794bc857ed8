"""The crawl stage: URL lists or seed pages → downloaded images (raw bytes, checked, not decoded) + rejects.

Public API (the Prefect flow calls `crawl_chunk` per chunk; `gadms crawl` wraps all of it):
    CrawlConfig, read_url_list, discover_images, crawl_chunk, CrawlResult
"""
from curation.crawl.chunk import CrawlResult, crawl_chunk
from curation.crawl.config import CrawlConfig
from curation.crawl.discover import discover_images
from curation.crawl.urllist import read_url_list

__all__ = ["CrawlConfig", "CrawlResult", "crawl_chunk", "discover_images", "read_url_list"]
