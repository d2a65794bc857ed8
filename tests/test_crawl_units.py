"""Crawl stage parts that need no web: address policy, robots.txt, header checks, srcset/HTML, limiter."""
from __future__ import annotations

import asyncio
import io
import ipaddress
import struct
import time
import zlib

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from PIL import Image

from curation.crawl import CrawlConfig
from curation.crawl.fetcher import opt_out_directive, parse_retry_after
from curation.crawl.htmlextract import best_srcset_url, extract_page, parse_srcset
from curation.crawl.imageinfo import ImageCheckError, inspect_image
from curation.crawl.limiter import HostLimiter
from curation.crawl.robots import RobotsCache, RobotsRules, parse_robots
from curation.crawl.safety import AddressPolicy
from storage.configfile import ConfigError, validate_config

FORMATS = ["jpeg", "png", "gif", "webp", "bmp"]


# --- address policy (SSRF) ---------------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
    "100.64.0.1", "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "ff02::1", "::",
])
def test_default_policy_refuses_non_public_addresses(address):
    policy = AddressPolicy([])
    assert not policy.allows(address, ipaddress.ip_address(address))
    assert policy.refuses_literal(f"[{address}]" if ":" in address else address)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"])
def test_default_policy_allows_public_addresses(address):
    assert AddressPolicy([]).allows(address, ipaddress.ip_address(address))


def test_allow_list_opens_exactly_what_it_names():
    policy = AddressPolicy(["127.0.0.1", "10.0.0.0/8", "intranet.local"])
    assert policy.allows("127.0.0.1", ipaddress.ip_address("127.0.0.1"))
    assert not policy.allows("127.0.0.2", ipaddress.ip_address("127.0.0.2"))
    assert policy.allows("10.200.3.4", ipaddress.ip_address("10.200.3.4"))
    assert not policy.allows("169.254.169.254", ipaddress.ip_address("169.254.169.254"))
    assert policy.allows("intranet.local", ipaddress.ip_address("192.168.5.5"))  # a listed host name
    assert not policy.refuses_literal("example.org")  # host names are checked when resolved


def test_config_rejects_bad_allow_entries_and_unknown_fields():
    with pytest.raises(ConfigError, match="allow_private_addresses"):
        validate_config({"allow_private_addresses": ["10.0.0.0/33"]}, CrawlConfig, "crawl.yaml")
    with pytest.raises(ConfigError, match="crawl.yaml: field 'concurency'"):
        validate_config({"concurency": 3}, CrawlConfig, "crawl.yaml")
    config = validate_config({"contact_url": "https://example.org/crawler"}, CrawlConfig)
    assert config.user_agent == (
        "Mozilla/5.0 (compatible; gadms-crawler/0.1; GA-DMS WebPerson curation; +https://example.org/crawler)")


# --- robots.txt ---------------------------------------------------------------------------------------------

ROBOTS = """
# comment
User-agent: *
Disallow: /private/
Allow: /private/public-*.jpg$
Disallow: /*.gif$

User-agent: otherbot
Disallow: /

User-agent: GADMS-Crawler
User-agent: anotherbot
Disallow: /only-for-us/
Allow: /only-for-us/ok
Crawl-delay: 2.5
Sitemap: https://example.org/sitemap.xml
"""


def test_robots_uses_our_group_when_named_else_star():
    ours = parse_robots(ROBOTS, "gadms-crawler")
    assert not ours.allows("/only-for-us/x.jpg")
    assert ours.allows("/only-for-us/ok.jpg")  # longer Allow beats shorter Disallow
    assert ours.allows("/private/a.jpg")  # the * group does not apply when ours exists
    assert ours.crawl_delay_s == 2.5
    star = parse_robots(ROBOTS, "somebot")
    assert not star.allows("/private/a.jpg")
    assert star.allows("/private/public-1.jpg")  # Allow with * and $ is the longer match
    assert not star.allows("/private/public-1.jpg?x=1")  # $ anchors the end
    assert not star.allows("/img/anim.gif") and star.allows("/img/anim.gif.html")
    assert star.allows("/robots.txt") and star.crawl_delay_s is None


def test_robots_ties_allow_and_special_cases():
    rules = parse_robots("User-agent: *\nDisallow: /a\nAllow: /a\nDisallow:\n", "gadms-crawler")
    assert rules.allows("/a/b")  # equal length: Allow wins (RFC 9309)
    assert parse_robots("Disallow: /\n", "gadms-crawler").allows("/x")  # rules outside any group
    assert parse_robots("", "gadms-crawler").allows("/x")
    assert parse_robots("User-agent: *\nDisallow: /%7Euser/\n", "gadms-crawler").allows("/~user/x") is False
    unreachable = RobotsRules.disallow_all("robots.txt: http_503")
    assert not unreachable.allows("/") and not unreachable.allows("/robots.txt")


def test_robots_cache_expires(monkeypatch):
    cache = RobotsCache(ttl_s=100)
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    cache.put("http://a:80", RobotsRules.allow_all())
    cache.put("http://b:80", RobotsRules.disallow_all("robots.txt: timeout"))
    assert cache.get("http://a:80") is not None and cache.get("http://b:80") is not None
    now[0] += 99
    assert cache.get("http://a:80") is not None
    now[0] += 2
    assert cache.get("http://a:80") is None and len(cache) == 1


# --- image headers ------------------------------------------------------------------------------------------

def _encode(fmt: str, size=(37, 21), **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt,pil,kwargs", [
    ("jpeg", "JPEG", {}), ("jpeg", "JPEG", {"progressive": True}), ("png", "PNG", {}), ("gif", "GIF", {}),
    ("webp", "WEBP", {"lossless": True}), ("webp", "WEBP", {"quality": 80}), ("bmp", "BMP", {}),
])
def test_header_dimensions_and_format(fmt, pil, kwargs):
    info = inspect_image(_encode(pil, **kwargs), FORMATS, 10_000)
    assert (info.format, info.width, info.height) == (fmt, 37, 21)
    assert info.mime == f"image/{fmt}"


def test_jpeg_with_exif_thumbnail_reads_main_frame():
    thumb = _encode("JPEG", size=(8, 8))
    exif = b"Exif\x00\x00" + thumb  # an APP1 segment holding a whole JPEG (with its own EOI)
    main = _encode("JPEG", size=(64, 48))
    data = main[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + main[2:]
    info = inspect_image(data, FORMATS, 10_000)
    assert (info.width, info.height) == (64, 48)
    with pytest.raises(ImageCheckError) as cut:  # the thumbnail's EOI must not hide the main image's loss
        inspect_image(data[: len(data) - 200], FORMATS, 10_000)
    assert cut.value.reason == "truncated"


@pytest.mark.parametrize("data,reason", [
    (_encode("JPEG")[:-200], "truncated"),
    (_encode("JPEG")[:40], "truncated"),
    (_encode("PNG")[:-12], "truncated"),
    (_encode("GIF")[:-1], "truncated"),
    (_encode("WEBP", quality=80)[:-10], "truncated"),
    (b"<!DOCTYPE html><html>gone</html>", "not_an_image"),
    (b"", "not_an_image"),
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "unsupported_format"),
    (b"II*\x00" + b"\x00" * 20, "unsupported_format"),
    (b"\xff\xd8\xff\xe0\x00", "truncated"),
])
def test_bad_bodies_are_rejected_with_reason(data, reason):
    with pytest.raises(ImageCheckError) as excinfo:
        inspect_image(data, FORMATS, 10_000)
    assert excinfo.value.reason == reason


def test_pixel_limit_rejects_bombs_without_decoding():
    side = 30000
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    with pytest.raises(ImageCheckError) as excinfo:
        inspect_image(bomb, FORMATS, 89_478_485)
    assert excinfo.value.reason == "too_many_pixels" and "30000x30000" in excinfo.value.detail
    with pytest.raises(ImageCheckError, match="too_many_pixels"):
        inspect_image(_encode("PNG", size=(100, 100)), FORMATS, 9_999)
    assert inspect_image(_encode("PNG", size=(100, 100)), FORMATS, 10_000).width == 100
    with pytest.raises(ImageCheckError, match="unsupported_format: gif"):
        inspect_image(_encode("GIF"), ["jpeg"], 10_000)


# --- HTML ---------------------------------------------------------------------------------------------------

def test_srcset_candidates_and_best():
    assert parse_srcset("a.jpg 1x, b.jpg 2x")[1].density == 2.0
    assert best_srcset_url("small.jpg 320w, large.jpg 1280w, mid.jpg 640w") == "large.jpg"
    assert best_srcset_url("one.jpg, two.jpg 1.5x") == "two.jpg"
    assert best_srcset_url("img,1.jpg 100w, img,2.jpg 200w") == "img,2.jpg"  # commas inside URLs
    assert best_srcset_url("data:image/png;base64,iVBORw0 1x,big.jpg 3x") == "big.jpg"
    assert best_srcset_url("  ") is None


def test_extract_page_images_links_and_robots_meta():
    html = """<html><head><base href="/site/"><meta name="ROBOTS" content="NoImageAI, nofollow">
      <link rel="next" href="page-2.html"></head><body>
      <img src="a.jpg" alt="  a   person ">
      <img src="placeholder.gif" data-src="lazy.jpg" title="lazy one">
      <IMG SRC=/abs.jpg srcset="/abs.jpg 1x, /abs@2x.jpg 2x">
      <img src="data:image/gif;base64,R0lGOD">
      <img alt="no src">
      <a href="other.html#top">x</a> <a href="https://elsewhere.org/p">y</a>
      <a rel="nofollow" href="skip.html">z</a> <a href="mailto:a@b">m</a>
    </body></html>"""
    page = extract_page(html, "http://h.test/dir/page.html", "gadms-crawler")
    assert page.images == [
        ("http://h.test/site/a.jpg", "a person"),
        ("http://h.test/site/lazy.jpg", "lazy one"),
        ("http://h.test/abs@2x.jpg", ""),
    ]
    assert page.links == ["http://h.test/site/page-2.html", "http://h.test/site/other.html",
                          "https://elsewhere.org/p"]
    assert page.robots_directives == {"noimageai", "nofollow"}


# --- X-Robots-Tag and Retry-After ---------------------------------------------------------------------------

def _headers(*values: str) -> CIMultiDictProxy:
    return CIMultiDictProxy(CIMultiDict([("X-Robots-Tag", v) for v in values]))


def test_x_robots_tag_opt_outs():
    directives = CrawlConfig().opt_out_directives
    assert opt_out_directive(_headers("noai"), directives, "gadms-crawler") == "noai"
    assert opt_out_directive(_headers("index, NoImageIndex"), directives, "gadms-crawler") == "noimageindex"
    assert opt_out_directive(_headers("googlebot: noindex"), directives, "gadms-crawler") is None
    assert opt_out_directive(_headers("gadms-crawler: noimageai"), directives, "gadms-crawler") == "noimageai"
    assert opt_out_directive(_headers("otherbot: noai", "all"), directives, "gadms-crawler") is None
    assert opt_out_directive(_headers("nofollow"), directives, "gadms-crawler") is None


def test_retry_after_forms(monkeypatch):
    assert parse_retry_after("7") == 7.0
    monkeypatch.setattr(time, "time", lambda: 784111767.0)  # Sun, 06 Nov 1994 08:49:27 GMT
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT") == pytest.approx(10.0)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# --- per-host limiter ---------------------------------------------------------------------------------------

def test_host_limiter_caps_concurrency_spaces_starts_and_pauses():
    async def scenario():
        limiter = HostLimiter(concurrency=2, min_delay_s=0.05, max_crawl_delay_s=1.0)
        global_slots = asyncio.Semaphore(100)
        starts: list[float] = []
        active, peak = 0, 0

        async def request():
            nonlocal active, peak
            async with limiter.slot("h:80", global_slots):
                starts.append(time.monotonic())
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.12)  # longer than the delay: a second request starts meanwhile
                active -= 1

        await asyncio.gather(*(request() for _ in range(6)))
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        limiter.pause("h:80", 0.3)
        paused_at = time.monotonic()
        await request()
        return peak, gaps, starts[-1] - paused_at

    peak, gaps, waited = asyncio.run(scenario())
    assert peak == 2
    assert min(gaps) >= 0.049
    assert waited >= 0.29


def test_host_limiter_concurrency_without_delay():
    async def scenario():
        limiter = HostLimiter(concurrency=3, min_delay_s=0.0, max_crawl_delay_s=1.0)
        global_slots = asyncio.Semaphore(2)
        active = {"host": 0, "all": 0}
        peaks = {"host": 0, "all": 0}

        async def request(host):
            async with limiter.slot(host, global_slots):
                active["all"] += 1
                active["host"] += host == "a:80"
                peaks["all"] = max(peaks["all"], active["all"])
                peaks["host"] = max(peaks["host"], active["host"])
                await asyncio.sleep(0.01)
                active["all"] -= 1
                active["host"] -= host == "a:80"

        await asyncio.gather(*(request("a:80") for _ in range(10)), *(request("b:80") for _ in range(5)))
        return peaks

    assert asyncio.run(scenario()) == {"host": 2, "all": 2}  # the global cap (2) binds before the host's (3)


def test_binary_column_keeps_bytes_empties_and_nulls_in_order():
    import pyarrow as pa

    from curation.crawl.state import binary_column

    values = [b"\xff\xd8\xff" + bytes(range(256)), None, b"", b"png", None, b"last"]
    column = binary_column(values, rows_per_chunk=4)
    column.validate(full=True)
    assert column.type == pa.large_binary() and [len(c) for c in column.chunks] == [4, 2]
    assert column.to_pylist() == values and column.null_count == 2
    assert binary_column([None]).to_pylist() == [None] and binary_column([]).to_pylist() == []
