"""Compose scenes: a textured, cluttered background, 0..n persons of given kinds, lighting and colour jitter.

Person kinds (what the curation rules must keep or reject):
  main       standing, whole, large: passes the size rules at 256×512 (shorter box side > 90 px)
  small      standing, whole, far away: too small for the size rules
  truncated  cut by the image border (a third to a half of the body outside)
  lying      rotated by about 90°: a wide box
The filter's work (NEGATIVE_PLANS: figures the detector passes that the MLLM filter must reject):
  mannequin  a person's shape in one plastic colour, no face, no hair; `identity` None
  statue     the same in stone or bronze on a plinth; `identity` None
  poster     a framed outline drawing of an identity on a paper sheet
  overlapping  two whole, large persons, one half in front of the other
  occluded   a whole, large person behind a board that hides the torso and thighs (box: what is visible)
"""
from __future__ import annotations

import dataclasses
import functools
import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from curation.synthweb.figure import DrawnPerson, draw_person, random_pose
from curation.synthweb.identities import Identity, identity_attributes

TEXTURE_SIZE = (1024, 640)
TEXTURE_BANK_SIZE = 24
# Scene plans and how often the site uses them: (name, weight).
SCENE_PLANS = (
    ("single", 40), ("single_with_small", 10), ("group", 14), ("small_only", 8), ("truncated", 8),
    ("lying", 6), ("empty", 14),
)

NEGATIVE_PLANS = ("mannequin", "overlapping", "poster", "occluded", "statue")
MANNEQUIN_MATERIALS = ((236, 234, 228), (196, 196, 194), (52, 52, 56))  # white, gray and black plastic
STATUE_MATERIALS = ((176, 172, 162), (150, 142, 128), (122, 92, 58))  # granite, sandstone, bronze
POSTER_PAPER = ((246, 243, 232), (232, 226, 208))
POSTER_INK = ((28, 28, 30), (40, 40, 110))


@dataclass
class ScenePerson:
    identity: int | None  # None: a figure that depicts no one (mannequin, statue)
    kind: str
    bbox: tuple[float, float, float, float]
    keypoints: list[tuple[float, float, int]]


@dataclass
class Scene:
    image: Image.Image
    plan: str
    persons: list[ScenePerson] = field(default_factory=list)

    @property
    def main_identity(self) -> int | None:
        """The identity the page's alt text is about: the first whole, large person, else the first person."""
        for person in self.persons:
            if person.kind == "main":
                return person.identity
        return next((p.identity for p in self.persons if p.identity is not None), None)


@functools.lru_cache(maxsize=4)
def texture_bank(seed: int) -> tuple[Image.Image, ...]:
    """Backgrounds to crop scenes from, made once per seed (a few hundred ms)."""
    rng = random.Random(f"synthweb-textures-{seed}")
    np_rng = np.random.default_rng(rng.randrange(2**32))
    makers = (_sky_and_ground, _smooth_noise, _bricks, _tiles, _foliage, _stripes)
    return tuple(makers[i % len(makers)](rng, np_rng) for i in range(TEXTURE_BANK_SIZE))


def _random_colour(rng: random.Random, low: int = 30, high: int = 230) -> tuple[int, int, int]:
    return (rng.randint(low, high), rng.randint(low, high), rng.randint(low, high))


def _noise_overlay(image: Image.Image, np_rng: np.random.Generator, strength: float) -> Image.Image:
    w, h = image.size
    coarse = np_rng.normal(0, strength, (h // 16 + 1, w // 16 + 1, 1)).astype(np.float32)
    coarse = np.asarray(Image.fromarray(coarse[..., 0]).resize((w, h), Image.BILINEAR))[..., None]
    fine = np_rng.normal(0, strength / 3, (h, w, 1)).astype(np.float32)
    pixels = np.asarray(image, dtype=np.float32) + coarse + fine
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _sky_and_ground(rng, np_rng) -> Image.Image:
    w, h = TEXTURE_SIZE
    horizon = rng.randint(h // 4, 3 * h // 4)
    sky_top, sky_bottom, ground = _random_colour(rng, 120, 240), _random_colour(rng, 150, 250), _random_colour(rng)
    t = np.linspace(0, 1, horizon)[:, None]
    sky = (1 - t) * np.array(sky_top) + t * np.array(sky_bottom)
    pixels = np.empty((h, w, 3), np.float32)
    pixels[:horizon] = sky[:, None, :]
    pixels[horizon:] = np.array(ground) * np.linspace(0.8, 1.1, h - horizon)[:, None, None]
    return _noise_overlay(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), np_rng, 10)


def _smooth_noise(rng, np_rng) -> Image.Image:
    w, h = TEXTURE_SIZE
    cells = np_rng.uniform(0, 255, (rng.randint(3, 9), rng.randint(4, 12), 3)).astype(np.uint8)
    return _noise_overlay(Image.fromarray(cells).resize((w, h), Image.BICUBIC), np_rng, 12)


def _bricks(rng, np_rng) -> Image.Image:
    w, h = TEXTURE_SIZE
    mortar, brick = _random_colour(rng, 150, 220), _random_colour(rng, 60, 180)
    image = Image.new("RGB", (w, h), mortar)
    draw = ImageDraw.Draw(image)
    bw, bh = rng.randint(30, 70), rng.randint(14, 30)
    for row, y in enumerate(range(0, h, bh)):
        offset = (row % 2) * bw // 2
        for x in range(-offset, w, bw):
            shade = rng.randint(-20, 20)
            draw.rectangle((x + 2, y + 2, x + bw - 2, y + bh - 2), fill=tuple(max(0, c + shade) for c in brick))
    return _noise_overlay(image, np_rng, 8)


def _tiles(rng, np_rng) -> Image.Image:
    w, h = TEXTURE_SIZE
    a, b = _random_colour(rng), _random_colour(rng)
    image = Image.new("RGB", (w, h), a)
    draw = ImageDraw.Draw(image)
    size = rng.randint(24, 90)
    for y in range(0, h, size):
        for x in range(0, w, size):
            if (x // size + y // size) % 2:
                draw.rectangle((x, y, x + size - 1, y + size - 1), fill=b)
    return _noise_overlay(image, np_rng, 10)


def _foliage(rng, np_rng) -> Image.Image:
    w, h = TEXTURE_SIZE
    image = Image.new("RGB", (w, h), (rng.randint(20, 80), rng.randint(60, 130), rng.randint(20, 70)))
    draw = ImageDraw.Draw(image)
    for _ in range(400):
        x, y, r = rng.randrange(w), rng.randrange(h), rng.randint(6, 30)
        g = rng.randint(70, 200)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(rng.randint(20, g // 2), g, rng.randint(10, g // 2)))
    return _noise_overlay(image, np_rng, 8)


def _stripes(rng, np_rng) -> Image.Image:
    w, h = TEXTURE_SIZE
    image = Image.new("RGB", (w, h), _random_colour(rng))
    draw = ImageDraw.Draw(image)
    vertical = rng.random() < 0.5
    pos = 0
    while pos < (w if vertical else h):
        width = rng.randint(5, 60)
        box = (pos, 0, pos + width, h) if vertical else (0, pos, w, pos + width)
        draw.rectangle(box, fill=_random_colour(rng))
        pos += width
    return _noise_overlay(image, np_rng, 10)


def _background(size: tuple[int, int], rng: random.Random, seed: int) -> Image.Image:
    bank = texture_bank(seed)
    texture = bank[rng.randrange(len(bank))]
    x = rng.randint(0, TEXTURE_SIZE[0] - size[0])
    y = rng.randint(0, TEXTURE_SIZE[1] - size[1])
    image = texture.crop((x, y, x + size[0], y + size[1]))
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


def _clutter(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: random.Random) -> None:
    """Objects that are not persons: boxes, signs, poles, trees, cars, balls."""
    w, h = size
    for _ in range(rng.randint(1, 7)):
        kind = rng.choice(("box", "pole", "tree", "car", "ball", "sign"))
        colour = _random_colour(rng, 10, 245)
        x, y = rng.randrange(w), rng.randrange(h // 3, h)
        if kind == "box":
            bw, bh = rng.randint(15, w // 2), rng.randint(15, h // 4)
            draw.rectangle((x, y - bh, x + bw, y), fill=colour)
        elif kind == "pole":
            pw, ph = rng.randint(3, 12), rng.randint(h // 4, h)
            draw.rectangle((x, y - ph, x + pw, y), fill=colour)
        elif kind == "tree":
            th, r = rng.randint(40, h // 2), rng.randint(20, 60)
            draw.rectangle((x - 5, y - th, x + 5, y), fill=(90, 60, 30))
            draw.ellipse((x - r, y - th - r, x + r, y - th + r), fill=(30, rng.randint(90, 170), 40))
        elif kind == "car":
            cw = rng.randint(60, 200)
            ch = cw // 3
            draw.rounded_rectangle((x, y - ch, x + cw, y), radius=ch // 3, fill=colour)
            for wx in (x + cw // 5, x + 4 * cw // 5):
                draw.ellipse((wx - ch // 3, y - ch // 3, wx + ch // 3, y + ch // 3), fill=(20, 20, 20))
        elif kind == "ball":
            r = rng.randint(5, 30)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            sw, sh = rng.randint(20, 70), rng.randint(15, 40)
            draw.rectangle((x, y - sh - 40, x + sw, y - 40), fill=colour)
            draw.rectangle((x + sw // 2 - 2, y - 40, x + sw // 2 + 2, y), fill=(80, 80, 80))


def _lighting(image: Image.Image, rng: random.Random) -> Image.Image:
    gain = rng.uniform(0.65, 1.25)
    gamma = rng.uniform(0.8, 1.25)
    base = 255.0 * (np.arange(256) / 255.0) ** gamma * gain
    lut = np.concatenate([np.clip(base * rng.uniform(0.88, 1.12), 0, 255) for _ in range(3)])
    image = image.point(lut.astype(np.uint8).tolist())
    if rng.random() < 0.1:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.4)))
    return image


def _place(draw, size, identity: Identity, kind: str, rng: random.Random, x_range: tuple[int, int]) -> DrawnPerson:
    """Draw one person of `kind` with its centre inside `x_range` of the image."""
    w, h = size
    pose = random_pose(rng)
    lo, hi = x_range
    if kind == "main":
        height = rng.uniform(0.7, 0.95) * h
        feet_y = rng.uniform(height + 0.02 * h, h - 2)
        half = 0.2 * height
        x = rng.uniform(lo + min(half, (hi - lo) / 2), hi - min(half, (hi - lo) / 2))
        return draw_person(draw, size, identity, pose, height, (x, feet_y), rng.uniform(-5, 5), rng)
    if kind == "small":
        height = rng.uniform(60, 185)
        x = rng.uniform(lo + 0.2 * height, max(lo + 0.2 * height, hi - 0.2 * height))
        return draw_person(draw, size, identity, pose, height, (x, rng.uniform(height + 2, h - 2)), 0.0, rng)
    if kind == "truncated":
        if rng.random() < 0.6:  # cut at the bottom: a bust or an upper body
            height = rng.uniform(0.8, 1.1) * h
            feet_y = h + rng.uniform(0.35, 0.55) * height
            return draw_person(draw, size, identity, pose, height, ((lo + hi) / 2, feet_y), 0.0, rng)
        height = rng.uniform(0.7, 0.9) * h  # cut at a side: about half the body outside
        offset = rng.uniform(-0.04, 0.08) * height
        x = hi + offset if rng.random() < 0.5 else lo - offset
        return draw_person(draw, size, identity, pose, height, (x, h - 4), 0.0, rng)
    # lying
    height = rng.uniform(0.55, 0.85) * w
    angle = rng.choice((-1, 1)) * rng.uniform(78, 100)
    y = rng.uniform(h * 0.25, h * 0.75)
    # Rotated by ±90°, the feet point sits half a body length to one side of the figure's centre.
    centre_x = w / 2 + rng.uniform(-0.05, 0.05) * w
    feet_x = centre_x - 0.5 * height * math.sin(math.radians(angle))
    return draw_person(draw, size, identity, pose, height, (feet_x, y), angle, rng)


def _standing_height_and_feet(size, rng: random.Random, low: float = 0.7, high: float = 0.95) -> tuple[float, float]:
    """A whole, large standing figure as `_place` draws a main person: its height and feet y."""
    h = size[1]
    height = rng.uniform(low, high) * h
    return height, rng.uniform(height + 0.02 * h, h - 2)


def _shape_of(number: int) -> Identity:
    """Identity `number`'s build and garment shapes, bare of hair and accessories: what a mannequin or statue
    takes from a person."""
    return dataclasses.replace(identity_attributes(number), hair_length="bald", backpack=False, shoulder_bag=False,
                               hat=False, glasses=False)


def _figure(draw, size, rng: random.Random, number: int, statue: bool) -> ScenePerson | None:
    """A mannequin, or a statue on a plinth, in the middle of the image, shaped like identity `number`."""
    w, h = size
    material = rng.choice(STATUE_MATERIALS if statue else MANNEQUIN_MATERIALS)
    pose = random_pose(rng)
    plinth = rng.uniform(0.06, 0.1) * h if statue else 0.0
    height = rng.uniform(0.68, 0.84) * h
    feet_y = rng.uniform(height + 0.02 * h, h - 2 - plinth) if not statue else h - 2 - plinth
    if statue:
        top = tuple(max(0, c - 30) for c in material)
        draw.rectangle((w * 0.2, feet_y - 0.01 * h, w * 0.8, h), fill=top)
    x = rng.uniform(0.42, 0.58) * w
    drawn = draw_person(draw, size, _shape_of(number), pose, height, (x, feet_y), rng.uniform(-3, 3), rng,
                        material=material)
    return ScenePerson(None, "statue" if statue else "mannequin", drawn.bbox, drawn.keypoints) if drawn.bbox else None


def _poster(image: Image.Image, rng: random.Random, number: int) -> ScenePerson | None:
    """A paper sheet in a frame with an outline drawing of identity `number` (edges of a flat rendering)."""
    w, h = image.size
    frame = (rng.randint(8, 30), rng.randint(10, 50))
    sheet_size = (w - 2 * frame[0], rng.randint(int(0.78 * h), h - frame[1] - 10))
    paper, ink = rng.choice(POSTER_PAPER), rng.choice(POSTER_INK)
    sheet = Image.new("RGB", sheet_size, paper)
    height = rng.uniform(0.8, 0.9) * sheet_size[1]
    drawn = draw_person(ImageDraw.Draw(sheet), sheet_size, identity_attributes(number), random_pose(rng), height,
                        (sheet_size[0] / 2, sheet_size[1] - rng.uniform(4, 0.08 * sheet_size[1])), 0.0, rng)
    lines = sheet.convert("L").filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 18 else 0)
    drawing = Image.new("RGB", sheet_size, paper)
    drawing.paste(ink, mask=lines.filter(ImageFilter.MaxFilter(3)))
    draw = ImageDraw.Draw(image)
    border = rng.randint(4, 9)
    x0, y0 = frame
    draw.rectangle((x0 - border, y0 - border, x0 + sheet_size[0] + border, y0 + sheet_size[1] + border),
                   fill=_random_colour(rng, 20, 120))
    image.paste(drawing, frame)
    if drawn.bbox is None:
        return None
    bbox = (drawn.bbox[0] + x0, drawn.bbox[1] + y0, drawn.bbox[2] + x0, drawn.bbox[3] + y0)
    keypoints = [(x + x0, y + y0, v) if v else (x, y, v) for x, y, v in drawn.keypoints]
    return ScenePerson(number, "poster", bbox, keypoints)


def _overlapping(draw, size, rng: random.Random, numbers: list[int]) -> list[ScenePerson]:
    """Two whole, large persons, the second drawn half over the first (their centres 8-16 % of a height apart)."""
    w = size[0]
    height, feet_y = _standing_height_and_feet(size, rng, 0.72, 0.9)
    gap = rng.uniform(0.08, 0.16) * height * rng.choice((-1, 1))
    centre = w / 2 + rng.uniform(-0.04, 0.04) * w
    persons = []
    for number, x in zip(numbers, (centre - gap / 2, centre + gap / 2)):
        drawn = draw_person(draw, size, identity_attributes(number), random_pose(rng), height * rng.uniform(0.95, 1.05),
                            (x, feet_y - rng.uniform(0, 0.03) * size[1]), rng.uniform(-3, 3), rng)
        if drawn.bbox is not None:
            persons.append(ScenePerson(number, "overlapping", drawn.bbox, drawn.keypoints))
    return persons


def _occluded(draw, size, rng: random.Random, number: int) -> ScenePerson | None:
    """A whole, large person with a board in front from the neck to mid-thigh, a little wider than the shoulders:
    head, forearms and lower legs stay visible. Box and keypoint visibility are of what the board leaves."""
    w = size[0]
    height, feet_y = _standing_height_and_feet(size, rng)
    x = rng.uniform(0.4, 0.6) * w
    drawn = draw_person(draw, size, identity_attributes(number), random_pose(rng), height, (x, feet_y), 0.0, rng,
                        silhouette=True)
    top_y = feet_y - height * rng.uniform(0.82, 0.86)  # the neck sits 0.87 of the height above the feet
    board = (round(x - 0.13 * height), round(top_y), round(x + 0.13 * height),
             round(feet_y - height * rng.uniform(0.3, 0.36)))
    draw.rectangle(board, fill=_random_colour(rng, 40, 220), outline=_random_colour(rng, 10, 80), width=3)
    visible = drawn.silhouette
    visible.paste(0, board)
    box = visible.getbbox()
    if box is None:
        return None
    keypoints = [(kx, ky, 1 if v and board[0] <= kx <= board[2] and board[1] <= ky <= board[3] else v)
                 for kx, ky, v in drawn.keypoints]
    return ScenePerson(number, "occluded", tuple(float(v) for v in box), keypoints)


def _render_negative(plan: str, image: Image.Image, rng: random.Random, identities: list[int]) -> list[ScenePerson]:
    draw = ImageDraw.Draw(image)
    numbers = rng.sample(identities, 2)
    if plan in ("mannequin", "statue"):
        person = _figure(draw, image.size, rng, numbers[0], statue=plan == "statue")
    elif plan == "poster":
        person = _poster(image, rng, numbers[0])
    elif plan == "occluded":
        person = _occluded(draw, image.size, rng, numbers[0])
    else:
        return _overlapping(draw, image.size, rng, numbers)
    return [person] if person is not None else []


def render_scene(rng: random.Random, seed: int, identities: list[int], plan: str | None = None) -> Scene:
    """Render one scene. `identities` are the identity numbers to draw persons from (distinct per scene).

    `seed` selects the texture bank; everything else comes from `rng`.
    """
    plan = plan or rng.choices([p for p, _ in SCENE_PLANS], weights=[w for _, w in SCENE_PLANS])[0]
    if plan == "group":
        count = rng.choice((2, 3))
        size = (256 * count, 512)
    elif plan == "lying":
        size = rng.choice(((512, 256), (512, 384)))
    elif plan == "small_only":
        size = rng.choice(((256, 512), (512, 512)))
    else:
        size = (256, 512)
    image = _background(size, rng, seed)
    draw = ImageDraw.Draw(image)
    _clutter(draw, size, rng)
    if plan in NEGATIVE_PLANS:
        persons = _render_negative(plan, image, rng, identities)
        return Scene(_lighting(image, rng), plan, persons)
    w, h = size
    if plan == "single":
        layout = [("main", (0, w))]
    elif plan == "single_with_small":
        layout = [("small", (0, w)) for _ in range(rng.randint(1, 2))] + [("main", (0, w))]
    elif plan == "group":
        layout = [("main", (256 * i, 256 * (i + 1))) for i in range(w // 256)]
    elif plan == "small_only":
        layout = [("small", (0, w)) for _ in range(rng.randint(1, 3))]
    elif plan == "truncated":
        layout = [("truncated", (0, w))]
    elif plan == "lying":
        layout = [("lying", (0, w))]
    else:
        layout = []
    chosen = rng.sample(identities, min(len(layout), len(identities)))
    persons = []
    for (kind, x_range), number in zip(layout, chosen):
        drawn = _place(draw, size, identity_attributes(number), kind, rng, x_range)
        if drawn.bbox is not None:
            persons.append(ScenePerson(number, kind, drawn.bbox, drawn.keypoints))
    return Scene(_lighting(image, rng), plan, persons)


def render_person_crop(identity: int, rng: random.Random, seed: int, size: tuple[int, int]) -> Image.Image:
    """One whole standing person on a scene background, cropped to its box (+4 %) and resized to `size` (w, h),
    like the curation pipeline's crops."""
    image = _background((256, 512), rng, seed)
    draw = ImageDraw.Draw(image)
    _clutter(draw, image.size, rng)
    drawn = _place(draw, image.size, identity_attributes(identity), "main", rng, (0, 256))
    x1, y1, x2, y2 = drawn.bbox
    mx, my = 0.04 * (x2 - x1), 0.04 * (y2 - y1)
    box = (max(0, x1 - mx), max(0, y1 - my), min(256, x2 + mx), min(512, y2 + my))
    return _lighting(image.crop(tuple(round(v) for v in box)).resize(size, Image.BILINEAR), rng)
