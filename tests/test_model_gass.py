"""GASS against a slow, obviously-correct reference; its zeros; and that it leaves the training gradients alone."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from gadms_model.gass import gass_scores
from gadms_model.losses import mlm_loss, sdm_loss
from gadms_model.masking import dual_mask
from gadms_model.model import ModelConfig, build_model
from gadms_model.score_store import ScoreStore
from gadms_model.tokenizer import EOT_TOKEN_ID

CAPTIONS = [
    "a young man in a red hooded jacket, blue jeans and white sneakers carrying a black backpack",
    "woman with long brown hair",
    "a girl",
    "an old man wearing glasses, a grey coat and dark trousers walks with a walking stick in his right hand",
]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model(ModelConfig.tiny()).eval()
    text_ids = model.tokenizer(CAPTIONS)
    images = torch.randn(len(CAPTIONS), 3, 64, 32)
    return model, text_ids, images


def reference_gass(clip, text_ids, image_features, num_layers, normalisation="sample"):
    """Per sample, per layer: an explicit forward (attention written out head by head), its own gradient call,
    and the method's formulas written as loops."""
    batch, length = text_ids.shape
    blocks = list(clip.transformer.resblocks)
    width = clip.token_embedding.weight.shape[1]
    scores = torch.zeros(batch, length, dtype=torch.float64)
    for b in range(batch):
        eot = text_ids[b].tolist().index(EOT_TOKEN_ID)
        terms = torch.zeros(length, dtype=torch.float64)
        for layer in range(len(blocks) - num_layers, len(blocks)):
            x = clip.token_embedding(text_ids[b]) + clip.positional_embedding
            for index, block in enumerate(blocks):
                heads = block.attn.num_heads
                head_dim = width // heads
                h = block.ln_1(x)
                weight, bias = block.attn.in_proj_weight, block.attn.in_proj_bias
                q = h @ weight[:width].T + bias[:width]
                k = h @ weight[width:2 * width].T + bias[width:2 * width]
                v = h @ weight[2 * width:].T + bias[2 * width:]
                outputs, eot_rows = [], []
                for head in range(heads):
                    part = slice(head * head_dim, (head + 1) * head_dim)
                    logits = q[:, part] @ k[:, part].T / math.sqrt(head_dim)
                    causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
                    weights = logits.masked_fill(causal, float("-inf")).softmax(dim=-1)
                    outputs.append(weights @ v[:, part])
                    eot_rows.append(weights[eot])
                o = torch.cat(outputs, dim=-1)
                if index == layer:
                    o_layer, q_layer, k_layer, v_layer = o, q.detach(), k.detach(), v.detach()
                    eot_attention = torch.stack(eot_rows).mean(dim=0).detach()
                x = x + block.attn.out_proj(o)
                x = x + block.mlp(block.ln_2(x))
            text_feature = clip.ln_final(x[eot]) @ clip.text_projection
            similarity = F.cosine_similarity(text_feature, image_features[b], dim=0)
            g = torch.autograd.grad(similarity, o_layer)[0][eot]

            def msp(sequence):
                pairs = [(sequence[2 * i] + sequence[2 * i + 1]) / 2 for i in range(length // 2)]
                restored = []
                for n in range(length):
                    source = max((n + 0.5) * len(pairs) / length - 0.5, 0.0)
                    low = int(math.floor(source))
                    high = min(low + 1, len(pairs) - 1)
                    fraction = source - low
                    restored.append((1 - fraction) * pairs[low] + fraction * pairs[high])
                return (sequence + torch.stack(restored)) / 2

            q_msp, k_msp = msp(q_layer)[eot], msp(k_layer)
            cosines = [F.cosine_similarity(q_msp, k_msp[j], dim=0).item() for j in range(eot + 1)]
            low, high = min(cosines), max(cosines)
            attention_sum = sum(eot_attention[j].item() for j in range(1, eot))
            for j in range(1, eot):
                w = (cosines[j] - low) / (high - low)
                s_g = torch.dot(g, v_layer[j]).item() * w
                s_a = eot_attention[j].item() / attention_sum
                terms[j] += s_g * s_a
        scores[b] = torch.relu(terms / num_layers)
    if normalisation == "sample":
        peaks = scores.amax(dim=1, keepdim=True)
        return torch.where(peaks > 0, scores / peaks, 0.0)  # a caption whose scores are all 0 stays 0
    return scores / scores.max()


# Error budget: the score chain (layers of matmuls, softmax, cosines, a min-max scaling, a division by the peak)
# amplifies rounding. Measured on this model it is ~70 unit roundoffs in float64 and in float32 alike; a bound of
# 1000 unit roundoffs leaves >10x for other CPUs' kernels and thread counts (they change the reduction order, so
# which roundings happen, not how many). The reference is always float64, so its own error is ~1e-14.
AMPLIFICATION = 1000


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


@pytest.fixture(scope="module")
def tiny64(tiny):
    model, text_ids, images = tiny
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        features32 = model.towers.image_tokens(images)[:, 0]
        features64 = model64.towers.image_tokens(images.double())[:, 0]
    return model64, features32, features64


@pytest.mark.slow
@pytest.mark.parametrize("num_layers", [2, 3])
@pytest.mark.parametrize("normalisation", ["sample", "batch"])
def test_gass_matches_reference(tiny, tiny64, num_layers, normalisation):
    model, text_ids, _ = tiny
    model64, features32, features64 = tiny64
    slow = reference_gass(model64.towers.clip, text_ids, features64, num_layers, normalisation)

    # The formulas: the fast path in float64 agrees with the written-out reference to float64 rounding.
    fast64 = gass_scores(model64.towers, text_ids, features64, num_layers, normalisation)
    assert fast64.dtype == torch.float64
    torch.testing.assert_close(fast64, slow, atol=AMPLIFICATION * unit_roundoff(torch.float64), rtol=0)

    # The precision: the float32 path used in training stays within the float32 budget of the float64 truth.
    fast = gass_scores(model.towers, text_ids, features32, num_layers, normalisation)
    assert fast.shape == (len(CAPTIONS), 77) and fast.dtype == torch.float32
    assert not fast.requires_grad
    torch.testing.assert_close(fast.double(), slow, atol=AMPLIFICATION * unit_roundoff(torch.float32), rtol=0)
    if normalisation == "sample":
        assert (fast.amax(dim=1) == 1).sum() >= 3
    else:
        assert fast.max().item() == 1.0


def test_gass_zero_outside_words_and_in_unit_interval(tiny):
    model, text_ids, images = tiny
    with torch.no_grad():
        image_features = model.towers.image_tokens(images)[:, 0]
    scores = gass_scores(model.towers, text_ids, image_features, num_layers=2)
    eot = (text_ids == EOT_TOKEN_ID).int().argmax(dim=1)
    for row in range(len(CAPTIONS)):
        assert scores[row, 0] == 0  # SOT
        assert torch.all(scores[row, eot[row]:] == 0)  # EOT and padding
        assert scores[row, 1:eot[row]].max().item() in (0.0, 1.0)  # per-caption max normalisation
    assert scores.min() >= 0 and scores.max() <= 1
    assert (scores[:, 1:].amax(dim=1) == 1).sum() >= 3


def test_gass_of_a_caption_does_not_depend_on_its_batch(tiny, tiny64):
    # In float64, so that the batch size's other kernels change the result only at float64 rounding.
    _, text_ids, _ = tiny
    model64, _, features64 = tiny64
    together = gass_scores(model64.towers, text_ids, features64, num_layers=2)
    alone = gass_scores(model64.towers, text_ids[1:2], features64[1:2], num_layers=2)
    torch.testing.assert_close(together[1:2], alone, atol=AMPLIFICATION * unit_roundoff(torch.float64), rtol=0)


def _fixed_mask_loss(model, images, text_ids, pids, scores, seed):
    """The gadms training loss with masks drawn from given scores, without any GASS pass."""
    generator = torch.Generator().manual_seed(seed)
    noise_ids, mtp_ids, labels, _, _ = dual_mask(text_ids, scores, generator)
    image_tokens = model.towers.image_tokens(images)
    text_global, mtp_tokens = model.towers.text_global_and_tokens(noise_ids, mtp_ids)
    loss = sdm_loss(image_tokens[:, 0], text_global, pids)
    predicted = labels != -100
    logits = model.mtp_head(mtp_tokens, image_tokens, predicted)
    return loss + model.config.mtp_weight * mlm_loss(logits, labels[predicted])


def test_gass_pass_leaves_parameter_gradients_unchanged(tiny):
    torch.manual_seed(1)
    model = build_model(ModelConfig.tiny(mask_from="stored"))
    _, text_ids, images = tiny
    pids = torch.tensor([0, 1, 1, 2])
    caption_ids = torch.tensor([3, 0, 2, 1])
    fixed_scores = torch.rand(4, 77)

    store = ScoreStore(4)
    store.update(caption_ids, fixed_scores)
    model.zero_grad(set_to_none=True)
    with_gass = model(images, text_ids, pids, caption_ids=caption_ids, score_store=store,
                      generator=torch.Generator().manual_seed(7))
    with_gass["loss"].backward()
    grads_with = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert not torch.equal(store.gather(caption_ids), fixed_scores.half().float())  # the GASS pass ran

    model.zero_grad(set_to_none=True)
    stored = fixed_scores.half().float()  # what the store handed out
    loss = _fixed_mask_loss(model, images, text_ids, pids, stored, seed=7)
    loss.backward()
    grads_without = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    assert with_gass["loss"].item() == loss.item()
    assert grads_with.keys() == grads_without.keys() and len(grads_with) > 20
    for name in grads_with:
        assert torch.equal(grads_with[name], grads_without[name]), name


def test_gass_never_writes_parameter_grads(tiny):
    model, text_ids, images = tiny
    model.zero_grad(set_to_none=True)
    gass_scores(model.towers, text_ids, torch.randn(len(CAPTIONS), 64), num_layers=3)
    assert all(p.grad is None for p in model.parameters())
