"""`gadms export-model`: a checkpoint's towers load in open_clip ("local-dir:") and embed as the GA-DMS model."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from PIL import Image

from flows.cli import main
from gadms_model.data.transforms import eval_transform
from gadms_model.model import ModelConfig, build_model
from gadms_model import checkpoint as ckpt
from storage.errors import GadmsError

CAPTIONS = ["a woman in a red coat with a black backpack", "a man wearing blue jeans and white shoes"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A seeded tiny model saved as the trainer saves best.pt, exported through the CLI."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    config = ModelConfig.tiny(quick_gelu=False)  # GELU, not the default: the export must record it
    model = build_model(config).eval()
    ckpt.save({"model_config": config.model_dump(mode="json"), "model": model.state_dict(), "step": 1,
               "metrics": {"R1": 0.0}}, root / "best.pt")
    out = root / "open_clip"
    assert main(["export-model", str(root / "best.pt"), str(out)]) == 0
    return model, out


def test_export_writes_the_hub_layout(exported):
    model, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "open_clip_config.json",
                                                    "open_clip_model.safetensors"]
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["vision_cfg"]["image_size"] == [64, 32]
    assert config["model_cfg"]["text_cfg"]["context_length"] == 77
    assert config["model_cfg"]["quick_gelu"] is False
    assert config["preprocess_cfg"]["resize_mode"] == "squash"

    from safetensors.torch import load_file

    keys = set(load_file(str(out / "open_clip_model.safetensors")))
    assert keys == set(model.towers.clip.state_dict())
    assert not any(key.startswith(("towers.", "mtp_head", "classifier")) for key in keys)


def test_open_clip_loads_it_and_embeds_as_gadms(exported):
    import open_clip

    model, out = exported
    clip, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    # create_model loads strictly; check again that nothing was missing or left over.
    incompatible = open_clip.load_checkpoint(clip, str(out / "open_clip_model.safetensors"), strict=False)
    assert (incompatible.missing_keys, incompatible.unexpected_keys) == ([], [])
    assert tuple(clip.visual.image_size) == (64, 32)
    assert clip.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "GELU"

    photo = Image.fromarray(np.random.default_rng(2).integers(0, 256, (90, 50, 3), dtype=np.uint8))
    torch.testing.assert_close(preprocess(photo), eval_transform((64, 32))(photo), rtol=0, atol=0)

    ids = model.tokenizer(CAPTIONS)
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{out}")(CAPTIONS), ids)

    # float64 on both sides: the same weights through the same ops (fused vs. unfused attention), so the
    # embeddings agree to float64 roundoff (1e-16) amplified by a few layers, far inside 1e-9.
    clip, model = clip.double().eval(), model.double()
    images = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        # encode_image/encode_text normalise these in float32; float64 keeps the comparison exact.
        gadms_image = F.normalize(model.towers.image_tokens(images)[:, 0], dim=-1)
        gadms_text = F.normalize(model.towers.text_global(ids), dim=-1)
        torch.testing.assert_close(clip.encode_image(images, normalize=True), gadms_image, rtol=0, atol=1e-9)
        torch.testing.assert_close(clip.encode_text(ids, normalize=True), gadms_text, rtol=0, atol=1e-9)


def test_bad_checkpoint_fails_with_one_line(tmp_path, capsys):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export-model", str(bad), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(bad) in error and error.startswith("gadms export-model: error:")
    assert not (tmp_path / "out").exists()


def test_exported_weights_bring_their_activation(exported):
    """The folder's open_clip_config.json says GELU: pretrained=its weights builds GELU, and contradicting fails."""
    model, out = exported
    weights = str(out / "open_clip_model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reloaded = build_model(ModelConfig.tiny(pretrained=weights))
    assert reloaded.config.quick_gelu is False
    assert type(reloaded.towers.clip.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"
    ids = model.tokenizer(CAPTIONS)
    with torch.no_grad():
        assert torch.equal(reloaded.encode_text(ids), model.float().encode_text(ids))
    with pytest.raises(GadmsError, match=r"quick_gelu true contradicts .*open_clip_config\.json \(quick_gelu false\)"):
        build_model(ModelConfig.tiny(pretrained=weights, quick_gelu=True))
