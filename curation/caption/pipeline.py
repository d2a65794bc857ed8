"""`caption_crops`: the caption stage's one entry point (filter verdict → two captions → quality checks)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from curation.caption.alttext import clean_alt_text
from curation.caption.backends import OpenAIBackend, Question, TransformersBackend, jpeg_for_model
from curation.caption.cache import RequestCache, request_key
from curation.caption.client import RequestFailed
from curation.caption.config import CaptionConfig
from curation.caption.prompts import (
    VERDICT_REASONS, VERDICT_SCHEMA, PromptSet, Template, assign_templates, load_prompts, load_templates,
)
from curation.caption.quality import check_alt_caption, check_caption
from storage.records import Captions, PersonCrop, Reject

log = logging.getLogger(__name__)

ALT_TEXT_MODEL = "alt-text"
Progress = Callable[[int], None]


def caption_crops(
    crops: list[PersonCrop], config: CaptionConfig, cache_dir: str | Path, *, progress: Progress | None = None
) -> tuple[list[Captions], list[Reject]]:
    """Captions for the crops that pass, and one Reject (stage filter/caption/quality) for each that does not.

    Finished model requests are cached under `cache_dir`, so a rerun of the same chunk sends nothing new.
    `progress(n)` is called as crops finish. Raises GadmsError only when the backend cannot work at all
    (model not served, every request failing); single bad answers become rejects.
    """
    if config.backend == "alt-text":
        return caption_from_alt_text(crops, config, progress)
    if not crops:
        return [], []
    run = _CaptionRun(config, cache_dir, progress)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run.run(crops))
    # Called from inside an event loop (a notebook, an async flow): run ours in a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run.run(crops)).result()


def caption_from_alt_text(
    crops: list[PersonCrop], config: CaptionConfig, progress: Progress | None = None
) -> tuple[list[Captions], list[Reject]]:
    """caption1 = the page's cleaned alt text; caption2 = "" (the alt text gives one description, not two)."""
    captions, rejects = [], []
    for crop in crops:
        cleaned = clean_alt_text(crop.alt_text)
        problem = ("empty_alt_text", f"alt text {crop.alt_text[:120]!r}") if not cleaned else None
        stage = "caption"
        if problem is None and config.quality.enabled:
            problem, stage = check_alt_caption(cleaned, config.quality), "quality"
        if problem:
            rejects.append(Reject(stage, problem[0], crop.source_url, crop.sample_id, problem[1],
                                  bbox=crop.bbox))
        else:
            captions.append(Captions(crop.sample_id, cleaned, "", ALT_TEXT_MODEL, "alt-text", "", config.prompt_version))
        if progress:
            progress(1)
    return captions, rejects


@dataclass(frozen=True)
class Verdict:
    keep: bool
    reason: str


def parse_verdict(text: str) -> Verdict:
    """The filter answer as a Verdict; ValueError when it is not the JSON object the prompt asks for."""
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    data = json.loads(body)
    if not isinstance(data, dict) or set(data) != {"keep", "reason"}:
        raise ValueError("expected exactly the fields keep and reason")
    keep, reason = data["keep"], data["reason"]
    if not isinstance(keep, bool) or reason not in VERDICT_REASONS:
        raise ValueError(f"keep={keep!r} reason={reason!r} outside the schema")
    if keep != (reason == "one_clear_person"):
        raise ValueError(f"keep={keep} contradicts reason {reason!r}")
    return Verdict(keep, reason)


def tidy_caption(text: str) -> str:
    """Model output as a one-line caption: no wrapping quotes, no "Caption:" label, single spaces."""
    text = " ".join(text.split())
    text = re.sub(r"^(?:caption|description)\s*:\s*", "", text, flags=re.IGNORECASE)
    return text.strip().strip('"“”\'').strip()


def _seed(base: int, sample_id: str, index: int) -> int:
    digest = hashlib.sha256(f"{sample_id}:{index}".encode()).digest()
    return (base + int.from_bytes(digest[:4], "big")) % 2**31


class _CaptionRun:
    def __init__(self, config: CaptionConfig, cache_dir: str | Path, progress: Progress | None):
        self.config = config
        self.prompts: PromptSet = load_prompts(config.prompts_path, config.prompt_version)
        self.templates: list[Template] = load_templates(config.templates_path)
        self.cache_dir = cache_dir
        self.progress = progress
        self.backend: OpenAIBackend | TransformersBackend
        if config.backend == "openai":
            self.backend = OpenAIBackend(config)
            self.model_names = list(config.models)
            self.verdict_model = config.verdict_model
            self.model_source = ""
        else:
            self.backend = TransformersBackend(config)
            self.model_names = [self.backend.model_name]
            self.verdict_model = self.backend.model_name
            self.model_source = str(self.backend.model_dir.resolve())  # two folders may share a name
        self.sent = 0

    async def run(self, crops: list[PersonCrop]) -> tuple[list[Captions], list[Reject]]:
        self.cache = RequestCache(self.cache_dir)
        # Enough crops under way to keep every request slot busy, few enough that a big chunk does not build
        # all its request bodies (base64 images) before the first one is sent.
        slots = self.config.in_flight_per_endpoint * len(self.config.endpoints) if self.backend.name == "openai" else 1
        self._crops_in_progress = asyncio.Semaphore(2 * slots)
        try:
            async with self.backend:
                tasks = [asyncio.create_task(self._caption_one(crop)) for crop in crops]
                try:
                    results = await asyncio.gather(*tasks)
                except BaseException:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise
        finally:
            self.cache.close()
        captions = [r for r in results if isinstance(r, Captions)]
        rejects = [r for r in results if isinstance(r, Reject)]
        log.info(
            "captioned %d crops: %d kept, %d requests sent, %d cache hits, rejects %s",
            len(crops), len(captions), self.sent, self.cache.hits, dict(Counter(r.reason for r in rejects)),
        )
        return captions, rejects

    async def _ask(self, question: Question, image_sha256: str, template_id: str, parse: Callable):
        """The parsed answer to `question`: from the cache, else from the backend (with retries on bad output)."""
        key = request_key(
            backend=self.backend.name,
            model=question.model,
            model_source=self.model_source,
            prompt_version=self.prompts.version,
            prompt_sha256=hashlib.sha256(question.prompt.encode()).hexdigest(),
            template=template_id,
            image_sha256=image_sha256,
            image_max_side=self.config.image_max_side,
            sampling=[question.max_tokens, question.temperature, question.top_p, question.seed],
        )
        cached = self.cache.get(key)
        if cached is not None:
            return parse(cached)
        problem = ""
        for _ in range(self.config.invalid_output_retries + 1):
            self.sent += 1
            text = await self.backend.answer(question)
            try:
                parsed = parse(text)
            except ValueError as exc:
                problem = f"{exc}; answer {text[:160]!r}"
                continue
            self.cache.put(key, text)
            return parsed
        raise RequestFailed(f"invalid_{question.kind}_answer", problem)

    async def _caption_one(self, crop: PersonCrop) -> Captions | Reject:
        try:
            async with self._crops_in_progress:
                return await self._filter_and_caption(crop)
        finally:
            if self.progress:
                self.progress(1)

    async def _filter_and_caption(self, crop: PersonCrop) -> Captions | Reject:
        config = self.config
        image_sha256 = hashlib.sha256(crop.image).hexdigest()
        try:
            image = jpeg_for_model(crop.image, config.image_max_side)
        except (OSError, ValueError) as exc:
            return Reject("caption", "undecodable_image", crop.source_url, crop.sample_id, str(exc)[:200],
                          bbox=crop.bbox)

        verdict = None
        if config.filter:
            question = Question(
                "filter", self.verdict_model, self.prompts.filter, image, config.filter_max_tokens,
                0.0, 1.0, _seed(config.sampling.seed, crop.sample_id, 0), VERDICT_SCHEMA,
            )
            try:
                verdict = await self._ask(question, image_sha256, "", parse_verdict)
            except RequestFailed as exc:
                return Reject("filter", exc.reason, crop.source_url, crop.sample_id, exc.detail, bbox=crop.bbox)
            if not verdict.keep:
                detail = f"verdict of {self.verdict_model}"
                return Reject("filter", verdict.reason, crop.source_url, crop.sample_id, detail, bbox=crop.bbox)

        plan = self._caption_plan(crop.sample_id)
        sampling = config.sampling
        questions = [
            Question(
                "caption", model, self.prompts.caption_prompt(template, config.quality.max_words), image,
                sampling.max_tokens, sampling.temperature, sampling.top_p, seed,
            )
            for model, template, seed in plan
        ]
        answers = await asyncio.gather(
            *(self._ask(q, image_sha256, t.id, tidy_caption) for q, (_, t, _) in zip(questions, plan)),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, RequestFailed):
                return Reject("caption", answer.reason, crop.source_url, crop.sample_id, answer.detail, bbox=crop.bbox)
            if isinstance(answer, BaseException):
                raise answer

        if config.quality.enabled:
            for number, (answer, (_, template, _)) in enumerate(zip(answers, plan), 1):
                problem = check_caption(answer, template, config.quality)
                if problem:
                    detail = f"caption{number}: {problem[1]}: {answer[:160]!r}"
                    return Reject("quality", problem[0], crop.source_url, crop.sample_id, detail, bbox=crop.bbox)
        models = [model for model, _, _ in plan]
        template_ids = [template.id for _, template, _ in plan]
        return Captions(
            crop.sample_id, answers[0], answers[1],
            caption_model=models[0] if models[0] == models[1] else ",".join(models),
            caption_backend=self.backend.name,
            template_id=template_ids[0] if template_ids[0] == template_ids[1] else ",".join(template_ids),
            prompt_version=self.prompts.version,
            filter_keep=None if verdict is None else verdict.keep,
            filter_reason=None if verdict is None else verdict.reason,
            filter_model=None if verdict is None else self.verdict_model,
        )

    def _caption_plan(self, sample_id: str) -> list[tuple[str, Template, int]]:
        """(model, template, seed) of caption1 and caption2, all derived from the sample id."""
        base = self.config.sampling.seed
        mode = self.config.caption_mode
        if mode == "two_templates":
            first, second = assign_templates(sample_id, self.templates, 2, salt=self.prompts.version)
            model = self.model_names[0]
            return [(model, first, _seed(base, sample_id, 1)), (model, second, _seed(base, sample_id, 2))]
        (template,) = assign_templates(sample_id, self.templates, 1, salt=self.prompts.version)
        if mode == "two_samples":
            model = self.model_names[0]
            return [(model, template, _seed(base, sample_id, 1)), (model, template, _seed(base, sample_id, 2))]
        seed = _seed(base, sample_id, 1)
        return [(self.model_names[0], template, seed), (self.model_names[1], template, seed)]
