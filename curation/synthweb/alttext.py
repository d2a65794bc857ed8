"""Web-like alt text for a rendered person: sometimes a fair description, often noisy.

The alt text is built as (word, is_noise) tokens joined by single spaces, so `AltText.noise_words[i]` labels
`AltText.text.split()[i]`: True when that word is injected noise that does not describe the person (SEO spam,
a wrong colour, a file name, a foreign-language stock phrase, words about the page rather than the person).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from curation.synthweb.identities import COLOURS, Identity, garment_phrases, hair_phrase

SPAM_PHRASES = (
    "buy now", "free shipping", "best price 2024", "sale -50%", "click here", "new collection",
    "top 10 outfits", "cheap deals online", "limited offer", "follow us", "fashion blog", "stock photo",
    "royalty free image", "wallpaper HD", "trending now", "shop the look",
)
FOREIGN_PHRASES = (
    "foto de stock", "moda urbana", "Straßenfotografie", "photo de rue", "街拍 时尚", "ファッション 写真",
    "uliczna moda", "moda di strada", "sokak modası", "фото улицы",
)
FILE_NAMES = ("IMG_4821.JPG", "DSC01234.jpg", "photo (3).png", "image001", "untitled-1", "P1040072.JPG")
SCENE_WORDS = ("beautiful landscape", "city street at night", "abstract background texture", "autumn park",
               "office interior", "colorful pattern", "modern architecture")
# Alt-text styles and how often the web uses them.
STYLES = ("fair", "fair_spam", "wrong_colour", "spam", "foreign", "filename", "empty")
STYLE_WEIGHTS = (20, 25, 15, 15, 10, 5, 10)


@dataclass(frozen=True)
class AltText:
    text: str
    noise_words: tuple[bool, ...]  # one per word of text.split()
    style: str


def make_alt_text(identity: Identity | None, rng: random.Random) -> AltText:
    """Alt text for an image whose main person is `identity` (None: an image without a person, all noise)."""
    if identity is None:
        style = rng.choice(("spam", "scene", "filename", "empty"))
        tokens = {
            "spam": lambda: _phrase_tokens(rng.sample(SPAM_PHRASES, rng.randint(1, 3)), noise=True),
            "scene": lambda: _phrase_tokens([rng.choice(SCENE_WORDS)], noise=True),
            "filename": lambda: _phrase_tokens([rng.choice(FILE_NAMES)], noise=True),
            "empty": lambda: [],
        }[style]()
        return _assemble(tokens, style)
    style = rng.choices(STYLES, weights=STYLE_WEIGHTS)[0]
    if style == "fair":
        tokens = _description(identity, rng, wrong_colours=0)
    elif style == "fair_spam":
        tokens = _description(identity, rng, wrong_colours=0)
        spam = _phrase_tokens(rng.sample(SPAM_PHRASES, rng.randint(1, 2)), noise=True)
        tokens = spam + [("|", True)] + tokens if rng.random() < 0.5 else tokens + [("-", True)] + spam
    elif style == "wrong_colour":
        tokens = _description(identity, rng, wrong_colours=rng.randint(1, 2))
    elif style == "spam":
        tokens = _phrase_tokens(rng.sample(SPAM_PHRASES, rng.randint(2, 4)), noise=True)
    elif style == "foreign":
        tokens = _phrase_tokens([rng.choice(FOREIGN_PHRASES)], noise=True)
        if rng.random() < 0.5:
            tokens += _description(identity, rng, wrong_colours=0)
    elif style == "filename":
        tokens = _phrase_tokens([rng.choice(FILE_NAMES)], noise=True)
    else:
        tokens = []
    return _assemble(tokens, style)


def _description(identity: Identity, rng: random.Random, wrong_colours: int) -> list[tuple[str, bool]]:
    """A short fair description (2-3 attributes); `wrong_colours` of its colour words replaced by wrong ones."""
    top, bottom, shoes = garment_phrases(identity)
    garments = [top, bottom] + ([shoes] if rng.random() < 0.4 else [])
    if rng.random() < 0.3:
        head = [identity.gender, "with", hair_phrase(identity) + ",", "wearing"]
    else:
        head = [rng.choice((f"{identity.gender} in", f"{identity.gender} wearing", f"young {identity.gender} in"))]
    tokens = _phrase_tokens(head, noise=False)
    for i, garment in enumerate(garments):
        if i:
            tokens.append(("and", False) if i == len(garments) - 1 else (",", False))
        tokens += _phrase_tokens([garment], noise=False)
    colour_positions = [i for i, (word, _) in enumerate(tokens) if word in COLOURS]
    for i in rng.sample(colour_positions, min(wrong_colours, len(colour_positions))):
        wrong = rng.choice([c for c in COLOURS if c != tokens[i][0]])
        tokens[i] = (wrong, True)
    return tokens


def _phrase_tokens(phrases: list[str], noise: bool) -> list[tuple[str, bool]]:
    return [(word, noise) for phrase in phrases for word in phrase.split()]


def _assemble(tokens: list[tuple[str, bool]], style: str) -> AltText:
    return AltText(" ".join(w for w, _ in tokens), tuple(n for _, n in tokens), style)
