"""A stand-in for `vllm serve` in tests and benchmarks: an OpenAI-protocol HTTP server on 127.0.0.1.

It speaks the parts of the protocol the caption stage uses (GET /v1/models, POST /v1/chat/completions,
POST /v1/embeddings), answers like a cooperative VLM would (a JSON verdict for the filter prompt, the template
filled with fixed words for a caption prompt, a rule-based template for a rewrite prompt), and can be told to
misbehave: HTTP 500, 429 with Retry-After, hanging past the client's timeout, truncated bodies, invalid JSON,
chosen message contents. It counts and records every request.

    server = VllmStandIn(models=["stand-in-vlm"]).start()   # server.base_url == "http://127.0.0.1:PORT/v1"
    server.faults.extend(["500", "429"]) ; ... ; server.stop()

Run as a script (the benchmark does): python tests/openai_server.py --latency 0.2
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import hashlib
import json
import re
import threading
import time
from typing import Callable

from aiohttp import web

from curation.synthweb.aiohttp_server import LoopbackAiohttpServer
from curation.synthweb.vlm import is_verdict_request, prompt_and_image

FILL_WORDS = {
    "He/She": "She", "he/she": "she", "His/Her": "Her", "his/her": "her", "him/her": "her",
    "man/woman": "woman", "age group": "young", "colored top": "red T-shirt", "colored bottom": "blue jeans",
    "colored outerwear": "black jacket", "colored dress": "green dress", "colored shoes": "white sneakers",
    "hairstyle": "long straight hair", "hair color": "brown", "headwear": "grey cap",
    "accessory": "black sunglasses", "bag": "brown shoulder bag", "action": "walking forward", "body build": "slim",
}
_COLOURS = r"(?:red|blue|black|white|grey|gray|green|yellow|pink|purple|brown|orange|beige|navy|dark|light)"
REWRITE_RULES = [
    (rf"\b(?:a |an )?{_COLOURS}(?: and {_COLOURS})? (?:t-shirt|shirt|top|blouse|sweater|hoodie)\b", "a [colored top]"),
    (rf"\b{_COLOURS}(?: and {_COLOURS})? (?:jeans|pants|trousers|shorts|skirt)\b", "[colored bottom]"),
    (rf"\b(?:a |an )?{_COLOURS} (?:jacket|coat)\b", "a [colored outerwear]"),
    (rf"\b{_COLOURS} (?:shoes|sneakers|boots|sandals)\b", "[colored shoes]"),
    (rf"\b(?:a |an )?{_COLOURS} (?:backpack|bag|handbag)\b", "a [bag]"),
    (r"\b(?:long|short|curly|straight) (?:\w+ )?hair\b", "[hairstyle]"),
    (r"\b(?:man|woman|boy|girl|lady|guy)\b", "[man/woman]"),
    (r"\b(?:He|She)\b", "[He/She]"),
    (r"\b(?:he|she)\b", "[he/she]"),
    (r"\b(?:his|her)\b", "[his/her]"),
]
KEEP = {"keep": True, "reason": "one_clear_person"}
CANNED_ANSWER = json.dumps({
    "id": "chatcmpl-canned", "object": "chat.completion", "created": 0, "model": "stand-in-vlm",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "A woman in a red T-shirt and blue jeans is walking forward with a black bag."}}],
}).encode()


def fill_template(template: str) -> str:
    return re.sub(r"\[([^\[\]]+)\]", lambda m: FILL_WORDS.get(m.group(1), m.group(1)), template)


def rewrite_to_template(caption: str) -> str:
    for pattern, slot in REWRITE_RULES:
        caption = re.sub(pattern, slot, caption)
    return caption


class VllmStandIn(LoopbackAiohttpServer):
    thread_name = "vllm-stand-in"

    def __init__(self, models: tuple[str, ...] | list[str] = ("stand-in-vlm",), latency_s: float = 0.0,
                 retry_after: str = "1", hang_s: float = 5.0, embedding_dim: int = 64, canned: bool = False):
        super().__init__()
        self.models = list(models)
        self.latency_s = latency_s
        # Benchmark mode: read each request's body but skip parsing it, answer one fixed caption after the
        # latency, so the server spends as little as possible of the CPU the client is measured on.
        self.canned = canned
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.embedding_dim = embedding_dim
        # Faults applied to the next chat requests, one each, in order: "400", "500", "429", "timeout", "truncated",
        # "invalid_json", or "content:<text>" (a well-formed answer whose message content is <text>).
        self.faults: collections.deque[str] = collections.deque()
        self.verdicts: dict[str, dict] = {}  # image sha256 → verdict answered for it (default: keep)
        self.answer_override: Callable[[dict], str | None] | None = None
        self.chat_requests: list[dict] = []
        self.request_times: list[float] = []
        self.embedding_requests = 0
        self.in_flight = 0
        self.max_in_flight = 0

    # --- handlers ------------------------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": "vllm-stand-in"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    def _not_found(self, model: str) -> web.Response:
        error = {"message": f"The model `{model}` does not exist.", "type": "NotFoundError", "param": None,
                 "code": 404}
        return web.json_response({"error": error}, status=404)

    def _answer_text(self, body: dict) -> str:
        if self.answer_override is not None:
            text = self.answer_override(body)
            if text is not None:
                return text
        prompt, image = prompt_and_image(body)
        if is_verdict_request(body, prompt):
            return json.dumps(self.verdicts.get(hashlib.sha256(image).hexdigest() if image else "", KEEP))
        if "Template:" in prompt:
            return fill_template(prompt.rsplit("Template:", 1)[1].strip())
        if "Description:" in prompt:
            return rewrite_to_template(prompt.rsplit("Description:", 1)[1].strip())
        return "A woman in a red T-shirt and blue jeans is walking forward."

    async def _canned_chat(self, request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(self.latency_s)
        return web.Response(body=CANNED_ANSWER, content_type="application/json")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self.canned:
            return await self._canned_chat(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._chat_answer(request)
        finally:
            self.in_flight -= 1

    async def _chat_answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.chat_requests.append(body)
        self.request_times.append(time.monotonic())
        if body.get("model") not in self.models:
            return self._not_found(str(body.get("model")))
        fault = self.faults.popleft() if self.faults else ""
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault == "500":
            return web.json_response({"error": {"message": "stand-in internal error", "code": 500}}, status=500)
        if fault == "400":
            return web.json_response({"error": {"message": "stand-in: this request is invalid", "code": 400}},
                                     status=400)
        if fault == "429":
            return web.json_response({"error": {"message": "too many requests", "code": 429}}, status=429,
                                     headers={"Retry-After": self.retry_after})
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
        if fault == "invalid_json":
            return web.Response(status=200, text='{"id": "cmpl-1", "choices": [', content_type="application/json")
        if fault == "truncated":
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.content_length = 4096
            await response.prepare(request)
            await response.write(b'{"id": "cmpl-1", "object": "chat.completion", "choi')
            request.transport.close()
            return response
        text = fault[len("content:"):] if fault.startswith("content:") else self._answer_text(body)
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.chat_requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": len(text.split()), "total_tokens": 1},
            }
        )

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.embedding_requests += 1
        if body.get("model") not in self.models:
            return self._not_found(str(body.get("model")))
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": self._embed(t)} for i, t in enumerate(texts)]
        return web.json_response({"object": "list", "data": data, "model": body["model"]})

    def _embed(self, text: str) -> list[float]:
        vector = [0.0] * self.embedding_dim
        for word in re.findall(r"\[[^\]]+\]|\w+", text.lower()):
            vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.embedding_dim] += 1.0
        norm = sum(v * v for v in vector) ** 0.5 or 1.0
        return [v / norm for v in vector]

    # --- lifecycle -----------------------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each chat answer")
    parser.add_argument("--model", action="append", help="served model name (repeatable)")
    parser.add_argument("--canned", action="store_true", help="benchmark mode: one fixed answer, body not parsed")
    args = parser.parse_args()
    server = VllmStandIn(models=args.model or ["stand-in-vlm"], latency_s=args.latency, canned=args.canned)
    server.start(args.port)
    # As a process of its own it stands in for a server on another host: keep its collector pauses (60-80 ms
    # full passes at 1,000 requests/s) out of the client's measured latency.
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    print(f"listening on {server.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
