"""The demo CLIP (`gadms synthweb train-clip`): the demo's stand-in for OpenAI's CLIP, which cannot be downloaded here.

GA-DMS starts from an aligned CLIP that knows colours and clothing but not the fine-grained descriptions of person
retrieval. The demo CLIP is made to know as little: a tiny CLIP (gadms-tiny, 128×64 images) aligned with CLIP's
own contrastive loss on synthetic persons captioned *coarsely*, with their gender and the two colours they wear
in either order ("a woman in blue and red"): not which garment has which colour, nor hair, garment types, shoes
or accessories. Training on the curated shards' MLLM captions then has something to add.

Its identities are numbered from DEMO_CLIP_FIRST_IDENTITY, disjoint from the rendered web's (0 .. images/4) and
from the demo's held-out benchmark (flows.demo.HELD_OUT_FIRST_IDENTITY); model selection uses its own val
identities, coarse too. The result ships as an open_clip folder (`export-model`'s layout) in
curation/synthweb/weights/synthweb-clip-demo, beside the demo detector.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from curation.synthweb.detector import DEMO_WEIGHTS as DEMO_DETECTOR_WEIGHTS
from curation.synthweb.benchmark import write_synthetic_benchmark
from gadms_model.export.open_clip_dir import WEIGHTS_FILE, export_open_clip
from gadms_model.model import ModelConfig
from gadms_model.training import TrainConfig, train
from storage.fs import make_folder

DEMO_CLIP_DIR = DEMO_DETECTOR_WEIGHTS.parent / "synthweb-clip-demo"
DEMO_CLIP_WEIGHTS = DEMO_CLIP_DIR / WEIGHTS_FILE
DEMO_CLIP_FIRST_IDENTITY = 2_000_000
DEMO_CLIP_IMAGE_SIZE = (128, 64)  # height, width: the demo's GA-DMS image size
# Adam's eps for the demo CLIP and the GA-DMS trained from it, as CLIP's: the fine-tuning recipe's 1e-3 swamps a
# tiny model's gradients.
TINY_MODEL_ADAM_EPS = 1e-6
# gadms-tiny's towers have 2 layers, fewer than the paper's GASS and MTP defaults assume.
TINY_TOWER_LAYERS = {"gass_layers": 2, "mtp_layers": 1}


def demo_clip_model_config(**overrides) -> ModelConfig:
    """GA-DMS (the paper's mode) on the demo CLIP's towers."""
    values = dict(clip_model="gadms-tiny", pretrained=str(DEMO_CLIP_WEIGHTS), image_size=DEMO_CLIP_IMAGE_SIZE,
                  **TINY_TOWER_LAYERS)
    return ModelConfig(**(values | overrides))


class DemoClipConfig(BaseModel):
    """`gadms synthweb train-clip` options."""

    model_config = ConfigDict(extra="forbid")

    out: str
    identities: int = Field(3000, ge=10, le=100_000, description="training identities")
    images_per_identity: int = Field(4, ge=1, le=100)
    val_identities: int = Field(100, ge=10, le=10_000)
    steps: int = Field(3000, ge=1, le=1_000_000)
    batch_size: int = Field(64, ge=2, le=4096)
    lr: float = Field(5e-4, gt=0, le=1)
    temperature: float = Field(0.05, gt=0, le=1, description="CLIP's initial temperature is 0.07")
    num_workers: int = Field(1, ge=0, le=64)
    seed: int = 0
    # The demo CLIP is gadms-tiny at the demo's image size; another open_clip ViT (ViT-B-16 at 384 x 128, on a GPU)
    # gives the paper's backbone an aligned start that knows as little (benchmarks/gadms_effect.py --model).
    # A config name (it also names the output folder), not a hub path or a file.
    clip_model: str = Field("gadms-tiny", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                            description="open_clip model config name")
    image_size: tuple[int, int] = Field(DEMO_CLIP_IMAGE_SIZE, description="height, width")

    @property
    def export_name(self) -> str:
        """The shipped folder's name for the demo CLIP itself, else one that names the backbone and size."""
        if (self.clip_model, self.image_size) == ("gadms-tiny", DEMO_CLIP_IMAGE_SIZE):
            return DEMO_CLIP_DIR.name
        return f"synthweb-clip-{self.clip_model}-{self.image_size[0]}x{self.image_size[1]}"


def demo_clip_train_config(config: DemoClipConfig, benchmark_root: Path) -> TrainConfig:
    return TrainConfig(
        output_dir=str(Path(config.out) / "model"),
        data={"kind": "benchmark", "path": str(benchmark_root), "benchmark": "rstpreid"},
        model={"clip_model": config.clip_model, "image_size": config.image_size, "mode": "clip",
               "temperature": config.temperature,  # a full-size ViT takes the paper's layer counts
               **(TINY_TOWER_LAYERS if config.clip_model == "gadms-tiny" else {})},
        validation={"dataset": "rstpreid", "root": str(benchmark_root)},
        optim={"lr": config.lr, "eps": TINY_MODEL_ADAM_EPS, "warmup_epochs": 0.5},
        epochs=1_000_000,
        max_steps=config.steps,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        checkpoint_every_steps=max(config.steps // 4, 1),
        seed=config.seed,
    )


def train_demo_clip(config: DemoClipConfig) -> dict:
    """Render the coarse-caption identities, align the CLIP on them, export it to `<out>/<config.export_name>`.
    Returns (and writes to `<out>/synthweb-clip-demo/training.json`) what was trained and its val figures."""
    out = Path(config.out)
    make_folder(str(out), "train-clip output folder")
    clock = time.perf_counter()
    benchmark = out / "coarse-identities"
    write_synthetic_benchmark(benchmark, train_identities=config.identities, val_identities=config.val_identities,
                              test_identities=0, images_per_identity=config.images_per_identity, seed=config.seed,
                              train_captions="coarse", query_captions="coarse",
                              size=(config.image_size[1], config.image_size[0]),
                              first_identity=DEMO_CLIP_FIRST_IDENTITY)
    result = train(demo_clip_train_config(config, benchmark))
    weights = export_open_clip(result.checkpoint_path, out / config.export_name)
    report = {
        "config": config.model_dump(exclude={"out"}),
        "identities": [DEMO_CLIP_FIRST_IDENTITY, DEMO_CLIP_FIRST_IDENTITY + config.identities + config.val_identities],
        "captions": "coarse: gender and the two colours worn (curation.synthweb.identities.coarse_caption)",
        "steps": result.steps,
        "val_coarse": result.best_metrics,
        "checkpoint": str(Path(result.checkpoint_path).relative_to(out)),  # no path of this machine in the file
        "weights": weights.name,
        "weights_bytes": weights.stat().st_size,
        "seconds": round(time.perf_counter() - clock, 1),
    }
    (weights.parent / "training.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return report | {"weights": str(weights)}
