"""A SIMULATED VLM for the synthetic web: no model, a stand-in for `vllm serve Qwen/Qwen2.5-VL-*`, which cannot run
here. It answers the caption stage's own filter and caption requests from the pixels of the crop it receives.

How it sees: at start it cuts every ground-truth person out of the site's images (box grown by the detect stage's
crop margin) and keeps a small colour thumbnail of each. A request's image is matched to the nearest thumbnail;
the match gives the person's identity attributes, kind and neighbours. Nothing in a request tells it the answer:
it never sees a sample id or a URL, only the image and the prompt.

- Filter (a request with a JSON schema or a prompt asking for {"keep": ...}): one_clear_person, or several_people
  (another person as large shares the crop), heavily_occluded (a truncated figure), too_blurry (a far, small
  figure), not_a_person (no rendered person is near the crop).
- Caption (a prompt ending in "Template:\\n<template>"): the template's [slots] filled with the person's true
  attributes; a slot that does not apply (no bag, no hat) is dropped with the words that lead to it.
- Hallucination: with probability `hallucination_rate` per slot, a colour is wrong, the gender is flipped, or an
  absent accessory is invented. Each hallucinated word is logged (JSONL) with the image's sha256, the matched
  person, the caption and the word's position in `caption.split()`: ground truth for noise experiments.
Answers are deterministic for an (image, prompt, seed): a rerun gets the same captions.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from curation.detect.crop import crop_region
from curation.synthweb.aiohttp_server import LoopbackAiohttpServer
from curation.synthweb.identities import COLOURS, HAIR_COLOURS, Identity, hair_phrase, identity_attributes
from curation.synthweb.site import read_ground_truth
from storage.errors import GadmsError

SIMULATED_MODEL_NAME = "synthweb-sim-vlm"
THUMBNAIL_SIZE = (12, 24)  # width, height: coarse enough to ignore a detector's few pixels of box jitter
# Mean absolute difference (0..255) above which a crop shows no rendered person. On a rendered site, crops of its
# persons (boxes jittered by 3 % of their size, JPEG re-encoded) measure at most 17; crops of empty scenes 26 up.
MATCH_LIMIT = 22.0
# Another person "shares the crop" when this share of their box lies inside it and they are at least
# PROMINENT as tall as the matched person.
SHARED_SHARE = 0.4
PROMINENT = 0.6
# Words a dropped slot takes with it when they lead to it ("and carries a [bag]").
LEADING_WORDS = {"a", "an", "and", "with", "carries", "carrying", "holds", "holding", "wears", "wearing", "has",
                 "in", "is", "dressed", "of", "pair", "while", "over"}
GENDER_SLOTS = ("man/woman", "He/She", "he/she", "His/Her", "his/her", "him/her")
INVENTED = {"bag": "backpack", "accessory": "glasses", "headwear": "black hat"}
_OTHER_GENDER = {slot: dict(zip(slot.split("/"), reversed(slot.split("/")))) for slot in GENDER_SLOTS}


@dataclass(frozen=True)
class SitePerson:
    site_path: str
    index: int  # position in the record's persons
    identity: int
    kind: str
    bbox: tuple[float, float, float, float]
    region: tuple[int, int, int, int]  # the crop the detect stage would cut


@dataclass(frozen=True)
class Match:
    person: SitePerson
    distance: float
    neighbours: tuple[SitePerson, ...]  # the other persons of the same image


def thumbnail(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize(THUMBNAIL_SIZE, Image.Resampling.BILINEAR), dtype=np.float32)


class PersonIndex:
    """Thumbnails of every ground-truth person of a rendered site, for nearest-neighbour lookup."""

    def __init__(self, site_dir: str | Path, crop_margin: float = 0.05):
        site_dir = Path(site_dir)
        self.persons: list[SitePerson] = []
        self.by_image: dict[str, list[SitePerson]] = {}
        thumbnails = []
        for where, record in read_ground_truth(site_dir):
            file = site_dir / "www" / record["path"].lstrip("/")
            if not record["persons"] or record.get("fault") or not file.is_file():
                continue
            with Image.open(file) as image:
                image = image.convert("RGB")
                for index, person in enumerate(record["persons"]):
                    try:
                        bbox = tuple(person["bbox"])
                        entry = SitePerson(record["path"], index, int(person["identity"]), str(person["kind"]), bbox,
                                           crop_region(bbox, image.size, crop_margin))
                    except (KeyError, TypeError, ValueError) as exc:
                        raise GadmsError(f"{where}: person {index}: needs bbox, identity and kind ({exc!r})") from None
                    self.persons.append(entry)
                    self.by_image.setdefault(record["path"], []).append(entry)
                    thumbnails.append(thumbnail(image.crop(entry.region)))
        if not self.persons:
            raise GadmsError(f"{site_dir / 'ground_truth.jsonl'}: the site has no rendered persons to recognise")
        self.thumbnails = np.stack(thumbnails)

    def match(self, image: Image.Image) -> Match | None:
        distances = np.abs(self.thumbnails - thumbnail(image)[None]).mean(axis=(1, 2, 3))
        best = int(np.argmin(distances))
        if distances[best] > MATCH_LIMIT:
            return None
        person = self.persons[best]
        others = tuple(p for p in self.by_image[person.site_path] if p.index != person.index)
        return Match(person, float(distances[best]), others)


def verdict(match: Match | None) -> dict:
    """What a careful VLM says about the crop of the matched person."""
    if match is None:
        return {"keep": False, "reason": "not_a_person"}
    person = match.person
    if person.kind == "truncated":
        return {"keep": False, "reason": "heavily_occluded"}
    if person.kind == "small":
        return {"keep": False, "reason": "too_blurry"}
    height = person.bbox[3] - person.bbox[1]
    for other in match.neighbours:
        if _share_inside(other.bbox, person.region) >= SHARED_SHARE and other.bbox[3] - other.bbox[1] >= PROMINENT * height:
            return {"keep": False, "reason": "several_people"}
    return {"keep": True, "reason": "one_clear_person"}


def _share_inside(box, region) -> float:
    x1, y1, x2, y2 = box
    w = max(0.0, min(x2, region[2]) - max(x1, region[0]))
    h = max(0.0, min(y2, region[3]) - max(y1, region[1]))
    area = (x2 - x1) * (y2 - y1)
    return w * h / area if area > 0 else 0.0


def true_fills(identity: Identity, kind: str, template: str) -> dict[str, str | None]:
    """Slot → the person's true words in this template (None: the slot does not apply to this person).

    The figure wears one top: it fills [colored outerwear] when the template has no [colored top] slot (or the
    top is a jacket or coat, and then [colored top] is left out), and [colored dress] becomes top with bottom."""
    man = identity.gender == "man"
    top = f"{identity.top_colour} {identity.top_type}"
    bottom = f"{identity.bottom_colour} {identity.bottom_type}"
    has_top_slot = "[colored top]" in template
    outerwear_slot = "[colored outerwear]" in template
    is_outerwear = identity.top_type in ("jacket", "coat")
    bag = "backpack" if identity.backpack else "shoulder bag" if identity.shoulder_bag else None
    bald = identity.hair_length == "bald"
    hairstyle = hair_phrase(identity) if "[hair color]" not in template or bald else f"{identity.hair_length} hair"
    return {
        "man/woman": identity.gender, "He/She": "He" if man else "She", "he/she": "he" if man else "she",
        "His/Her": "His" if man else "Her", "his/her": "his" if man else "her", "him/her": "him" if man else "her",
        "age group": "adult",
        "colored top": None if outerwear_slot and is_outerwear else top,
        "colored bottom": bottom,
        "colored outerwear": top if is_outerwear or not has_top_slot else None,
        "colored dress": f"{top} with {bottom}",
        "colored shoes": f"{identity.shoe_colour} shoes",
        "hairstyle": hairstyle,
        "hair color": None if bald else identity.hair_colour,
        "headwear": f"{identity.hat_colour} hat" if identity.hat else None,
        "accessory": "glasses" if identity.glasses else None,
        "bag": bag,
        "action": "lying" if kind == "lying" else "standing",
        "body build": "broad-shouldered" if identity.build > 1.06 else "slim",
    }


def _hallucinate(slot: str, fill: str | None, identity: Identity, rng: random.Random) -> tuple[str, str] | None:
    """A wrong fill for `slot` and the word that is wrong, or None when this slot has no plausible mistake."""
    if slot in GENDER_SLOTS and fill is not None:
        word = _OTHER_GENDER[slot][fill]
        return word, word
    if fill is None and slot in INVENTED:
        return INVENTED[slot], INVENTED[slot].split()[-1]
    if fill is not None and (slot.startswith("colored") or slot == "hair color"):
        colour = fill.split()[0]
        palette = HAIR_COLOURS if slot == "hair color" else COLOURS
        wrong = rng.choice([c for c in palette if c != colour])
        return " ".join([wrong] + fill.split()[1:]), wrong
    return None


def fill_caption(template: str, identity: Identity, kind: str, rng: random.Random,
                 hallucination_rate: float) -> tuple[str, list[dict]]:
    """The template filled with the identity's attributes; returns (caption, hallucinated words)."""
    fills = true_fills(identity, kind, template)
    text, hallucinated, last = "", [], 0
    for slot_match in re.finditer(r"\[([^\[\]]+)\]", template):
        text += template[last:slot_match.start()]
        last = slot_match.end()
        slot = slot_match.group(1)
        fill = fills.get(slot, None)
        wrong = _hallucinate(slot, fill, identity, rng) if rng.random() < hallucination_rate else None
        if wrong is not None:
            fill, word = wrong
            offset = fill.split().index(word)
            hallucinated.append({"slot": slot, "word": word, "truth": fills.get(slot),
                                 "word_index": len(text.split()) + offset})
        if fill is None:
            text = _drop_leading_words(text)
        else:
            text += fill
    text += template[last:]
    text = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)  # "a orange" → "an orange": same word count
    # A dropped first slot leaves ", the woman ...": strip it, capitalise, and re-read the logged words.
    words_before = len(text.split())
    text = text.lstrip(" ,;")
    text = text[:1].upper() + text[1:]
    shift, words = words_before - len(text.split()), text.split()
    for entry in hallucinated:
        entry["word_index"] -= shift
        entry["word"] = words[entry["word_index"]].strip(".,;")
    return text, hallucinated


def _drop_leading_words(text: str) -> str:
    words = text.rstrip().split(" ")
    while words and words[-1].lower() in LEADING_WORDS:
        words.pop()
    return " ".join(words)


class SimulatedVlm:
    """The answering part, with no HTTP: `answer(prompt, jpeg, seed, wants_verdict) -> str`."""

    def __init__(self, site_dir: str | Path, hallucination_rate: float = 0.0, log_path: str | Path | None = None,
                 crop_margin: float = 0.05):
        if not 0.0 <= hallucination_rate <= 1.0:
            raise GadmsError(f"hallucination rate must lie in [0, 1], got {hallucination_rate}")
        self.index = PersonIndex(site_dir, crop_margin)
        self.hallucination_rate = hallucination_rate
        self.log_path = Path(log_path) if log_path else None
        self._log_lock = threading.Lock()

    def answer(self, prompt: str, jpeg: bytes | None, seed: int, wants_verdict: bool) -> str:
        if jpeg is None:
            raise GadmsError("the simulated VLM answers requests about an image only")
        try:
            with Image.open(io.BytesIO(jpeg)) as image:
                match = self.index.match(image)
        except OSError as exc:
            raise GadmsError(f"the request's image cannot be decoded: {exc}") from None
        if wants_verdict:
            return json.dumps(verdict(match))
        if "Template:" not in prompt:
            raise GadmsError("a caption request must end with 'Template:' and the template")
        template = prompt.rsplit("Template:", 1)[1].strip()
        if match is None:
            return "No person is visible."
        image_sha256 = hashlib.sha256(jpeg).hexdigest()
        rng = random.Random(f"{image_sha256}:{seed}:{template}")
        person = match.person
        caption, hallucinated = fill_caption(template, identity_attributes(person.identity), person.kind, rng,
                                             self.hallucination_rate)
        self._log(caption, hallucinated, image_sha256, person)
        return caption

    def _log(self, caption: str, hallucinated: list[dict], image_sha256: str, person: SitePerson) -> None:
        if self.log_path is None or not hallucinated:
            return
        lines = "".join(json.dumps({"image_sha256": image_sha256, "site_path": person.site_path,
                                    "person": person.index, "identity": person.identity, "caption": caption,
                                    **word}) + "\n" for word in hallucinated)
        with self._log_lock, self.log_path.open("a", encoding="utf-8") as handle:
            handle.write(lines)


def read_hallucination_log(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class SimulatedVlmServer(LoopbackAiohttpServer):
    """The simulated VLM behind the OpenAI protocol on 127.0.0.1 (GET /v1/models, POST /v1/chat/completions),
    as `vllm serve` exposes it, in a thread of its own: `SimulatedVlmServer(vlm).start()`, `.base_url`, `.stop()`."""

    thread_name = "synthweb-sim-vlm"

    def __init__(self, vlm: SimulatedVlm, model_name: str = SIMULATED_MODEL_NAME, latency_s: float = 0.0):
        super().__init__()
        self.vlm = vlm
        self.model_name = model_name
        self.latency_s = latency_s
        self.requests = 0

    async def _models(self, request):
        from aiohttp import web

        return web.json_response({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "owned_by": "synthweb-simulation"}]})

    async def _chat(self, request):
        import asyncio

        from aiohttp import web

        self.requests += 1
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the request body is not JSON")
        if not isinstance(body, dict) or body.get("model") != self.model_name:
            model = body.get("model") if isinstance(body, dict) else None
            return _error(404, f"The model `{model}` does not exist.")
        try:
            prompt, jpeg = prompt_and_image(body)
            wants_verdict = is_verdict_request(body, prompt)
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            text = await asyncio.to_thread(self.vlm.answer, prompt, jpeg, int(body.get("seed") or 0), wants_verdict)
        except GadmsError as exc:
            return _error(400, str(exc))
        return web.json_response({
            "id": f"chatcmpl-sim-{self.requests}", "object": "chat.completion", "model": self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                      "total_tokens": len(prompt.split()) + len(text.split())},
        })

    def _app(self):
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app


def _error(status: int, message: str):
    from aiohttp import web

    return web.json_response({"error": {"message": message, "code": status}}, status=status)


def is_verdict_request(body: dict, prompt: str) -> bool:
    """A filter request: constrained to a JSON schema, or a prompt asking for the {"keep": ...} answer."""
    return any(k in body for k in ("structured_outputs", "guided_json", "response_format")) or '{"keep"' in prompt


def prompt_and_image(body: dict) -> tuple[str, bytes | None]:
    """The text parts of the chat messages, and the first image (a base64 data URL) decoded."""
    import base64
    import binascii

    texts, image = [], None
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for part in parts:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url" and image is None:
                url = str((part.get("image_url") or {}).get("url", ""))
                if not url.startswith("data:image/") or "," not in url:
                    raise GadmsError("the simulated VLM reads images sent as base64 data URLs only")
                try:
                    image = base64.b64decode(url.split(",", 1)[1], validate=True)
                except binascii.Error:
                    raise GadmsError("the image data URL is not valid base64") from None
    return "\n".join(texts), image
