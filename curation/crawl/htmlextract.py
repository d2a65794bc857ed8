"""What a crawler takes from an HTML page: images (best candidate, alt text), links, and the page's robots meta.

The standard library's tolerant HTMLParser is enough: we read attributes of a few tags, never the DOM.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urldefrag, urljoin

_SPACES = re.compile(r"\s+")
# Lazy-loading libraries keep the real image here while `src` holds a placeholder.
_LAZY_SRC_ATTRS = ("data-src", "data-lazy-src", "data-original")
_LAZY_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset")


@dataclass(frozen=True)
class SrcsetCandidate:
    url: str
    width: int | None = None  # "640w"
    density: float | None = None  # "2x"


def parse_srcset(value: str) -> list[SrcsetCandidate]:
    """Candidates of a srcset attribute, following the HTML standard's algorithm (URLs may contain commas)."""
    candidates: list[SrcsetCandidate] = []
    pos, end = 0, len(value)
    while True:
        while pos < end and (value[pos].isspace() or value[pos] == ","):
            pos += 1
        if pos >= end:
            return candidates
        start = pos
        while pos < end and not value[pos].isspace():
            pos += 1
        url, descriptors = value[start:pos], ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            start, depth = pos, 0
            while pos < end and not (value[pos] == "," and depth == 0):
                depth += {"(": 1, ")": -1}.get(value[pos], 0)
                pos += 1
            descriptors = value[start:pos]
            pos += 1
        width, density = None, None
        for token in descriptors.split():
            try:
                if token.endswith("w"):
                    width = int(token[:-1])
                elif token.endswith("x"):
                    density = float(token[:-1])
            except ValueError:
                pass
        if url:
            candidates.append(SrcsetCandidate(url, width, density))


def best_srcset_url(value: str) -> str | None:
    """The largest candidate: by width descriptor when any has one, else by pixel density (default 1x)."""
    candidates = parse_srcset(value)
    if not candidates:
        return None
    if any(c.width for c in candidates):
        return max(candidates, key=lambda c: c.width or 0).url
    return max(candidates, key=lambda c: c.density or 1.0).url


@dataclass
class PageContent:
    images: list[tuple[str, str]] = field(default_factory=list)  # (absolute URL, alt text), page order
    links: list[str] = field(default_factory=list)  # absolute, without fragment
    robots_directives: set[str] = field(default_factory=set)  # from <meta name="robots"> or our token


class _PageParser(HTMLParser):
    def __init__(self, page_url: str, product_token: str):
        super().__init__(convert_charrefs=True)
        self.base = page_url
        self.base_seen = False
        self.product_token = product_token.lower()
        self.content = PageContent()

    def _absolute(self, url: str | None) -> str | None:
        if not url or not url.strip():
            return None
        absolute = urldefrag(urljoin(self.base, url.strip()))[0]
        return absolute if absolute.startswith(("http://", "https://")) else None

    def handle_starttag(self, tag: str, attr_list: list[tuple[str, str | None]]) -> None:
        attrs = {name: value or "" for name, value in attr_list}
        if tag == "base" and not self.base_seen and attrs.get("href"):
            self.base = urljoin(self.base, attrs["href"])
            self.base_seen = True
        elif tag == "img":
            self._image(attrs)
        elif tag in ("a", "area") or (tag == "link" and "next" in attrs.get("rel", "").lower().split()):
            if "nofollow" not in attrs.get("rel", "").lower().split():
                link = self._absolute(attrs.get("href"))
                if link:
                    self.content.links.append(link)
        elif tag == "meta" and attrs.get("name", "").lower() in ("robots", self.product_token):
            self.content.robots_directives |= {d.strip().lower() for d in attrs.get("content", "").split(",")}

    def _image(self, attrs: dict[str, str]) -> None:
        candidates = [best_srcset_url(attrs[a]) for a in ("srcset", *_LAZY_SRCSET_ATTRS) if attrs.get(a)]
        candidates += [attrs.get(a) for a in (*_LAZY_SRC_ATTRS, "src")]
        for candidate in candidates:
            url = self._absolute(candidate)
            if url:
                alt = _SPACES.sub(" ", attrs.get("alt") or attrs.get("title") or "").strip()
                self.content.images.append((url, alt))
                return


def extract_page(html: str, page_url: str, product_token: str) -> PageContent:
    parser = _PageParser(page_url, product_token)
    parser.feed(html)
    parser.close()
    return parser.content
