"""Person crops of known identities with clean captions and noisy alt text, for model training and the
noisy-caption experiment."""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from curation.synthweb.alttext import make_alt_text
from curation.synthweb.identities import clean_caption, coarse_caption, described_caption, identity_attributes
from curation.synthweb.scene import render_person_crop


@dataclass
class PersonSample:
    image: Image.Image  # one person, cropped to its box and resized to the requested size
    identity: int
    clean_caption: str
    alt_text: str
    noise_words: tuple[bool, ...]  # one flag per word of alt_text.split(): True = noise, not about the person
    described: str = ""  # this image's own true description (varied wording; see identities.described_caption)
    coarse: str = ""  # gender and colours only (see identities.coarse_caption)


def iter_identity_dataset(
    num_identities: int, images_per_identity: int, seed: int, size: tuple[int, int] = (128, 384),
    first_identity: int = 0,
) -> Iterator[PersonSample]:
    """Yield `images_per_identity` crops of each identity `first_identity ..` in turn (identity-major order).

    Deterministic from `seed`; each image has its own pose, scale, background and lighting. Use disjoint
    `first_identity` ranges for disjoint train/test identities.
    """
    for number in range(first_identity, first_identity + num_identities):
        identity = identity_attributes(number)
        caption = clean_caption(identity)
        for k in range(images_per_identity):
            rng = random.Random(f"synthweb-person-{seed}-{number}-{k}")
            image = render_person_crop(number, rng, seed, size)
            alt = make_alt_text(identity, rng)
            # Its own stream: adding it left every rendered image and alt text as they were.
            described = described_caption(identity, random.Random(f"synthweb-described-{seed}-{number}-{k}"))
            coarse = coarse_caption(identity, random.Random(f"synthweb-coarse-{seed}-{number}-{k}"))
            yield PersonSample(image, number, caption, alt.text, alt.noise_words, described, coarse)


def render_identity_dataset(
    num_identities: int, images_per_identity: int, seed: int, size: tuple[int, int] = (128, 384),
    first_identity: int = 0,
) -> list[PersonSample]:
    """All of `iter_identity_dataset` as a list."""
    return list(iter_identity_dataset(num_identities, images_per_identity, seed, size, first_identity))
