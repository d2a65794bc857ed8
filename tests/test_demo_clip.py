"""The demo CLIP: `gadms synthweb train-clip` writes an open_clip folder GA-DMS starts from, and the shipped one
knows coarse attributes (gender and colours) of identities it never saw."""
from __future__ import annotations

import json

import pytest
import torch

from flows.demo import HELD_OUT_FIRST_IDENTITY
from flows.demo_clip import DEMO_CLIP_DIR, DEMO_CLIP_FIRST_IDENTITY, DEMO_CLIP_WEIGHTS, demo_clip_model_config
from flows.cli import main
from curation.synthweb.benchmark import write_synthetic_benchmark
from gadms_model.evaluation import evaluate_model
from gadms_model.model import build_model

# The held-out benchmark (60 identities) and a web of up to 4M scenes (identities < scenes / 4) stay below them.
MAX_WEB_IDENTITIES = 1_000_000


def test_identity_ranges_are_disjoint():
    assert MAX_WEB_IDENTITIES <= HELD_OUT_FIRST_IDENTITY
    assert HELD_OUT_FIRST_IDENTITY + 60 <= DEMO_CLIP_FIRST_IDENTITY


def test_train_clip_aligns_another_backbone_under_a_name_that_says_which(tmp_path):
    from flows.demo_clip import DemoClipConfig, demo_clip_train_config

    demo = DemoClipConfig(out=str(tmp_path))
    vit = DemoClipConfig(out=str(tmp_path), clip_model="ViT-B-16", image_size=(384, 128))
    assert (demo.export_name, vit.export_name) == (DEMO_CLIP_DIR.name, "synthweb-clip-ViT-B-16-384x128")
    assert DemoClipConfig(out=str(tmp_path), image_size=(256, 128)).export_name == "synthweb-clip-gadms-tiny-256x128"
    tiny_model = demo_clip_train_config(demo, tmp_path).model
    vit_model = demo_clip_train_config(vit, tmp_path).model
    assert (tiny_model.clip_model, tiny_model.image_size, tiny_model.gass_layers, tiny_model.mtp_layers) == (
        "gadms-tiny", (128, 64), 2, 1)
    with pytest.raises(ValueError, match="clip_model"):  # it names a folder: no path in it
        DemoClipConfig(out=str(tmp_path), clip_model="../ViT-B-16")
    default = type(vit_model)(clip_model="ViT-B-16", image_size=(384, 128))  # the paper's layer counts
    assert (vit_model.clip_model, vit_model.image_size, vit_model.mode, vit_model.gass_layers,
            vit_model.mtp_layers) == ("ViT-B-16", (384, 128), "clip", default.gass_layers, default.mtp_layers)


@pytest.mark.slow
def test_train_clip_writes_a_folder_open_clip_and_gadms_load(tmp_path):
    import open_clip

    out = tmp_path / "clip"
    assert main(["synthweb", "train-clip", "--out", str(out), "--identities", "12", "--val-identities", "10",
                 "--images-per-identity", "2", "--steps", "2", "--batch-size", "8", "--num-workers", "0"]) == 0
    folder = out / DEMO_CLIP_DIR.name
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "open_clip_config.json",
                                                       "open_clip_model.safetensors", "training.json"]
    report = json.loads((folder / "training.json").read_text())
    assert report["steps"] == 2
    assert report["identities"] == [DEMO_CLIP_FIRST_IDENTITY, DEMO_CLIP_FIRST_IDENTITY + 22]
    captions = json.loads((out / "coarse-identities" / "RSTPReid" / "data_captions.json").read_text())
    assert {r["split"] for r in captions} == {"train", "val"} and len(captions) == 44
    assert all(r["id"] >= DEMO_CLIP_FIRST_IDENTITY for r in captions)
    assert all(r["captions"][0].split()[-5] in ("man", "woman") for r in captions)  # "... a man in red and blue"
    open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model = build_model(demo_clip_model_config(pretrained=str(folder / "open_clip_model.safetensors")))
    assert model.config.quick_gelu is not None


def test_train_clip_options_are_bounded(tmp_path, capsys):
    assert main(["synthweb", "train-clip", "--out", str(tmp_path / "c"), "--steps", "0"]) == 2
    assert "steps" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_shipped_demo_clip_is_small_and_loads():
    assert DEMO_CLIP_WEIGHTS.stat().st_size <= 20 * 2**20
    report = json.loads((DEMO_CLIP_DIR / "training.json").read_text())
    assert report["captions"].startswith("coarse")
    build_model(demo_clip_model_config())  # strict load: every key fits the demo's GA-DMS towers


@pytest.mark.slow
def test_shipped_demo_clip_knows_coarse_attributes_of_new_identities(tmp_path):
    """On 40 identities it never saw, coarse queries find their images far above chance (R@1 2.5)."""
    write_synthetic_benchmark(tmp_path, train_identities=0, val_identities=0, test_identities=40,
                              images_per_identity=2, seed=5, query_captions="coarse", size=(64, 128),
                              first_identity=3_000_000)
    torch.manual_seed(0)
    model = build_model(demo_clip_model_config(mode="sdm")).eval()
    metrics = evaluate_model(model, "rstpreid", str(tmp_path), progress=False)
    assert metrics["R1"] >= 4 * 2.5, metrics
