"""Dual masking and IRRA's random masking: rates, the BERT rule, labels, untouched specials, fallback."""
from __future__ import annotations

import math

import pytest
import torch

from gadms_model.masking import (IGNORE_LABEL, bert_corrupt, dual_mask, dual_selection, mask_probabilities,
                                 random_mask)
from gadms_model.tokenizer import EOT_TOKEN_ID, MASK_TOKEN_ID, SOT_TOKEN_ID

WORDS = 20  # positions 1..20 are words, 21 is EOT, the rest padding
DRAWS = 4000


def captions(rows: int, words: int = WORDS) -> torch.Tensor:
    ids = torch.zeros(rows, 77, dtype=torch.long)
    ids[:, 0] = SOT_TOKEN_ID
    ids[:, 1:words + 1] = torch.arange(1000, 1000 + words)
    ids[:, words + 1] = EOT_TOKEN_ID
    return ids


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_mask_probabilities_follow_the_formulas():
    scores = torch.tensor([[0.0, 0.1, 0.5, 0.85, 1.0]])
    p_noise, p_informative = mask_probabilities(scores)
    assert p_noise.shape == scores.shape and p_informative.shape == scores.shape
    # float32 sigmoid of an argument of size ≤ 20: within a few unit roundoffs (6e-8) of the float64 value.
    for i, s in enumerate(scores[0].tolist()):
        assert p_noise[0, i].item() == pytest.approx(0.2 * sigmoid(20 * ((1 - s) - 0.9)), rel=1e-5)
        assert p_informative[0, i].item() == pytest.approx(0.3 * sigmoid(20 * (s - 0.1)), rel=1e-5)
    assert p_noise[0, 1].item() == pytest.approx(0.1) and p_informative[0, 1].item() == pytest.approx(0.15)


def test_empirical_rates_match_mask_probabilities():
    # Scores sweep 0..1 along the words so both branches see their whole range.
    ids = captions(DRAWS)
    scores = torch.zeros(DRAWS, 77)
    scores[:, 1:WORDS + 1] = torch.linspace(0, 1, WORDS)
    p_noise, p_informative = mask_probabilities(scores)
    noise, informative = dual_selection(ids, scores, torch.Generator().manual_seed(0))
    tolerance = 4 * math.sqrt(0.25 / DRAWS)  # 4 sigma of a Bernoulli mean at worst
    torch.testing.assert_close(noise.float().mean(0)[1:WORDS + 1], p_noise[0, 1:WORDS + 1], atol=tolerance,
                               rtol=0)
    # The first word also receives the fallback of captions where nothing was selected.
    nothing_selected = torch.prod(1 - p_informative[0, 1:WORDS + 1]).item()
    expected = p_informative[0, 1:WORDS + 1].clone()
    expected[0] += nothing_selected
    torch.testing.assert_close(informative.float().mean(0)[1:WORDS + 1], expected, atol=tolerance, rtol=0)
    # Drawn independently: the two selections are uncorrelated.
    joint = (noise & informative).float().mean(0)[1:WORDS + 1]
    torch.testing.assert_close(joint, noise.float().mean(0)[1:WORDS + 1] * informative.float().mean(0)[1:WORDS + 1],
                               atol=tolerance, rtol=0)


def test_bert_rule_and_labels():
    ids = captions(DRAWS)
    selected = torch.zeros_like(ids, dtype=torch.bool)
    selected[:, 1:WORDS + 1] = True
    corrupted, labels = bert_corrupt(ids, selected, torch.Generator().manual_seed(1))
    words = corrupted[:, 1:WORDS + 1]
    original = ids[:, 1:WORDS + 1]
    masked = (words == MASK_TOKEN_ID).float().mean().item()
    unchanged = (words == original).float().mean().item()
    random_word = 1 - masked - unchanged
    assert masked == pytest.approx(0.8, abs=0.01)
    assert random_word == pytest.approx(0.1, abs=0.01)  # a random id equal to the original is ~1e-5 likely
    assert unchanged == pytest.approx(0.1, abs=0.01)
    replaced = words[(words != MASK_TOKEN_ID) & (words != original)]
    assert replaced.min() >= 1 and replaced.max() < MASK_TOKEN_ID
    assert torch.equal(labels, torch.where(selected, ids, IGNORE_LABEL))


def test_special_tokens_and_existing_masks_are_never_touched():
    ids = captions(DRAWS, words=8)
    ids[:, 3] = MASK_TOKEN_ID  # an existing [MASK] is not a candidate
    ids[:5, 1] = 0  # the word "!" has id 0, like padding: it is still a word (position decides)
    scores = torch.full((DRAWS, 77), 0.0)  # both branches active: p_noise ~0.18, p_informative ~0.04
    generator = torch.Generator().manual_seed(2)
    noise_ids, mtp_ids, labels, _, _ = dual_mask(ids, scores, generator)
    outside = torch.ones(77, dtype=torch.bool)
    outside[1:9] = False
    outside[3] = True
    for out in (noise_ids, mtp_ids):
        assert torch.equal(out[:, outside], ids[:, outside])
    assert torch.all(labels[:, outside] == IGNORE_LABEL)
    selected = labels != IGNORE_LABEL
    assert torch.equal(labels[selected], ids[selected])
    # Unselected words are never changed.
    assert torch.equal(mtp_ids[~selected], ids[~selected])
    assert (noise_ids != ids).any() and selected.any()


def test_prediction_branch_falls_back_to_the_first_word():
    ids = captions(3, words=5)
    ids[2, 1] = MASK_TOKEN_ID  # first candidate of row 2 is position 2
    scores = torch.rand(3, 77)
    noise_ids, mtp_ids, labels, _, _ = dual_mask(ids, scores, torch.Generator().manual_seed(3), alpha_noise=0.0,
                                                 alpha_informative=0.0)
    assert torch.equal(noise_ids, ids)  # the noise branch has no fallback
    expected = torch.full_like(ids, IGNORE_LABEL)
    expected[0, 1], expected[1, 1], expected[2, 2] = ids[0, 1], ids[1, 1], ids[2, 2]
    assert torch.equal(labels, expected)

    empty = captions(1, words=0)  # SOT, EOT: nothing to mask, nothing selected
    _, mtp_ids, labels, _, _ = dual_mask(empty, torch.rand(1, 77), torch.Generator().manual_seed(3))
    assert torch.equal(mtp_ids, empty) and torch.all(labels == IGNORE_LABEL)


def test_random_mask_rate_and_fallback():
    ids = captions(DRAWS)
    masked_ids, labels = random_mask(ids, torch.Generator().manual_seed(4), probability=0.15)
    rate = (labels[:, 1:WORDS + 1] != IGNORE_LABEL).float().mean().item()
    assert rate == pytest.approx(0.15 + 0.85 ** WORDS / WORDS, abs=0.01)
    assert torch.all(labels[:, WORDS + 1:] == IGNORE_LABEL) and torch.all(labels[:, 0] == IGNORE_LABEL)
    _, labels = random_mask(captions(2, words=4), torch.Generator().manual_seed(5), probability=1e-9)
    assert (labels != IGNORE_LABEL).nonzero().tolist() == [[0, 1], [1, 1]]


def test_masks_are_reproducible_from_the_generator():
    ids = captions(8)
    scores = torch.rand(8, 77)
    first = dual_mask(ids, scores, torch.Generator().manual_seed(6))
    second = dual_mask(ids, scores, torch.Generator().manual_seed(6))
    third = dual_mask(ids, scores, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, third))
