"""`discover_images`: crawl seed pages breadth-first and list the images they show, with alt text and page URL.

Pages go through the same fetcher as images (address policy, robots.txt, per-host limits, byte cap). A page
whose robots meta or X-Robots-Tag opts out gives no images; `nofollow`/`none` stops its links being followed.
"""
from __future__ import annotations

import asyncio
import logging
from urllib.parse import urldefrag, urlsplit

from curation.crawl.config import CrawlConfig
from curation.crawl.fetcher import PAGE_ACCEPT, Fetcher, FetchFailure, opt_out_directive, parse_url
from curation.crawl.htmlextract import PageContent, extract_page
from curation.crawl.loop import run_sync
from curation.crawl.robots import RobotsCache
from storage.records import UrlRecord

log = logging.getLogger(__name__)

HTML_TYPES = ("text/html", "application/xhtml+xml")


def _domain_allowed(url: str, domains: list[str]) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return any(host == d or host.endswith("." + d) for d in domains)


def discover_images(seed_urls: list[str], config: CrawlConfig, *,
                    robots_cache: RobotsCache | None = None) -> list[UrlRecord]:
    """Image URLs found on the seed pages and the pages they link to (allowed domains only, up to
    `seed_max_depth` links away and `seed_max_pages` pages), each once, in discovery order."""
    robots_cache = robots_cache if robots_cache is not None else RobotsCache(config.robots_cache_ttl_s)
    found: list[UrlRecord] = []
    run_sync(_discover(list(seed_urls), config, robots_cache, found))
    return found


async def _discover(seed_urls: list[str], config: CrawlConfig, robots_cache: RobotsCache,
                    found: list[UrlRecord]) -> None:
    seeds = [urldefrag(url.strip())[0] for url in seed_urls]
    domains = [d.lower().lstrip(".") for d in config.seed_allowed_domains]
    domains = domains or sorted({(urlsplit(url).hostname or "").lower() for url in seeds})
    seen_pages = set(seeds)
    seen_images: set[str] = set()
    frontier = seeds[: config.seed_max_pages]
    fetched = 0
    async with Fetcher(config, robots_cache) as fetcher:
        for depth in range(config.seed_max_depth + 1):
            fetched += len(frontier)
            pages = await asyncio.gather(*(_fetch_page(fetcher, url, config) for url in frontier))
            next_frontier: list[str] = []
            for page_url, page in zip(frontier, pages):
                if page is None:
                    continue
                for image_url, alt in page.images:
                    if image_url not in seen_images:
                        seen_images.add(image_url)
                        found.append(UrlRecord(url=image_url, alt_text=alt, page_url=page_url))
                if depth == config.seed_max_depth:
                    continue
                for link in page.links:
                    if link not in seen_pages and _domain_allowed(link, domains):
                        if fetched + len(next_frontier) >= config.seed_max_pages:
                            break
                        seen_pages.add(link)
                        next_frontier.append(link)
            frontier = next_frontier
            if not frontier:
                break
    log.info("crawl: %d pages fetched, %d images found", fetched, len(found))


async def _fetch_page(fetcher: Fetcher, url: str, config: CrawlConfig) -> PageContent | None:
    try:
        response = await fetcher.get(parse_url(url), max_bytes=config.max_page_bytes, accept=PAGE_ACCEPT,
                                     check_opt_out=False)
    except FetchFailure as failure:
        log.warning("crawl: page %s skipped: %s %s", url, failure.reason, failure.detail)
        return None
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type and content_type not in HTML_TYPES:
        log.info("crawl: %s is %s, not a page", url, content_type)
        return None
    charset = _charset(response.headers.get("Content-Type", ""))
    page = extract_page(response.body.decode(charset, "replace"), str(response.url), config.user_agent_token)
    opted_out = opt_out_directive(response.headers, config.opt_out_directives, config.user_agent_token)
    if opted_out or page.robots_directives & set(config.opt_out_directives):
        page.images.clear()
    if page.robots_directives & {"nofollow", "none"}:
        page.links.clear()
    return page


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            try:
                "".encode(value.strip('"'))
                return value.strip('"')
            except LookupError:
                break
    return "utf-8"
