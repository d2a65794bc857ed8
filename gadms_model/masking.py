"""Token masking (method §4): GASS-guided dual masking for GA-DMS and random BERT masking for IRRA's MLM.

Everything is a pure, vectorised function of (token ids, scores, torch.Generator) on the ids' device.
Candidates are word tokens only (0 < position < EOT, never an existing [MASK]); SOT, EOT and padding are never
touched. A selected token becomes [MASK] with probability 0.8, a random word id (1..49404) with 0.1, and stays
itself with 0.1 (the BERT rule); its label is the original id. Labels are -100 (ignored) elsewhere.
The prediction branches (MTP, MLM) mask the first word of a caption where nothing was selected, so every caption
has a target; the noise branch does not (with the initial score 0.85 nothing is noise-masked, as in the paper's
first epoch).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from gadms_model.gass import word_positions
from gadms_model.tokenizer import MASK_TOKEN_ID

IGNORE_LABEL = -100


def mask_probabilities(scores: torch.Tensor, alpha_noise: float = 0.2, alpha_informative: float = 0.3,
                       mask_lambda: float = 20.0, gamma_noise: float = 0.9, gamma_informative: float = 0.1
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_noise, p_informative), same shape as `scores` (GASS in [0, 1]):
    p_noise = α_n·σ(λ((1 − s) − γ_n)) masks low-score words of the alignment text;
    p_informative = α_i·σ(λ(s − γ_i)) masks high-score words for masked token prediction."""
    scores = scores.float()
    p_noise = alpha_noise * torch.sigmoid(mask_lambda * ((1 - scores) - gamma_noise))
    p_informative = alpha_informative * torch.sigmoid(mask_lambda * (scores - gamma_informative))
    return p_noise, p_informative


def mask_candidates(ids: torch.Tensor, mask_token_id: int = MASK_TOKEN_ID) -> torch.Tensor:
    """B×N bool: positions that may be masked (word tokens that are not already [MASK])."""
    return word_positions(ids) & (ids != mask_token_id)


def select(candidates: torch.Tensor, probabilities: torch.Tensor, generator: torch.Generator | None,
           first_word_fallback: bool) -> torch.Tensor:
    """Select each candidate independently with its probability; optionally the first candidate of empty rows."""
    draws = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    selected = candidates & (draws < probabilities)
    if first_word_fallback:
        empty = ~selected.any(dim=-1, keepdim=True)
        first = torch.zeros_like(candidates)
        first.scatter_(1, candidates.int().argmax(dim=-1, keepdim=True), True)
        selected |= empty & first & candidates
    return selected


def bert_corrupt(ids: torch.Tensor, selected: torch.Tensor, generator: torch.Generator | None,
                 mask_token_id: int = MASK_TOKEN_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted ids, labels): 80% [MASK], 10% random word id, 10% unchanged at the selected positions."""
    rule = torch.rand(ids.shape, generator=generator, device=ids.device)
    random_words = torch.randint(1, mask_token_id, ids.shape, generator=generator, device=ids.device)
    corrupted = torch.where(selected & (rule < 0.8), torch.full_like(ids, mask_token_id), ids)
    corrupted = torch.where(selected & (rule >= 0.8) & (rule < 0.9), random_words, corrupted)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_LABEL))
    return corrupted, labels


def dual_selection(ids: torch.Tensor, scores: torch.Tensor, generator: torch.Generator | None,
                   mask_token_id: int = MASK_TOKEN_ID, **probability_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise-selected, informative-selected) B×N bool, drawn independently from the scores."""
    candidates = mask_candidates(ids, mask_token_id)
    p_noise, p_informative = mask_probabilities(scores, **probability_kwargs)
    noise = select(candidates, p_noise, generator, first_word_fallback=False)
    informative = select(candidates, p_informative, generator, first_word_fallback=True)
    return noise, informative


class DualMask(NamedTuple):
    noise_ids: torch.Tensor  # noise-masked ids: the alignment loss's text
    mtp_ids: torch.Tensor  # informative-masked ids: the MTP head's text
    mtp_labels: torch.Tensor  # the MTP targets (IGNORE_LABEL where nothing was selected)
    noise: torch.Tensor  # B×N bool: the words the noise branch selected
    informative: torch.Tensor  # B×N bool: the words the informative branch selected


def dual_mask(ids: torch.Tensor, scores: torch.Tensor, generator: torch.Generator | None = None,
              mask_token_id: int = MASK_TOKEN_ID, **probability_kwargs) -> DualMask:
    """Both masks of method §4 from one caption batch's token scores, and the selections they came from.

    `probability_kwargs` are `mask_probabilities`' hyper-parameters (alpha_noise, ..., gamma_informative)."""
    noise, informative = dual_selection(ids, scores, generator, mask_token_id, **probability_kwargs)
    noise_ids, _ = bert_corrupt(ids, noise, generator, mask_token_id)
    mtp_ids, mtp_labels = bert_corrupt(ids, informative, generator, mask_token_id)
    return DualMask(noise_ids, mtp_ids, mtp_labels, noise, informative)


def random_mask(ids: torch.Tensor, generator: torch.Generator | None = None, probability: float = 0.15,
                mask_token_id: int = MASK_TOKEN_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """IRRA's MLM masking: each word selected with `probability`, BERT rule, first-word fallback."""
    candidates = mask_candidates(ids, mask_token_id)
    selected = select(candidates, torch.full(ids.shape, probability, device=ids.device), generator,
                      first_word_fallback=True)
    return bert_corrupt(ids, selected, generator, mask_token_id)
