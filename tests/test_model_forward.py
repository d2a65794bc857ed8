"""The GADMS module end to end on the tiny config: modes, score store, encoders, tokenizer, config checks."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from gadms_model.gass import gass_scores
from gadms_model.losses import clip_loss
from gadms_model.model import ModelConfig, build_model
from gadms_model.score_store import ScoreStore
from gadms_model.tokenizer import EOT_TOKEN_ID, MASK_TOKEN_ID, SOT_TOKEN_ID, Tokenizer
from storage.errors import GadmsError

CAPTIONS = [
    "a man in a red jacket and black trousers carrying a bag",
    "a woman with long hair wearing a white dress and sandals",
    "a boy in a blue t-shirt riding a bike",
    "a man in a red jacket, dark jeans and grey shoes",
]


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    tokenizer = Tokenizer()
    return torch.randn(4, 3, 64, 32), tokenizer(CAPTIONS), torch.tensor([0, 1, 2, 0])


def test_tokenizer_vocabulary_specials_and_truncation():
    import open_clip

    tokenizer = Tokenizer()
    assert tokenizer.vocab_size == 49408 and tokenizer.mask_token_id == MASK_TOKEN_ID == 49405
    ids = tokenizer(["A man in a red coat.", "word " * 100])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    # Same BPE as CLIP's for ordinary text.
    assert torch.equal(ids[0], open_clip.tokenize(["A man in a red coat."])[0])
    assert ids[0, 0] == SOT_TOKEN_ID and ids[1, 76] == EOT_TOKEN_ID and (ids[1] == EOT_TOKEN_ID).sum() == 1
    assert tokenizer.decode(ids[0]) == "a man in a red coat ."
    masked = ids[0].clone()
    masked[3] = MASK_TOKEN_ID
    assert tokenizer.decode(masked) == "a man <|mask|> a red coat ."
    assert MASK_TOKEN_ID not in tokenizer.encode("<|mask|> mask")


def test_gadms_forward_losses_stats_and_gradients(batch):
    images, text_ids, pids = batch
    model = build_model(ModelConfig.tiny(num_classes=3))
    store = ScoreStore(10)
    caption_ids = torch.tensor([9, 2, 4, 0])
    out = model(images, text_ids, pids, caption_ids=caption_ids, score_store=store,
                generator=torch.Generator().manual_seed(0))
    assert {"loss", "sdm", "mtp", "id", "noise_mask_rate", "mtp_mask_rate", "gass_noise_masked",
            "gass_informative_masked", "gass_mean"} <= out.keys()
    assert out["loss"].requires_grad and all(not v.requires_grad for k, v in out.items() if k != "loss")
    expected = out["sdm"] + 0.4 * out["mtp"] + out["id"]
    # Three positive float32 terms: the two sums differ by at most a few roundings (6e-8 each), well under 1e-6.
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    for name in ("towers.clip.visual.conv1.weight", "towers.clip.transformer.resblocks.0.attn.in_proj_weight",
                 "mtp_head.mlm_head.fc.weight", "classifier.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert model.towers.clip.logit_scale.grad is None  # the temperature is fixed
    # The store now holds this step's GASS of these captions; the other rows keep the initial 0.85.
    with torch.no_grad():
        image_features = model.towers.image_tokens(images)[:, 0]
    fresh = gass_scores(model.towers, text_ids, image_features, num_layers=2)
    # The store keeps float16. The step's GASS and this fresh one differ by float32 rounding (< 1e-4, see
    # test_model_gass), which can move a value across a float16 rounding boundary: one float16 step (2^-11 for
    # values up to 1) at most, two allowed for the float32 difference itself.
    torch.testing.assert_close(store.gather(caption_ids), fresh.half().float(), atol=2 ** -10, rtol=0)
    assert (store.gather(caption_ids) == fresh.half().float()).float().mean() > 0.9
    assert torch.all(store.gather(torch.tensor([1, 3, 5])) == torch.tensor(0.85).half().float())


def test_masks_from_stored_scores_start_without_noise_masking(batch):
    images, text_ids, pids = batch
    model = build_model(ModelConfig.tiny(mask_from="stored"))
    store = ScoreStore(4)
    out = model(images, text_ids, pids, caption_ids=torch.arange(4), score_store=store,
                generator=torch.Generator().manual_seed(1))
    # Initial 0.85: p_noise = 0.2·σ(20·(0.15 − 0.9)) ≈ 6e-8, p_informative ≈ 0.3.
    assert out["noise_mask_rate"].item() == 0.0
    assert 0.1 < out["mtp_mask_rate"].item() < 0.5
    assert out["gass_informative_masked"].item() == pytest.approx(0.85, abs=1e-3)
    assert not torch.all(store.gather(torch.arange(4)) == torch.tensor(0.85).half().float())  # written


def test_fixed_scores_drive_the_masks_and_are_never_rewritten(batch, monkeypatch):
    images, text_ids, pids = batch
    model = build_model(ModelConfig.tiny(mask_from="fixed"))
    monkeypatch.setattr("gadms_model.model.gass_scores", lambda *a, **k: pytest.fail("GASS computed"))
    store = ScoreStore(4)
    store.scores.zero_()  # every word scores 0: p_noise = 0.2·σ(2) ≈ 0.176, p_informative = 0.3·σ(−2) ≈ 0.036
    before = store.scores.clone()
    rates = []
    for seed in range(20):
        out = model(images, text_ids, pids, caption_ids=torch.arange(4), score_store=store,
                    generator=torch.Generator().manual_seed(seed))
        rates.append(out["noise_mask_rate"].item())
    assert torch.equal(store.scores, before)
    assert sum(rates) / len(rates) == pytest.approx(0.176, abs=0.04)
    with pytest.raises(ValueError, match="mask_from 'fixed' needs a score store"):
        model(images, text_ids, pids)


def test_token_scores_file_fills_the_store_and_bad_files_are_named(tmp_path):
    from gadms_model.score_store import load_token_scores

    good = tmp_path / "scores.pt"
    scores = torch.rand(3, 77)
    torch.save({"scores": scores}, good)
    store = ScoreStore(3)
    load_token_scores(str(good), store)
    torch.testing.assert_close(store.gather(torch.arange(3)), scores.half().float())
    cases = {
        "shape.pt": ({"scores": torch.zeros(2, 77)}, r"shape \(3, 77\) \(training pairs × context\), found \(2, 77\)"),
        "range.pt": ({"scores": torch.full((3, 77), 1.5)}, r"must lie in \[0, 1\]"),
        "kind.pt": ([1, 2], r"expected \{'scores': tensor\}, found a list"),
        "key.pt": ({"weights": torch.zeros(3, 77)}, "found a dict without 'scores'"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(GadmsError, match=f"token_scores {tmp_path / name}: .*{message}"):
            load_token_scores(str(tmp_path / name), store)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(GadmsError, match="not a torch tensor file"):
        load_token_scores(str(tmp_path / "junk.pt"), store)
    with pytest.raises(GadmsError, match="no such file"):
        load_token_scores(str(tmp_path / "missing.pt"), store)
    torch.testing.assert_close(store.gather(torch.arange(3)), scores.half().float())  # failures changed nothing


def test_irra_sdm_and_clip_modes(batch):
    images, text_ids, pids = batch
    irra = build_model(ModelConfig.tiny(mode="irra", num_classes=3))
    out = irra(images, text_ids, pids, generator=torch.Generator().manual_seed(2))
    assert {"loss", "sdm", "mlm", "id", "mlm_mask_rate"} <= out.keys() and "mtp" not in out
    assert out["loss"].item() == pytest.approx((out["sdm"] + out["mlm"] + out["id"]).item(), rel=1e-6)  # as above
    sdm = build_model(ModelConfig.tiny(mode="sdm"))
    assert sdm.mtp_head is None and sdm.classifier is None
    out = sdm(images, text_ids, pids)
    assert set(out) == {"loss", "sdm"} and out["loss"].item() == out["sdm"].item()
    clip = build_model(ModelConfig.tiny(mode="clip"))
    assert clip.mtp_head is None and clip.classifier is None
    out = clip(images, text_ids, pids)
    assert set(out) == {"loss", "clip"} and out["loss"].item() == out["clip"].item()
    image_features, text_features = clip.encode_image(images), clip.encode_text(text_ids)
    # float32, features normalised once more on this path: a few roundings of values of order 1/τ = 50 apart
    assert out["clip"].item() == pytest.approx(clip_loss(image_features, text_features, pids).item(), rel=1e-5)


def test_encoders_return_unit_features(batch):
    images, text_ids, _ = batch
    model = build_model(ModelConfig.tiny()).eval()
    with torch.no_grad():
        image_features, text_features = model.encode_image(images), model.encode_text(text_ids)
    assert image_features.shape == text_features.shape == (4, 64)
    torch.testing.assert_close(image_features.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(text_features.norm(dim=-1), torch.ones(4))
    # Whatever follows EOT does not change a caption's feature (causal attention, EOT pooling).
    longer = text_ids.clone()
    longer[0, 20:] = 1234
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(longer)[0], text_features[0])


def test_config_is_validated():
    with pytest.raises(ValidationError):
        ModelConfig(mode="gadms", unknown_field=1)
    with pytest.raises(ValidationError):
        ModelConfig(mode="contrastive")
    with pytest.raises(GadmsError, match="gass_layers 8 exceeds the 3 text layers"):
        build_model(ModelConfig.tiny(gass_layers=8))
    with pytest.raises(GadmsError, match="neither a JSON file"):
        build_model(ModelConfig(clip_model="ViT-Nonexistent"))
    assert ModelConfig().image_size == (384, 128) and ModelConfig().temperature == 0.02


def test_score_store_round_trip_and_checks():
    store = ScoreStore(5, context_length=3)
    store.update(torch.tensor([4, 1]), torch.tensor([[0.5, 0.25, 1.0], [0.0, 0.125, 0.75]]))
    assert store.gather(torch.tensor([1, 4, 0])).tolist() == [[0.0, 0.125, 0.75], [0.5, 0.25, 1.0],
                                                               [0.85009765625] * 3]
    restored = ScoreStore(5, context_length=3)
    restored.load_state_dict(store.state_dict())
    assert torch.equal(restored.scores, store.scores)
    with pytest.raises(GadmsError, match=r"expected 'scores' of shape \(6, 3\), found \(5, 3\)"):
        ScoreStore(6, context_length=3).load_state_dict(store.state_dict())
    with pytest.raises(IndexError, match="caption ids must lie in 0..4"):
        store.gather(torch.tensor([5]))


def test_one_pass_over_two_text_batches_equals_two_passes(batch):
    # In float64: the batch sizes choose other kernels, which may change results only at float64 rounding
    # (a few layers of width 64 amplify it by far less than the 1e7 that separates 2.2e-16 from 1e-9).
    _, text_ids, _ = batch
    model = build_model(ModelConfig.tiny()).eval().double()
    other = text_ids.flip(0)
    with torch.no_grad():
        global_features, tokens = model.towers.text_global_and_tokens(text_ids, other[:3])
        torch.testing.assert_close(global_features, model.towers.text_global(text_ids), atol=1e-9, rtol=0)
        torch.testing.assert_close(tokens, model.towers.text_tokens(other[:3]), atol=1e-9, rtol=0)
