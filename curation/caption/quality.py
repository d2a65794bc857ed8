"""Checks on a generated caption. Each returns a snake_case reason for the rejects table, or None."""
from __future__ import annotations

import re

from curation.caption.config import QualityConfig
from curation.caption.prompts import Template, normalise_text

# Common English function words: real English captions of a person always contain some.
ENGLISH_FUNCTION_WORDS = frozenset(
    "a an the and or with in on of to is are has have wears wearing his her he she they their "
    "at by for from over under into while who this that its also".split()
)
# Common function words of other languages web alt text is written in (es, de, fr, it, pt).
FOREIGN_FUNCTION_WORDS = frozenset(
    "el la los las una unos con y del por para que der die das und mit ein eine einer im auf le les des et "
    "avec une dans sur il gli della di e com uma em na dos".split()
)
_WORD_RE = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
# Slots the model left unfilled: [colored top], {name}, <placeholder>.
_UNFILLED_RE = re.compile(r"\[[^\[\]]{1,40}\]|\{[^{}]{1,40}\}|<[^<>]{1,40}>")


def unfilled_placeholder(text: str) -> str | None:
    """The first slot the model left unfilled ([colored top], {name}, <placeholder>), or None."""
    found = _UNFILLED_RE.search(text)
    return found.group(0) if found else None


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def _contains_phrase(text_lower: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w'’]){re.escape(phrase.lower())}(?![\w'’])", text_lower) is not None


def not_english(text: str, config: QualityConfig) -> str | None:
    """Why a text is not English (detail), or None: too many non-ASCII letters, or more foreign than English
    function words."""
    letters = [c for c in text if c.isalpha()]
    non_ascii = sum(1 for c in letters if not c.isascii())
    if letters and non_ascii / len(letters) > config.max_non_ascii_letter_ratio:
        return f"{non_ascii} of {len(letters)} letters are not ASCII"
    tokens = [w.lower() for w in words(text)]
    foreign = sum(1 for w in tokens if w in FOREIGN_FUNCTION_WORDS)
    english = sum(1 for w in tokens if w in ENGLISH_FUNCTION_WORDS)
    if foreign > english:
        return f"{foreign} foreign function words against {english} English ones"
    return None


def check_alt_caption(caption: str, config: QualityConfig) -> tuple[str, str] | None:
    """The checks that make sense for cleaned alt text (it follows no template and no prompt rules)."""
    foreign = not_english(caption, config)
    if foreign:
        return "not_english", foreign
    count = len(words(caption))
    if count < config.alt_text_min_words:
        return "too_short", f"{count} words < {config.alt_text_min_words}"
    if count > config.max_words:
        return "too_long", f"{count} words > {config.max_words}"
    return None


def check_caption(caption: str, template: Template | None, config: QualityConfig) -> tuple[str, str] | None:
    """(reason, detail) of the first failed check, or None when the caption passes all of them."""
    text = caption.strip()
    if not text:
        return "empty", "no text"
    lower = text.lower()
    for phrase in config.refusal_phrases:
        if _contains_phrase(lower, phrase):
            return "refusal", f"contains {phrase!r}"
    if template is not None and normalise_text(text) == normalise_text(template.text):
        return "template_copy", f"identical to template {template.id}"
    unfilled = unfilled_placeholder(text)
    if unfilled:
        return "unfilled_placeholder", f"contains {unfilled!r}"
    foreign = not_english(text, config)
    if foreign:
        return "not_english", foreign
    tokens = words(text)
    if len(tokens) < config.min_words:
        return "too_short", f"{len(tokens)} words < {config.min_words}"
    if len(tokens) > config.max_words:
        return "too_long", f"{len(tokens)} words > {config.max_words}"
    function_words = sum(1 for w in tokens if w.lower() in ENGLISH_FUNCTION_WORDS)
    if function_words / len(tokens) < config.min_english_word_ratio:
        return "not_english", f"{function_words} of {len(tokens)} words are English function words"
    for word in config.hedging_words:
        if _contains_phrase(lower, word):
            return "hedging", f"contains {word!r}"
    for word in config.background_words:
        if _contains_phrase(lower, word):
            return "background", f"contains {word!r}"
    return None

