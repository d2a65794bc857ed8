"""The training job's config: one YAML file, validated (unknown keys rejected), saved beside the run's outputs.

Pre-training (GA-DMS on WebPerson) and fine-tuning (the IRRA recipe on a benchmark) differ in data and in
`model.mode` (gadms | sdm | irra); `init_from` starts a fine-tune from a pre-training checkpoint.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gadms_model.model import ModelConfig

BenchmarkName = Literal["cuhk-pedes", "icfg-pedes", "rstpreid"]


class DataConfig(BaseModel):
    """Where training pairs come from.

    kind webperson: `path` is a WebPerson output root (or its catalog.duckdb); complete shards only.
    kind public: `path` is the public release: a Parquet file or folder (e.g. the Hugging Face repository, with
    data/train-*.parquet), or the authors' JSON (images/ beside it).
    kind benchmark: `path` is a benchmark root and `benchmark` its name; its train split is used.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["webperson", "public", "benchmark"]
    path: str
    benchmark: BenchmarkName | None = None

    @model_validator(mode="after")
    def _benchmark_named(self) -> "DataConfig":
        if (self.kind == "benchmark") != (self.benchmark is not None):
            raise ValueError("'benchmark' is required with kind 'benchmark' and only allowed with it")
        return self


class ValidationConfig(BaseModel):
    """The benchmark split used for model selection: its val split, never test."""

    model_config = ConfigDict(extra="forbid")

    dataset: BenchmarkName
    root: str
    every_epochs: int = Field(1, ge=1)
    metric: Literal["R1", "R5", "R10", "mAP", "mINP"] = "R1"


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-3
    weight_decay: float = 4e-5
    warmup_epochs: float = Field(5.0, ge=0)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    schedule_steps: int | None = Field(
        None, ge=1, description="optimiser steps the cosine decays to 0 over (default: epochs × steps per epoch); "
                                "a fixed max_steps budget names it so the lr reaches 0 at its end")
    new_module_lr_factor: float = Field(1.0, gt=0, description="IRRA fine-tuning uses 5 for non-CLIP modules")
    bias_lr_factor: float = Field(1.0, gt=0, description="IRRA fine-tuning uses 2 (and no decay) for biases")
    grad_clip_norm: float | None = Field(None, gt=0)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_dir: str
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig, description="num_classes comes from the data")
    init_from: str | None = Field(None, description="checkpoint whose model weights start this run (fine-tuning)")
    token_scores: str | None = Field(
        None, description="torch file {'scores': num_pairs × context tensor in [0, 1]} that fills the GASS score "
                          "store at the start; model.mask_from 'fixed' needs it (masks from these scores only)")
    validation: ValidationConfig | None = Field(
        None, description="model selection split; defaults to the training benchmark's val split when it has one"
    )
    optim: OptimConfig = Field(default_factory=OptimConfig)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=2, description="per process and micro-batch")
    grad_accum_steps: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps (a fixed budget)")
    num_workers: int = Field(2, ge=0, le=256)
    augment: bool = Field(True, description="the recipe's train augmentation; false: resize + normalise only")
    shuffle_window: int = Field(8, ge=1, description="row groups shuffled together (streaming locality)")
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every_steps: int = Field(0, ge=0, description="0: at the end of each epoch only")
    keep_checkpoints: int = Field(2, ge=1)
    log_every_steps: int = Field(10, ge=1, description="TensorBoard scalars; the JSONL file gets every step")
    progress: bool = True

    @model_validator(mode="after")
    def _score_source_named(self) -> "TrainConfig":
        if self.model.mask_from == "fixed" and self.token_scores is None:
            raise ValueError("model.mask_from 'fixed' needs token_scores (the file the masks come from); "
                             "'constant' masks from the initial 0.85 everywhere")
        if self.model.mask_from == "constant" and self.token_scores is not None:
            raise ValueError("model.mask_from 'constant' ignores token_scores: use 'fixed' to mask from them")
        return self
