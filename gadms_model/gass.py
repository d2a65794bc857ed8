"""Gradient-Attention Similarity Score (GASS, method §3): how much each word of a caption supports its image.

For each of the last L text layers l (B = batch, N = context positions, D = text width, heads concatenated):
    g^l      = ∂ Σ_b cos(T_eot_b, V_cls_b) / ∂ o^l[b, eot]              o^l: attention output before out_proj
    w^l[j]   = Φ( cos( MSP(q^l)[eot], MSP(k^l)[j] ) )
    S_g^l[j] = (Σ_d g^l[d] · v^l[j, d]) · w^l[j]
    S_a^l[j] = A^l[eot, j] / Σ_{words i} A^l[eot, i]                     A: attention weights averaged over heads
    score[j] = ReLU( mean_l S_g^l[j] · S_a^l[j] ) for word tokens (0 < j < eot), 0 elsewhere
then each caption's scores are divided by their maximum ("sample", the default) or by the batch maximum
("batch", what the authors' code does), so they lie in [0, 1] (a caption whose scores are all 0 stays 0).
- MSP (multi-scale pooling, scales {1, 2}): average adjacent pairs along the whole context (positions 2i, 2i+1,
  padding included), interpolate linearly back to N positions (align_corners=False), average with the unpooled
  sequence.
- Φ: min-max scaling over the positions the EOT query attends to (0 ≤ j ≤ eot); 1 where they are all equal.
All L gradients come from one `torch.autograd.grad` call; the parameters' `.grad` are never touched and the
returned scores are detached.
"""
from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F

from gadms_model.towers import AttentionRecord, ClipTowers, at_least_float32, eot_positions

Normalisation = Literal["sample", "batch"]


@functools.lru_cache(maxsize=8)
def msp_matrix(length: int) -> torch.Tensor:
    """The N×N matrix M of MSP (a linear map along the sequence): MSP(x)[n] = Σ_m M[n, m]·x[m].

    Applying M is one small matmul; CUDA's linear upsampling kernel is slow on these shapes (it took half of
    a GA-DMS step on an H100)."""
    sequence = torch.eye(length, dtype=torch.float64)[None]  # row m is the basis vector of position m
    pooled = F.avg_pool1d(sequence.transpose(1, 2), kernel_size=2, stride=2)
    restored = F.interpolate(pooled, size=length, mode="linear", align_corners=False).transpose(1, 2)
    return ((sequence + restored) / 2)[0]


def min_max(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-row min-max scaling of B×N `x` over the `valid` positions (1 where a row's valid values are equal)."""
    low = x.masked_fill(~valid, float("inf")).amin(dim=-1, keepdim=True)
    high = x.masked_fill(~valid, float("-inf")).amax(dim=-1, keepdim=True)
    span = high - low
    scaled = (x - low) / span.clamp_min(torch.finfo(x.dtype).tiny)
    return torch.where(span > 0, scaled, torch.ones_like(x))


def word_positions(text_ids: torch.Tensor) -> torch.Tensor:
    """B×N bool: the caption's word tokens, strictly between SOT (position 0) and EOT."""
    positions = torch.arange(text_ids.shape[1], device=text_ids.device)
    return (positions > 0) & (positions < eot_positions(text_ids)[:, None])


def eot_attention_rows(query: torch.Tensor, key: torch.Tensor, heads: int, eot: torch.Tensor) -> torch.Tensor:
    """L×B×N causal attention weights of the EOT query averaged over heads, from L×B×N×D queries and keys."""
    layers, batch, length, width = key.shape
    rows = torch.arange(batch, device=key.device)
    head_dim = width // heads
    query_eot = query[:, rows, eot].reshape(layers, batch, heads, 1, head_dim)
    keys = key.reshape(layers, batch, length, heads, head_dim).transpose(2, 3)
    logits = query_eot @ keys.transpose(-1, -2) / math.sqrt(head_dim)  # L×B×H×1×N
    after_eot = torch.arange(length, device=key.device) > eot[:, None]
    logits = logits.masked_fill(after_eot[None, :, None, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=2).squeeze(2)


def scores_from_records(text_ids: torch.Tensor, records: list[AttentionRecord], output_grads: list[torch.Tensor],
                        normalisation: Normalisation = "sample") -> torch.Tensor:
    """GASS from each layer's attention record and the gradient of the similarity w.r.t. its output.

    All layers are scored at once (tensors stacked to L×B×N×D): a fixed, small number of kernels per step."""
    batch, length = text_ids.shape
    rows = torch.arange(batch, device=text_ids.device)
    eot = eot_positions(text_ids)
    words = word_positions(text_ids)
    attended = torch.arange(length, device=text_ids.device) <= eot[:, None]
    dtype = at_least_float32(records[0].query).dtype  # a float64 model is scored in float64
    msp = msp_matrix(length).to(device=text_ids.device, dtype=dtype)
    query = torch.stack([record.query for record in records]).to(dtype)
    key = torch.stack([record.key for record in records]).to(dtype)
    value = torch.stack([record.value for record in records]).to(dtype)
    grad_eot = torch.stack([grad[rows, eot] for grad in output_grads]).to(dtype)  # L×B×D

    gradient_value = torch.einsum("lbd,lbnd->lbn", grad_eot, value)
    query_msp = torch.einsum("bn,lbnd->lbd", msp[eot], query)  # MSP(q) at EOT only
    similarity = min_max(F.cosine_similarity(query_msp[:, :, None, :], msp @ key, dim=-1), attended)
    attention = eot_attention_rows(query, key, records[0].heads, eot) * words
    attention = attention / attention.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    scores = (gradient_value * similarity * attention).mean(dim=0).relu() * words
    return normalise_scores(scores, normalisation)


def normalise_scores(scores: torch.Tensor, normalisation: Normalisation) -> torch.Tensor:
    if normalisation == "sample":
        peak = scores.amax(dim=-1, keepdim=True)
    elif normalisation == "batch":
        peak = scores.amax()
    else:
        raise ValueError(f"GASS normalisation must be 'sample' or 'batch', got {normalisation!r}")
    return torch.where(peak > 0, scores / peak.clamp_min(torch.finfo(scores.dtype).tiny), torch.zeros_like(scores))


def gass_scores(towers: ClipTowers, text_ids: torch.Tensor, image_features: torch.Tensor, num_layers: int = 8,
                normalisation: Normalisation = "sample") -> torch.Tensor:
    """Detached B×N GASS in [0, 1] of raw captions `text_ids` against their images' global features.

    float32, or float64 for a float64 model (the precision the tests' reference is computed in)."""
    if not 1 <= num_layers <= towers.text_layers:
        raise ValueError(f"gass_layers must be in 1..{towers.text_layers}, got {num_layers}")
    with torch.enable_grad():
        text_features, records = towers.text_global_recorded(text_ids, num_layers)
        text_features = at_least_float32(text_features)
        image_features = image_features.detach().to(text_features.dtype)
        similarity = F.cosine_similarity(text_features, image_features, dim=-1).sum()
        output_grads = torch.autograd.grad(similarity, [record.output for record in records])
    with torch.no_grad():
        return scores_from_records(text_ids, records, list(output_grads), normalisation)
