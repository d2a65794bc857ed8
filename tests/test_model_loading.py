"""Checkpoints: an OpenAI-layout file loads with the 384×128 grid resize; broken files fail with clear messages."""
from __future__ import annotations

import json
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F

from gadms_model.model import TINY_CONFIG, ModelConfig, build_model
from gadms_model.activation import resolve_quick_gelu
from gadms_model.towers import load_model_config, resolve_pretrained
from storage.errors import GadmsError

TINY = json.loads(TINY_CONFIG.read_text())
WIDTH, EMBED = TINY["vision_cfg"]["width"], TINY["embed_dim"]
TEXT_WIDTH = TINY["text_cfg"]["width"]


def openai_layout_state(grid: int = 14, seed: int = 0) -> dict:
    """Random weights under OpenAI CLIP's key names (fp16, with its metadata integers), for the tiny shapes."""
    generator = torch.Generator().manual_seed(seed)

    def tensor(*shape):
        return torch.randn(*shape, generator=generator).half()

    def block(prefix: str, width: int) -> dict:
        return {
            f"{prefix}.attn.in_proj_weight": tensor(3 * width, width),
            f"{prefix}.attn.in_proj_bias": tensor(3 * width),
            f"{prefix}.attn.out_proj.weight": tensor(width, width),
            f"{prefix}.attn.out_proj.bias": tensor(width),
            f"{prefix}.ln_1.weight": tensor(width), f"{prefix}.ln_1.bias": tensor(width),
            f"{prefix}.mlp.c_fc.weight": tensor(4 * width, width), f"{prefix}.mlp.c_fc.bias": tensor(4 * width),
            f"{prefix}.mlp.c_proj.weight": tensor(width, 4 * width), f"{prefix}.mlp.c_proj.bias": tensor(width),
            f"{prefix}.ln_2.weight": tensor(width), f"{prefix}.ln_2.bias": tensor(width),
        }

    state = {
        "positional_embedding": tensor(77, TEXT_WIDTH),
        "text_projection": tensor(TEXT_WIDTH, EMBED),
        "logit_scale": torch.tensor(4.6052),
        "token_embedding.weight": tensor(49408, TEXT_WIDTH),
        "ln_final.weight": tensor(TEXT_WIDTH), "ln_final.bias": tensor(TEXT_WIDTH),
        "visual.class_embedding": tensor(WIDTH),
        "visual.positional_embedding": tensor(grid * grid + 1, WIDTH),
        "visual.proj": tensor(WIDTH, EMBED),
        "visual.conv1.weight": tensor(WIDTH, 3, 16, 16),
        "visual.ln_pre.weight": tensor(WIDTH), "visual.ln_pre.bias": tensor(WIDTH),
        "visual.ln_post.weight": tensor(WIDTH), "visual.ln_post.bias": tensor(WIDTH),
        "input_resolution": 224, "context_length": 77, "vocab_size": 49408,
    }
    for i in range(TINY["vision_cfg"]["layers"]):
        state.update(block(f"visual.transformer.resblocks.{i}", WIDTH))
    for i in range(TINY["text_cfg"]["layers"]):
        state.update(block(f"transformer.resblocks.{i}", TEXT_WIDTH))
    return state


@pytest.fixture(scope="module")
def openai_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-openai.pt"
    state = openai_layout_state()
    torch.save(state, path)
    return path, state


def test_openai_layout_checkpoint_loads_with_grid_resize(openai_checkpoint):
    path, state = openai_checkpoint
    model = build_model(ModelConfig.tiny(image_size=(384, 128), pretrained=str(path), quick_gelu=True))
    clip = model.towers.clip
    assert tuple(clip.visual.grid_size) == (24, 8)
    loaded = clip.visual.positional_embedding.detach()
    assert loaded.shape == (24 * 8 + 1, WIDTH)
    source = state["visual.positional_embedding"].float()
    grid = source[1:].reshape(1, 14, 14, WIDTH).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(24, 8), mode="bilinear", align_corners=False)
    assert torch.equal(loaded[0], source[0])
    torch.testing.assert_close(loaded[1:], expected.permute(0, 2, 3, 1).reshape(24 * 8, WIDTH))
    for key in ("token_embedding.weight", "visual.conv1.weight", "transformer.resblocks.2.mlp.c_proj.weight",
                "visual.proj", "text_projection"):
        assert torch.equal(clip.state_dict()[key], state[key].float()), key
    features = model.encode_image(torch.randn(2, 3, 384, 128))
    assert features.shape == (2, EMBED)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2))


def test_open_clip_layout_with_wrappers_loads(tmp_path, openai_checkpoint):
    _, state = openai_checkpoint
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)}}
    path = tmp_path / "wrapped.pt"
    torch.save(wrapped, path)
    model = build_model(ModelConfig.tiny(image_size=(64, 64), pretrained=str(path), quick_gelu=True))
    assert model.towers.clip.visual.positional_embedding.shape == (17, WIDTH)


@pytest.mark.parametrize("breakage, message", [
    ("missing", "1 missing keys (visual.ln_post.bias)"),
    ("unexpected", "1 unexpected keys (visual.extra_head.weight)"),
    ("shape", "text_projection (64, 32) vs model (64, 64)"),
])
def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path, openai_checkpoint, breakage, message):
    state = dict(openai_checkpoint[1])
    if breakage == "missing":
        del state["visual.ln_post.bias"]
    elif breakage == "unexpected":
        state["visual.extra_head.weight"] = torch.zeros(3)
    else:
        state["text_projection"] = torch.zeros(TEXT_WIDTH, 32)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(GadmsError) as caught:
        build_model(ModelConfig.tiny(pretrained=str(path), quick_gelu=True))
    assert str(path) in str(caught.value) and message in str(caught.value)
    assert "\n" not in str(caught.value)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint at all", "not a weights-only PyTorch checkpoint"),
    ("code", "not a weights-only PyTorch checkpoint"),
    ("list", "expected a mapping of parameter names to tensors"),
])
def test_unreadable_or_unsafe_files_are_refused(tmp_path, capsys, content, message):
    path = tmp_path / "bad.pt"
    if content == "code":
        path.write_bytes(pickle.dumps({"weights": Payload()}, protocol=2))
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(GadmsError, match=message):
        build_model(ModelConfig.tiny(pretrained=str(path), quick_gelu=True))
    assert "must never run" not in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated; OpenAI's files are still jit
def test_torchscript_archive_is_refused_with_advice(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(GadmsError, match="TorchScript archive"):
        build_model(ModelConfig.tiny(pretrained=str(path), quick_gelu=True))


def test_missing_file_and_offline_tag_fail_clearly():
    with pytest.raises(GadmsError, match="neither a file nor an open_clip pretrained tag"):
        resolve_pretrained("ViT-B-16", "/nonexistent/weights.pt")
    with pytest.raises(GadmsError, match="download failed .*HF_HUB_OFFLINE=0"):
        resolve_pretrained("ViT-B-16", "openai")


def _activation(model) -> str:
    return type(model.towers.clip.transformer.resblocks[0].mlp.gelu).__name__


def test_bare_file_without_a_choice_warns_and_records_quickgelu(openai_checkpoint):
    path, _ = openai_checkpoint
    with pytest.warns(UserWarning, match=r"^pretrained .*tiny-openai\.pt: the file does not say which activation "
                                          r"its weights use; assuming QuickGELU \(OpenAI's CLIP weights\)"):
        model = build_model(ModelConfig.tiny(pretrained=str(path)))
    assert _activation(model) == "QuickGELU" and model.config.quick_gelu is True


@pytest.mark.parametrize("quick_gelu, activation", [(True, "QuickGELU"), (False, "GELU")])
def test_explicit_choice_is_used_without_a_warning(openai_checkpoint, quick_gelu, activation):
    path, _ = openai_checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_model(ModelConfig.tiny(pretrained=str(path), quick_gelu=quick_gelu))
    assert _activation(model) == activation and model.config.quick_gelu is quick_gelu


def test_random_init_defaults_to_quickgelu_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_model(ModelConfig.tiny())
    assert _activation(model) == "QuickGELU" and model.config.quick_gelu is True


@pytest.mark.parametrize("clip_model, pretrained, expected", [
    ("ViT-B-16", "openai", True),                 # OpenAI's weights: QuickGELU
    ("ViT-B-16", "laion2b_s34b_b88k", False),     # open_clip's LAION weights: GELU
    ("ViT-B-16-quickgelu", None, True),           # the model name says
])
def test_activation_known_from_tag_or_model_name(clip_model, pretrained, expected):
    config = load_model_config(clip_model)
    assert resolve_quick_gelu(clip_model, config, pretrained, None) is expected
    assert resolve_quick_gelu(clip_model, config, pretrained, expected) is expected
    with pytest.raises(GadmsError, match=f"quick_gelu {str(not expected).lower()} contradicts "):
        resolve_quick_gelu(clip_model, config, pretrained, not expected)
