"""The alt-text backend's cleaner: page alt text → a caption, removing junk and never adding words.

Web alt text is noisy: SEO keyword lists, shop slogans, file names, URLs, hashtags, other languages. The
cleaner drops such pieces and keeps the rest verbatim (tidied); whatever is left may still fail
`quality.check_alt_caption` (not English, too short or long), which rejects the sample with its reason.
"""
from __future__ import annotations

import html
import re

from curation.caption.quality import words

SPAM_PHRASES = (
    "buy now", "buy online", "shop now", "shop the look", "order now", "click here", "free shipping",
    "free download", "best price", "cheap", "deals online", "discount", "sale", "deals", "coupon", "promo",
    "limited offer", "new collection", "new arrivals", "trending now", "top 10", "outfit ideas", "outfits",
    "fashion blog", "stock photo", "stock image", "royalty free", "royalty-free", "image", "wallpaper", "hd", "4k",
    "1080p", "download", "subscribe", "follow us", "copyright", "all rights reserved", "getty images",
    "shutterstock", "istock", "alamy", "untitled",
)
_SPAM_RE = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in SPAM_PHRASES) + r")(?!\w)", re.IGNORECASE)
_SEPARATORS_RE = re.compile(r"\s*(?:\||•|·|»|«|;|\s-\s|\s–\s|\s—\s|::|/{2,}|\n)\s*")
_URL_RE = re.compile(r"(?:https?://|www\.)\S+|\S+@\S+\.\w+", re.IGNORECASE)
_FILE_RE = re.compile(
    r"[\w()-]+(?: \(\d+\))?\.(?:jpe?g|png|gif|webp|bmp|tiff?)\b|\b(?:img|dsc|dscn|pxl|p|image)[_-]?\d+\b", re.I
)
_PERCENT_RE = re.compile(r"[-+]?\d+\s*%")
_TAG_RE = re.compile(r"<[^>]*>|[#@]\w+")
_NUMBER_RE = re.compile(r"\b\d{3,}\b")
_REPEAT_RE = re.compile(r"\b(\w+)(?:\s+\1\b)+", re.IGNORECASE)


def _is_keyword_list(segment: str) -> bool:
    """"red dress, summer, fashion, women, style": four or more short comma-separated items."""
    items = [item.strip() for item in segment.split(",") if item.strip()]
    return len(items) >= 4 and all(len(item.split()) <= 3 for item in items)


def clean_alt_text(alt_text: str) -> str:
    """The alt text without junk; "" when nothing is left."""
    text = html.unescape(alt_text or "")
    text = _TAG_RE.sub(" ", text)
    text = _URL_RE.sub(" ", text)
    text = _FILE_RE.sub(" ", text)
    kept: list[str] = []
    seen: set[str] = set()
    for segment in _SEPARATORS_RE.split(text):
        if _is_keyword_list(segment):
            continue
        segment = _SPAM_RE.sub(" ", _PERCENT_RE.sub(" ", segment))
        segment = _NUMBER_RE.sub(" ", segment)
        segment = re.sub(r"[_*~^=+<>{}\[\]]+", " ", segment)
        # Words in other scripts or with accents are not part of an English description.
        segment = " ".join(w for w in segment.split() if all(c.isascii() for c in w))
        segment = re.sub(r"\s+([,.:;!?])", r"\1", _REPEAT_RE.sub(r"\1", segment)).strip(" ,.:!?-")
        key = segment.lower()
        if not words(segment) or key in seen:
            continue
        seen.add(key)
        kept.append(segment)
    if not kept:
        return ""
    sentence = ". ".join(kept)
    return sentence[0].upper() + sentence[1:] + ("" if sentence[-1] in ".!?" else ".")

