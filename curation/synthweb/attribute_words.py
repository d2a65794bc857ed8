"""Judge a caption's attribute words against the identity the figure was drawn as.

Attribute words: gender words (man, woman, he, she, his, her, him), colours (judged with the garment or hair they
describe when one follows within three words, else against every colour the figure wears), garment types, hair
length (short, long, bald, shaved) and accessories (backpack, bag, glasses, hat). Other words are not judged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from curation.synthweb.identities import BOTTOM_TYPES, COLOURS, HAIR_COLOURS, TOP_TYPES, Identity

GENDER_WORDS = {"man": "man", "he": "man", "his": "man", "him": "man",
                "woman": "woman", "she": "woman", "her": "woman"}
COLOUR_WORDS = frozenset(COLOURS) | frozenset(HAIR_COLOURS)
COLOURED_NOUNS = frozenset(TOP_TYPES) | frozenset(BOTTOM_TYPES) | {"shoes", "hat", "hair"}
COLOUR_REACH = 3  # "red t-shirt", "long brown hair", "red and white shoes" → at most three words on
_WORD_RE = re.compile(r"[a-z]+(?:-[a-z]+)*")


@dataclass(frozen=True)
class Judgement:
    right: int
    wrong: list[str]  # the wrong words, in caption order

    @property
    def judged(self) -> int:
        return self.right + len(self.wrong)


def _colour_of(noun: str, identity: Identity) -> str | None:
    if noun in TOP_TYPES:
        return identity.top_colour
    if noun in BOTTOM_TYPES:
        return identity.bottom_colour
    if noun == "shoes":
        return identity.shoe_colour
    if noun == "hat":
        return identity.hat_colour if identity.hat else None
    return identity.hair_colour if identity.hair_length != "bald" else None


def _worn_colours(identity: Identity) -> set[str]:
    colours = {identity.top_colour, identity.bottom_colour, identity.shoe_colour}
    if identity.hat:
        colours.add(identity.hat_colour)
    if identity.hair_length != "bald":
        colours.add(identity.hair_colour)
    return colours


def _is_right(words: list[str], k: int, identity: Identity) -> bool | None:
    """Whether words[k] is true of `identity`; None when it is no attribute word."""
    word = words[k]
    following = words[k + 1:k + 1 + COLOUR_REACH]
    if word in GENDER_WORDS:
        return GENDER_WORDS[word] == identity.gender
    if word in COLOUR_WORDS:
        noun = next((w for w in following if w in COLOURED_NOUNS), None)
        return word in _worn_colours(identity) if noun is None else word == _colour_of(noun, identity)
    if word in TOP_TYPES:
        return word == identity.top_type
    if word in BOTTOM_TYPES:
        return word == identity.bottom_type
    if word in ("short", "long") and "hair" in following[:2]:
        return word == identity.hair_length
    if word in ("bald", "shaved"):
        return identity.hair_length == "bald"
    if word == "backpack":
        return identity.backpack
    if word == "bag":
        if k > 0 and words[k - 1] == "shoulder":
            return identity.shoulder_bag
        return identity.backpack or identity.shoulder_bag
    if word == "glasses":
        return identity.glasses
    if word == "hat":
        return identity.hat
    return None


def judge_caption(caption: str, identity: Identity) -> Judgement:
    words = _WORD_RE.findall(caption.lower())
    right, wrong = 0, []
    for k, word in enumerate(words):
        verdict = _is_right(words, k, identity)
        if verdict is True:
            right += 1
        elif verdict is False:
            wrong.append(word)
    return Judgement(right, wrong)
