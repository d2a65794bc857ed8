"""The model backends behind one small interface: `answer(question) -> text`.

`OpenAIBackend` talks to OpenAI-compatible servers (vllm serve); `TransformersBackend` runs a local VLM
directory with transformers. The alt-text backend needs no model and lives in `alttext.py`.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from curation.caption.client import IMAGE_SLOT, ChatClient, RequestFailed
from curation.caption.config import CaptionConfig
from storage.errors import GadmsError


@dataclass(frozen=True)
class Question:
    """One request to a model: a prompt, optionally about one JPEG image."""

    kind: str  # "filter", "caption" or "rewrite"
    model: str
    prompt: str
    image: bytes | None
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    json_schema: dict | None = None


def jpeg_for_model(jpeg: bytes, max_side: int) -> bytes:
    """The crop as sent to a model: unchanged when it is a JPEG within `max_side`, else shrunk and re-encoded."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        if image.format == "JPEG" and max(image.size) <= max_side and image.mode == "RGB":
            return jpeg
        image = image.convert("RGB")
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=90)
        return out.getvalue()


class OpenAIBackend:
    name = "openai"

    def __init__(self, config: CaptionConfig):
        self.config = config
        self.client = ChatClient(
            config.endpoints,
            in_flight_per_endpoint=config.in_flight_per_endpoint,
            connect_timeout_s=config.connect_timeout_s,
            request_timeout_s=config.request_timeout_s,
            retries=config.retries,
            backoff_base_s=config.backoff_base_s,
            backoff_max_s=config.backoff_max_s,
            abort_after_consecutive_failures=config.abort_after_consecutive_failures,
            api_key=os.environ.get(config.api_key_env),
        )

    async def __aenter__(self) -> "OpenAIBackend":
        await self.client.__aenter__()
        if self.config.check_models:
            try:
                models = set(self.config.models) | ({self.config.verdict_model} if self.config.filter else set())
                await self.client.check_models(sorted(models))
            except BaseException:
                await self.client.__aexit__(None, None, None)
                raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.client.__aexit__(*exc_info)

    def request_body(self, question: Question) -> dict:
        """The chat request; its image URL is IMAGE_SLOT, filled in as the request is sent."""
        # Instruction text first, image last: every request of a kind then shares a long token prefix that
        # vLLM's prefix cache computes once.
        content: list[dict] = [{"type": "text", "text": question.prompt}]
        if question.image is not None:
            content.append({"type": "image_url", "image_url": {"url": IMAGE_SLOT}})
        body = {
            "model": question.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": question.max_tokens,
            "temperature": question.temperature,
            "top_p": question.top_p,
            "seed": question.seed,
        }
        if question.json_schema is not None:
            if self.config.structured_outputs == "structured_outputs":
                body["structured_outputs"] = {"json": question.json_schema}
            elif self.config.structured_outputs == "guided_json":
                body["guided_json"] = question.json_schema
        return body

    async def answer(self, question: Question) -> str:
        image = _data_url(question.image) if question.image is not None else None
        return await self.client.chat(self.request_body(question), image)


@functools.lru_cache(maxsize=4096)
def _data_url(jpeg: bytes) -> bytes:
    """Base64 data URL of a JPEG; cached because a crop's filter and caption requests send the same image."""
    return b"data:image/jpeg;base64," + base64.b64encode(jpeg)


class TransformersBackend:
    """A local VLM directory (AutoProcessor + AutoModelForImageTextToText), for hosts without a vLLM server.

    Generation runs in one worker thread, one request at a time (a local model has no request batching here);
    fine for small runs, a vLLM server is the way to caption millions of crops.
    """

    name = "transformers"

    def __init__(self, config: CaptionConfig):
        self.config = config
        self.model_dir = Path(config.transformers_model_dir or "")
        self._lock = threading.Lock()
        self.processor = None
        self.model = None
        self.consecutive_failures = 0

    @property
    def model_name(self) -> str:
        return self.model_dir.name

    def _load(self) -> None:
        if not (self.model_dir / "config.json").is_file():  # before importing transformers, which takes seconds
            raise GadmsError(f"transformers_model_dir {self.model_dir}: no config.json there")
        from storage.compat import ensure_torchvision_ops
        from storage.devices import existing_device

        existing_device(self.config.device, "caption.device")  # before the model loads, not at model.to()

        ensure_torchvision_ops()  # Qwen2.5-VL's processor imports torchvision
        import pickle

        import torch
        from safetensors import SafetensorError
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = "auto" if self.config.torch_dtype == "auto" else getattr(torch, self.config.torch_dtype)
        try:
            self.processor = AutoProcessor.from_pretrained(self.model_dir)
            self.model = AutoModelForImageTextToText.from_pretrained(self.model_dir, dtype=dtype)
        except pickle.UnpicklingError as exc:  # .bin weights load with weights_only=True; never pass on its advice
            reason = ("refused its weights: a pickle holding more than tensors (loading it could run code)"
                      if "weights only" in str(exc).lower() else "its weights are not a weights file")
            raise GadmsError(f"transformers_model_dir {self.model_dir}: {reason}") from None
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GadmsError(f"transformers_model_dir {self.model_dir}: cannot load it: {reason}") from None
        self.model.to(self.config.device).eval()

    async def __aenter__(self) -> "TransformersBackend":
        await asyncio.to_thread(self._load)
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.model = None

    def _generate(self, question: Question) -> str:
        import torch
        from PIL import Image

        content: list[dict] = []
        images = []
        if question.image is not None:
            images.append(Image.open(io.BytesIO(question.image)).convert("RGB"))
            content.append({"type": "image"})
        content.append({"type": "text", "text": question.prompt})
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt").to(self.config.device)
        sample = question.temperature > 0
        options = {"max_new_tokens": question.max_tokens, "do_sample": sample}
        if sample:
            options.update(temperature=question.temperature, top_p=question.top_p)
        with self._lock, torch.inference_mode():
            torch.manual_seed(question.seed)
            output = self.model.generate(**inputs, **options)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]

    async def answer(self, question: Question) -> str:
        try:
            text = await asyncio.to_thread(self._generate, question)
        except (RuntimeError, ValueError) as exc:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.config.abort_after_consecutive_failures:
                raise GadmsError(f"{self.model_dir}: {self.consecutive_failures} generations in a row failed, "
                                 f"last: {' '.join(str(exc).split())[:200]}") from None
            raise RequestFailed("generation_error", str(exc)[:300]) from None
        self.consecutive_failures = 0
        return text
