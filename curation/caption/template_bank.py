"""`gadms templates build`: human captions → templates, as the paper built its bank.

1. an LLM rewrites each human caption into a template (attribute words → slots such as [colored top]),
   through the same OpenAI-compatible client and request cache as the caption stage;
2. the valid, distinct templates are embedded: by the server's /v1/embeddings when `embedding_model` is set,
   else by a local hashed TF-IDF (offline, no model);
3. k-means (k-means++ start, Lloyd iterations, numpy) groups them; each cluster keeps the template nearest its
   centroid plus up to 5 others drawn at random (seeded).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from curation.caption.backends import OpenAIBackend, Question
from curation.caption.cache import RequestCache, request_key
from curation.caption.client import RequestFailed
from curation.caption.config import CaptionConfig
from curation.caption.prompts import Template, load_prompts, normalise_text, template_problems
from storage.errors import GadmsError
from storage.jsonl import iter_jsonl

LOCAL_EMBEDDING_DIM = 4096
_TOKEN_RE = re.compile(r"\[[^\[\]]+\]|[a-z]+")


def read_human_captions(path: str | Path) -> list[str]:
    """Captions from .txt (one a line), .jsonl (field caption/text, or a captions list) or .json
    (CUHK-PEDES/ICFG-PEDES annotation lists: objects with a `captions` list, or plain strings)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GadmsError(f"{path}: cannot read captions: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise GadmsError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if path.suffix == ".txt":
        return [line.strip() for line in text.splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        rows = [row for _, row in iter_jsonl(text.splitlines(), str(path), objects=False)]
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GadmsError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(rows, list):
        raise GadmsError(f"{path}: expected a list of captions or annotation objects")
    captions = []
    for number, row in enumerate(rows, 1):
        if isinstance(row, str):
            captions.append(row)
        elif isinstance(row, dict) and isinstance(row.get("captions"), list):
            captions += [c for c in row["captions"] if isinstance(c, str)]
        elif isinstance(row, dict) and isinstance(row.get("caption", row.get("text")), str):
            captions.append(row.get("caption", row.get("text")))
        else:
            raise GadmsError(f"{path}: record {number} has no caption, text or captions field")
    return [c.strip() for c in captions if c.strip()]


def local_embeddings(texts: list[str], dim: int = LOCAL_EMBEDDING_DIM) -> np.ndarray:
    """Hashed bag-of-words TF-IDF, L2-normalised; a slot like [colored top] is one token."""
    rows = []
    for text in texts:
        counts: dict[int, float] = {}
        for token in _TOKEN_RE.findall(text.lower()):
            bucket = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "big") % dim
            counts[bucket] = counts.get(bucket, 0.0) + 1.0
        rows.append(counts)
    matrix = np.zeros((len(texts), dim), dtype=np.float32)
    for i, counts in enumerate(rows):
        for bucket, count in counts.items():
            matrix[i, bucket] = count
    document_frequency = (matrix > 0).sum(axis=0)
    matrix *= np.log((1 + len(texts)) / (1 + document_frequency)) + 1.0
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def kmeans(points: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(labels, centroids) of Lloyd's k-means from a k-means++ start."""
    n = len(points)
    if not 1 <= k <= n:
        raise GadmsError(f"--clusters {k}: must be between 1 and the number of templates ({n})")
    rng = np.random.default_rng(seed)
    points = points.astype(np.float64)
    centres = np.empty((k, points.shape[1]))
    centres[0] = points[rng.integers(n)]
    nearest = ((points - centres[0]) ** 2).sum(1)  # squared distance to the closest centre so far
    for c in range(1, k):
        total = nearest.sum()
        centres[c] = points[rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)]
        nearest = np.minimum(nearest, ((points - centres[c]) ** 2).sum(1))
    labels = np.full(n, -1)
    for _ in range(iterations):
        squared = (points**2).sum(1)[:, None] - 2 * points @ centres.T + (centres**2).sum(1)[None]
        new_labels = squared.argmin(axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for cluster in range(k):
            members = points[labels == cluster]
            if len(members):
                centres[cluster] = members.mean(axis=0)
    return labels, centres


def select_per_cluster(points: np.ndarray, labels: np.ndarray, centres: np.ndarray, extra: int, seed: int
                       ) -> list[tuple[int, int, str]]:
    """(index, cluster, role) rows: the member nearest each centroid ("centroid") + `extra` random members."""
    rng = np.random.default_rng(seed)
    chosen = []
    for cluster in range(len(centres)):
        members = np.flatnonzero(labels == cluster)
        if not len(members):
            continue
        nearest = members[np.argmin(((points[members] - centres[cluster]) ** 2).sum(1))]
        chosen.append((int(nearest), cluster, "centroid"))
        others = members[members != nearest]
        for index in rng.choice(others, size=min(extra, len(others)), replace=False):
            chosen.append((int(index), cluster, "random"))
    return chosen


async def _rewrite_and_embed(captions: list[str], config: CaptionConfig, cache_dir: Path
                             ) -> tuple[list[str], np.ndarray | None, dict[str, int]]:
    prompts = load_prompts(config.prompts_path, config.prompt_version)
    config = config.model_copy(update={"filter": False})
    counts = {"captions": len(captions), "failed_requests": 0, "invalid_templates": 0, "duplicates": 0}
    cache = RequestCache(cache_dir)
    try:
        async with OpenAIBackend(config) as backend:
            model = config.models[0]

            async def rewrite(caption: str) -> str | None:
                question = Question("rewrite", model, prompts.rewrite_prompt(caption), None, 120, 0.0, 1.0, 0)
                key = request_key(backend="openai", model=model, prompt_version=prompts.version,
                                  prompt_sha256=hashlib.sha256(question.prompt.encode()).hexdigest(), kind="rewrite")
                answer = cache.get(key)
                if answer is None:
                    try:
                        answer = await backend.answer(question)
                    except RequestFailed:
                        counts["failed_requests"] += 1
                        return None
                    cache.put(key, answer)
                return " ".join(answer.split()).strip('"')

            answers = await asyncio.gather(*(rewrite(c) for c in captions))
            templates, seen = [], set()
            for answer in answers:
                if answer is None:
                    continue
                if template_problems(Template("new", answer)):
                    counts["invalid_templates"] += 1
                elif normalise_text(answer) in seen:
                    counts["duplicates"] += 1
                else:
                    seen.add(normalise_text(answer))
                    templates.append(answer)
            vectors = None
            if config.embedding_model and templates:
                batches = [templates[i:i + 64] for i in range(0, len(templates), 64)]
                try:
                    parts = await asyncio.gather(*(backend.client.embed(config.embedding_model, b) for b in batches))
                except RequestFailed as exc:
                    raise GadmsError(f"embedding model {config.embedding_model!r}: {exc}") from None
                vectors = np.array([v for part in parts for v in part], dtype=np.float32)
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    finally:
        cache.close()
    return templates, vectors, counts


def build_template_bank(captions: list[str], config: CaptionConfig, clusters: int, cache_dir: str | Path,
                        per_cluster_random: int = 5, seed: int = 0) -> tuple[list[dict], dict[str, int]]:
    """Template rows ({id, text, cluster, role, source}) and counts of what was dropped on the way."""
    if config.backend != "openai":
        raise GadmsError("templates build rewrites captions with an LLM: use a config with backend 'openai'")
    templates, vectors, counts = asyncio.run(_rewrite_and_embed(captions, config, Path(cache_dir)))
    if not templates:
        raise GadmsError(f"no valid template came out of {len(captions)} captions (see the counts: {counts})")
    if vectors is None:
        vectors = local_embeddings(templates)
    labels, centres = kmeans(vectors, clusters, seed=seed)
    rows = []
    for number, (index, cluster, role) in enumerate(select_per_cluster(vectors, labels, centres,
                                                                       per_cluster_random, seed), 1):
        rows.append({"id": f"b{number:05d}", "text": templates[index], "cluster": cluster, "role": role,
                     "source": "built"})
    counts.update(templates=len(templates), kept=len(rows))
    return rows, counts
