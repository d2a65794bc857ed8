"""The synthetic web served over real HTTP on 127.0.0.1: pages, images, and every hostile case."""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from PIL import Image

from curation.synthweb import SiteServer, render_site
from storage.errors import GadmsError

SLOW_SECONDS = 1.0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    site = render_site(tmp_path_factory.mktemp("served") / "web", images=40, seed=3)
    records = {}
    for line in site.ground_truth.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        records[record["path"]] = record
    with SiteServer(site.root, slow_seconds=SLOW_SECONDS) as server:
        yield server, site, records


def _get(url: str, timeout: float = 10.0):
    """(status, headers, body) without following redirects."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            for key in ("src", "data-src"):
                if attrs.get(key) and not attrs[key].startswith("data:"):
                    self.images.append(attrs[key])
            for candidate in (attrs.get("srcset") or "").split(","):
                if candidate.strip():
                    self.images.append(candidate.split()[0])
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def test_server_binds_loopback_and_substitutes_base_url(served):
    server, site, _ = served
    assert server.base_url.startswith("http://127.0.0.1:")
    status, headers, body = _get(server.base_url + "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"__BASE_URL__" not in body and (server.base_url + "/sitemap.xml").encode() in body
    status, _, robots = _get(server.base_url + "/robots.txt")
    assert status == 200
    assert robots.decode() == f"User-agent: *\nDisallow: /private/\n\nSitemap: {server.base_url}/sitemap.xml\n"


def test_sitemap_lists_fetchable_public_pages(served):
    server, site, _ = served
    status, headers, body = _get(server.base_url + "/sitemap.xml")
    assert status == 200 and headers["Content-Type"].startswith("application/xml")
    namespace = {"s": "http://www.sitemaps.org/schemas/sitemap/0.9"}
    locations = [loc.text for loc in ET.fromstring(body).findall("s:url/s:loc", namespace)]
    assert locations[0] == server.base_url + "/index.html"
    assert len(locations) == 1 + len(list((site.docroot / "gallery").glob("page-*.html")))
    for location in locations:
        assert _get(location)[0] == 200


def test_crawling_the_pages_finds_exactly_the_ground_truth_images(served):
    server, _, records = served
    seen_pages, queue, images = set(), [server.base_url + "/gallery/page-1.html"], set()
    while queue:
        url = queue.pop()
        if url in seen_pages:
            continue
        seen_pages.add(url)
        status, _, body = _get(url)
        if status != 200:
            assert url.endswith("/gallery/missing-page.html") and status == 404
            continue
        parser = _Links()
        parser.feed(body.decode("utf-8"))
        images.update(urlsplit(urljoin(url, src)).path for src in parser.images)
        queue += [urljoin(url, href) for href in parser.links if "/gallery/" in urljoin(url, href)]
    public = {path for path, r in records.items() if any(p.startswith("/gallery/") for p in r["pages"])}
    assert images == public
    assert len(seen_pages) == len(list(set(p for r in records.values() for p in r["pages"]
                                           if p.startswith("/gallery/")))) + 1  # + the missing archive page


def test_plain_images_are_served_byte_exact(served):
    server, _, records = served
    plain = [r for r in records.values() if r["fault"] is None and r["pages"]]
    assert len(plain) > 40
    for record in plain:
        status, headers, body = _get(server.base_url + record["path"])
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert hashlib.sha256(body).hexdigest() == record["sha256"]


def test_content_hostile_files(served):
    server, _, records = served
    status, headers, body = _get(server.base_url + "/img/truncated.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(body))
    assert image.size == (256, 512)
    with pytest.raises(OSError):
        image.load()
    status, headers, body = _get(server.base_url + "/img/not-an-image.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body.startswith(b"<!DOCTYPE html>")
    status, headers, body = _get(server.base_url + "/img/huge.png")
    assert status == 200 and headers["Content-Type"] == "image/png" and len(body) < 200_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(body))
    assert body[16:24] == (30000).to_bytes(4, "big") * 2  # IHDR width, height


def test_status_faults(served):
    server, _, records = served
    assert _get(server.base_url + "/img/missing.jpg")[0] == 404
    assert _get(server.base_url + "/fault/error.jpg")[0] == 500
    assert _get(server.base_url + "/_payload/slow-photo.jpg")[0] == 404  # payloads only behind their fault
    assert _get(server.base_url + "/img/")[0] == 404  # no directory listings
    status, headers, _ = _get(server.base_url + "/loop/a.jpg")
    assert (status, headers["Location"]) == (302, "/loop/b.jpg")
    status, headers, _ = _get(server.base_url + "/loop/b.jpg")
    assert (status, headers["Location"]) == (302, "/loop/a.jpg")
    with pytest.raises(urllib.error.HTTPError, match="infinite loop"):
        urllib.request.urlopen(server.base_url + "/loop/a.jpg", timeout=10)
    status, headers, _ = _get(server.base_url + "/moved/photo.jpg")
    assert status == 301
    target = records[headers["Location"]]
    assert target["fault"] is None
    with urllib.request.urlopen(server.base_url + "/moved/photo.jpg", timeout=10) as response:
        assert hashlib.sha256(response.read()).hexdigest() == target["sha256"]


def test_rate_limited_path_answers_429_then_the_image(served):
    server, _, records = served
    for _ in range(2):
        status, headers, body = _get(server.base_url + "/fault/busy.jpg")
        assert (status, headers["Retry-After"], body) == (429, "1", b"")
    status, headers, body = _get(server.base_url + "/fault/busy.jpg")
    assert status == 200 and hashlib.sha256(body).hexdigest() == records["/fault/busy.jpg"]["sha256"]


def test_noai_header_slow_endpoint_and_short_read(served):
    server, _, records = served
    status, headers, body = _get(server.base_url + "/img/noai.jpg")
    assert status == 200 and headers["X-Robots-Tag"] == "noai"
    assert hashlib.sha256(body).hexdigest() == records["/img/noai.jpg"]["sha256"]

    result = {}

    def slow_fetch():
        started = time.perf_counter()
        result["response"] = _get(server.base_url + "/slow/photo.jpg")
        result["seconds"] = time.perf_counter() - started

    worker = threading.Thread(target=slow_fetch)
    worker.start()
    started = time.perf_counter()
    assert _get(server.base_url + "/index.html")[0] == 200  # threaded: the slow answer blocks nobody
    assert time.perf_counter() - started < SLOW_SECONDS / 2
    worker.join(timeout=10)
    status, _, body = result["response"]
    assert status == 200 and result["seconds"] >= SLOW_SECONDS
    assert hashlib.sha256(body).hexdigest() == records["/slow/photo.jpg"]["sha256"]

    parts = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request("GET", "/fault/short-read.jpg")
    response = connection.getresponse()
    announced = int(response.headers["Content-Length"])
    with pytest.raises(http.client.IncompleteRead) as error:
        response.read()
    connection.close()
    assert len(error.value.partial) == announced // 2


def test_private_section_is_served_but_disallowed(served):
    server, _, records = served
    private = [r for r in records.values() if r["robots_disallowed"]]
    assert private
    assert _get(server.base_url + private[0]["path"])[0] == 200
    assert _get(server.base_url + private[0]["pages"][0])[0] == 200


def test_stop_closes_the_port_and_bad_site_dir(tmp_path):
    site = render_site(tmp_path / "web", images=2, seed=0)
    server = SiteServer(site.root).start()
    port = int(server.base_url.rsplit(":", 1)[1])
    assert _get(server.base_url + "/index.html")[0] == 200
    assert server.requests == ["/index.html"]
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(GadmsError, match="not a rendered site"):
        SiteServer(tmp_path)
