"""A SIMULATED VLM for the synthetic web: no model, a stand-in for `vllm serve Qwen/Qwen2.5-VL-*`, which cannot run
here. It answers the caption stage's own filter and caption requests from the pixels of the crop it receives.

How it sees: at start it cuts every ground-truth figure out of the site's images (box grown by the detect stage's
crop margin), persons and the figures that only look like one (mannequins, statues, posters), and the union of
persons that share their crops (one box a detector may draw around them), and keeps a small colour thumbnail of
each. A request's image is matched to the nearest thumbnail; the match gives the figure's
identity attributes, kind and the verdict a careful VLM gives its crop. Nothing in a request tells it the answer:
it never sees a sample id or a URL, only the image and the prompt.

- Filter (a request with a JSON schema or a prompt asking for {"keep": ...}): the matched figure's verdict
  (curation.synthweb.verdicts): one_clear_person, or several_people (another person as large shares the crop),
  heavily_occluded (truncated or hidden behind a board), too_blurry (a far, small figure), mannequin (a
  mannequin or a statue), drawing_or_render (a poster); not_a_person when no rendered figure is near the crop.
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
from curation.synthweb.verdicts import KEEP
from storage.errors import GadmsError
from storage.jsonl import read_jsonl

SIMULATED_MODEL_NAME = "synthweb-sim-vlm"
THUMBNAIL_SIZE = (12, 24)  # width, height: coarse enough to ignore a detector's few pixels of box jitter
# Mean absolute difference (0..255) above which a crop shows no rendered person. On a rendered site, crops of its
# persons (boxes jittered by 3 % of their size, JPEG re-encoded) measure at most 17; crops of empty scenes 26 up.
MATCH_LIMIT = 22.0
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
    identity: int | None  # None: a figure that depicts no one
    kind: str
    expected_verdict: str


@dataclass(frozen=True)
class Match:
    person: SitePerson
    distance: float


def thumbnail(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize(THUMBNAIL_SIZE, Image.Resampling.BILINEAR), dtype=np.float32)


class PersonIndex:
    """Thumbnails of every ground-truth figure of a rendered site, for nearest-neighbour lookup."""

    def __init__(self, site_dir: str | Path, crop_margin: float = 0.05):
        site_dir = Path(site_dir)
        self.persons: list[SitePerson] = []
        thumbnails = []
        payloads = _payload_files(site_dir)
        for where, record in read_ground_truth(site_dir):
            path = record["path"]
            # A fault URL that still answers with an image (slow, 429 then 200, a short read) serves a payload
            # file; the others never deliver a whole image.
            served = payloads.get(path) or (None if record.get("fault") else path)
            file = site_dir / "www" / str(served).lstrip("/")
            if not record["persons"] or served is None or not file.is_file():
                continue
            with Image.open(file) as image:
                image = image.convert("RGB")
                for index, person in enumerate(record["persons"]):
                    if "expected_verdict" not in person:
                        raise GadmsError(f"{where}: a person lacks expected_verdict; the site was rendered by an "
                                         "older version, render it again")
                    try:
                        identity = person["identity"]
                        entry = SitePerson(path, index, None if identity is None else int(identity),
                                           str(person["kind"]), str(person["expected_verdict"]))
                        region = crop_region(tuple(person["bbox"]), image.size, crop_margin)  # as detect cuts
                    except (KeyError, TypeError, ValueError) as exc:
                        raise GadmsError(f"{where}: person {index}: needs bbox, identity and kind ({exc!r})") from None
                    self.persons.append(entry)
                    thumbnails.append(thumbnail(image.crop(region)))
                # A detector often boxes persons that share their crops as one: that crop is several people too.
                together = [(k, p) for k, p in enumerate(record["persons"])
                            if p["expected_verdict"] == "several_people"]
                if len(together) >= 2:
                    first, person = together[0]
                    boxes = [p["bbox"] for _, p in together]
                    union = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                             max(b[3] for b in boxes))
                    self.persons.append(SitePerson(path, first, person["identity"], person["kind"],
                                                   "several_people"))
                    thumbnails.append(thumbnail(image.crop(crop_region(union, image.size, crop_margin))))
        if not self.persons:
            raise GadmsError(f"{site_dir / 'ground_truth.jsonl'}: the site has no rendered persons to recognise")
        self.thumbnails = np.stack(thumbnails)

    def match(self, image: Image.Image) -> Match | None:
        distances = np.abs(self.thumbnails - thumbnail(image)[None]).mean(axis=(1, 2, 3))
        best = int(np.argmin(distances))
        if distances[best] > MATCH_LIMIT:
            return None
        return Match(self.persons[best], float(distances[best]))


def _payload_files(site_dir: Path) -> dict[str, str]:
    """URL path → the document-root file a fault URL serves its image from (site.json's fault table)."""
    info = site_dir / "site.json"
    if not info.is_file():
        return {}
    try:
        faults = json.loads(info.read_text(encoding="utf-8")).get("faults", {})
    except (json.JSONDecodeError, AttributeError):
        raise GadmsError(f"{info}: not the site's JSON description; render the site again") from None
    return {path: spec["file"] for path, spec in faults.items() if isinstance(spec, dict) and spec.get("file")}


def verdict(match: Match | None) -> dict:
    """What a careful VLM says about the crop of the matched figure."""
    reason = match.person.expected_verdict if match is not None else "not_a_person"
    return {"keep": reason == KEEP, "reason": reason}


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
        check_hallucination_rate(hallucination_rate)
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
        if match is None or match.person.identity is None:
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
    return [entry for _, entry in read_jsonl(path)]


def check_hallucination_rate(rate: float) -> None:
    """fill_caption's rate, checked where a caller takes it (before any caption is made)."""
    if not 0.0 <= rate <= 1.0:
        raise GadmsError(f"hallucination rate must lie in [0, 1], got {rate}")


def hallucinated_word_flags(caption: str, hallucinated: list[dict], where: str = "caption") -> list[bool]:
    """One flag per word of `caption.split()`: True where a logged hallucination (fill_caption's entries, or the
    log's lines for this caption) put a wrong word. An entry whose index or word does not fit the caption is an
    error naming `where` (the log belongs to another caption)."""
    words = caption.split()
    flags = [False] * len(words)
    for entry in hallucinated:
        index = entry.get("word_index")
        if not isinstance(index, int) or not 0 <= index < len(words) or words[index].strip(".,;") != entry.get("word"):
            raise GadmsError(f"{where}: hallucinated word {entry.get('word')!r} at index {index!r} is not in the "
                             f"caption {caption!r}")
        flags[index] = True
    return flags


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
