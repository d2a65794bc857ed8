"""Identities of the synthetic web: a fixed set of visual attributes per identity number, and its clean caption.

An identity's attributes depend on its number only (not on a site's seed), so identity 7 looks the same in every
rendered site and dataset; pick disjoint number ranges for disjoint train/test identities.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

# Colour name → base RGB. Rendered colours are jittered around these per image.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 35),
    "blue": (35, 70, 200),
    "navy": (25, 35, 90),
    "green": (40, 150, 60),
    "yellow": (235, 205, 40),
    "orange": (240, 130, 30),
    "pink": (240, 140, 180),
    "purple": (120, 50, 150),
    "brown": (110, 70, 40),
    "beige": (215, 195, 155),
    "gray": (128, 128, 128),
    "black": (25, 25, 28),
    "white": (240, 240, 236),
}
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 18, 18),
    "brown": (90, 55, 30),
    "blonde": (225, 190, 110),
    "gray": (165, 165, 165),
    "red": (165, 65, 30),
}
SKIN_TONES = [(245, 215, 190), (225, 185, 150), (195, 145, 105), (150, 100, 70), (100, 65, 45)]
TOP_TYPES = ("t-shirt", "shirt", "jacket", "coat")  # t-shirt: short sleeves; coat: long, to mid-thigh
BOTTOM_TYPES = ("trousers", "shorts", "skirt")
SHOE_COLOURS = ("black", "white", "brown", "gray", "red", "blue")
HAIR_LENGTHS = ("short", "long", "bald")


@dataclass(frozen=True)
class Identity:
    number: int
    gender: str  # "man" or "woman": the presentation the figure is drawn and captioned with
    hair_length: str
    hair_colour: str
    skin: tuple[int, int, int]
    top_type: str
    top_colour: str
    bottom_type: str
    bottom_colour: str
    shoe_colour: str
    backpack: bool
    shoulder_bag: bool
    hat: bool
    hat_colour: str
    glasses: bool
    build: float  # shoulder width factor


def identity_attributes(number: int) -> Identity:
    """The attributes of identity `number` (a pure function of the number)."""
    rng = random.Random(f"synthweb-identity-{number}")
    gender = rng.choice(("man", "woman"))
    if gender == "man":
        hair_length = rng.choices(HAIR_LENGTHS, weights=(8, 1, 1))[0]
        bottom_type = rng.choices(BOTTOM_TYPES, weights=(4, 1, 0))[0]
    else:
        hair_length = rng.choices(HAIR_LENGTHS, weights=(2, 8, 0))[0]
        bottom_type = rng.choices(BOTTOM_TYPES, weights=(3, 1, 2))[0]
    top_colour = rng.choice(list(COLOURS))
    bottom_colour = rng.choice([c for c in COLOURS if c != top_colour])
    backpack = rng.random() < 0.3
    return Identity(
        number=number,
        gender=gender,
        hair_length=hair_length,
        hair_colour=rng.choice(list(HAIR_COLOURS)),
        skin=rng.choice(SKIN_TONES),
        top_type=rng.choice(TOP_TYPES),
        top_colour=top_colour,
        bottom_type=bottom_type,
        bottom_colour=bottom_colour,
        shoe_colour=rng.choice(SHOE_COLOURS),
        backpack=backpack,
        shoulder_bag=not backpack and rng.random() < 0.25,
        hat=rng.random() < 0.2,
        hat_colour=rng.choice(("black", "white", "red", "blue", "beige", "green")),
        glasses=rng.random() < 0.25,
        build=rng.uniform(0.92, 1.12) + (0.06 if gender == "man" else 0.0),
    )


def hair_phrase(identity: Identity) -> str:
    if identity.hair_length == "bald":
        return "a shaved head"
    return f"{identity.hair_length} {identity.hair_colour} hair"


def garment_phrases(identity: Identity) -> tuple[str, str, str]:
    """(top, bottom, shoes) noun phrases with their colours, e.g. ("a red t-shirt", "blue trousers", "white shoes")."""
    top = f"{_article(identity.top_colour)} {identity.top_colour} {identity.top_type}"
    if identity.bottom_type == "skirt":
        bottom = f"{_article(identity.bottom_colour)} {identity.bottom_colour} skirt"
    else:
        bottom = f"{identity.bottom_colour} {identity.bottom_type}"
    return top, bottom, f"{identity.shoe_colour} shoes"


def accessory_phrases(identity: Identity) -> list[str]:
    items = []
    if identity.backpack:
        items.append("carrying a backpack")
    if identity.shoulder_bag:
        items.append("carrying a shoulder bag")
    if identity.hat:
        items.append(f"wearing {_article(identity.hat_colour)} {identity.hat_colour} hat")
    if identity.glasses:
        items.append("wearing glasses")
    return items


def _pronoun(identity: Identity) -> str:
    return "He" if identity.gender == "man" else "She"


def _accessory_sentence(identity: Identity, accessories: list[str]) -> str:
    """The sentence that follows a description, e.g. ' He is carrying a backpack and wearing glasses.' ('' for none)."""
    return f" {_pronoun(identity)} is " + " and ".join(accessories) + "." if accessories else ""


def clean_caption(identity: Identity) -> str:
    """The ground-truth description of what the renderer draws for this identity."""
    top, bottom, shoes = garment_phrases(identity)
    text = f"A {identity.gender} with {hair_phrase(identity)}, wearing {top}, {bottom} and {shoes}."
    return text + _accessory_sentence(identity, accessory_phrases(identity))


def described_caption(identity: Identity, rng: random.Random) -> str:
    """One annotator's true description of one image of `identity`: a varied sentence structure and attribute
    order, shoes, hair and accessories sometimes left out, as real benchmarks have a caption per image."""
    top, bottom, shoes = garment_phrases(identity)
    pronoun = _pronoun(identity)
    person = rng.choice((f"a {identity.gender}", f"the {identity.gender}", f"this {identity.gender}",
                         f"a young {identity.gender}"))
    verb = rng.choice(("wearing", "dressed in", "in"))
    garments = [top, bottom] + ([shoes] if rng.random() < 0.5 else [])
    if rng.random() < 0.3:
        garments = [garments[1], garments[0]] + garments[2:]
    worn = ", ".join(garments[:-1]) + " and " + garments[-1]
    hair = hair_phrase(identity)
    structure = rng.randrange(4)
    if structure == 0:
        text = f"{person} with {hair}, {verb} {worn}."
    elif structure == 1:
        text = f"{person} {verb} {worn}. {pronoun} has {hair}."
    elif structure == 2:
        text = f"{pronoun} is {verb if verb != 'in' else 'wearing'} {worn}."
    else:
        text = f"{person} {verb} {worn}."
    text += _accessory_sentence(identity, [a for a in accessory_phrases(identity) if rng.random() < 0.7])
    return text[0].upper() + text[1:]


def coarse_caption(identity: Identity, rng: random.Random) -> str:
    """What a web-scale CLIP knows of a person photo: the gender and the colours worn, in either order, but not
    which garment has which colour, nor hair, garment types, shoes or accessories (the demo CLIP's captions)."""
    colours = [identity.top_colour, identity.bottom_colour]
    rng.shuffle(colours)
    opening = rng.choice(("a photo of a", "a", "a picture of a"))
    return f"{opening} {identity.gender} in {colours[0]} and {colours[1]}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
