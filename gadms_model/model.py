"""The GA-DMS model: CLIP towers, GASS-guided dual masking, the MTP head and the losses, in one module.

Modes (one module, flags for the ablations):
- "gadms": L = L_sdm(image, noise-masked text) + β·L_mtp(informative-masked text) [+ L_id when num_classes > 0].
  GASS is computed on the raw caption, written to the score store, and the masks are drawn from the store.
- "irra":  L = L_sdm(image, raw text) + L_id + L_mlm(random 15% BERT masking): the fine-tuning recipe/baseline.
- "sdm":   L = L_sdm [+ L_id].
- "clip":  L = L_clip [+ L_id]: CLIP's own contrastive loss, to align a CLIP from random init (the demo CLIP).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from gadms_model.activation import resolve_quick_gelu
from gadms_model.gass import gass_scores
from gadms_model.heads import IdentityClassifier, MaskedTokenHead
from gadms_model.losses import clip_loss, id_loss, mlm_loss, sdm_loss
from gadms_model.masking import IGNORE_LABEL, dual_mask, mask_candidates, random_mask
from gadms_model.score_store import ScoreStore
from gadms_model.tokenizer import VOCAB_SIZE, Tokenizer
from gadms_model.towers import (ClipTowers, build_clip, load_clip_weights, load_model_config,
                                resolve_pretrained)
from storage.errors import GadmsError

TINY_CONFIG = Path(__file__).parent / "model_configs" / "gadms-tiny.json"


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clip_model: str = Field("ViT-B-16", description="open_clip config name, or a path to a JSON model config")
    pretrained: str | None = Field(None, description="local checkpoint (OpenAI or open_clip layout), or an "
                                                     "open_clip pretrained tag (needs the network)")
    quick_gelu: bool | None = Field(None, description="true: QuickGELU (OpenAI's CLIP weights, the paper's); "
                                                      "false: GELU (open_clip's LAION/DataComp weights); None: "
                                                      "from the weights or model config when they say, else "
                                                      "QuickGELU (with a warning when pretrained is a bare file)")
    image_size: tuple[int, int] = Field((384, 128), description="height, width")
    context_length: int = Field(77, ge=3)
    mode: Literal["gadms", "irra", "sdm", "clip"] = "gadms"
    num_classes: int = Field(0, ge=0, description="identities for the ID loss; 0 disables it")
    temperature: float = Field(0.02, gt=0)
    # GASS (method §3)
    gass_layers: int = Field(8, ge=1, description="last text layers whose attention GASS reads")
    gass_normalisation: Literal["sample", "batch"] = "sample"
    # Dual masking (method §4)
    alpha_noise: float = Field(0.2, ge=0, le=1)
    alpha_informative: float = Field(0.3, ge=0, le=1)
    mask_lambda: float = 20.0
    gamma_noise: float = 0.9
    gamma_informative: float = 0.1
    mask_from: Literal["current", "stored", "fixed", "constant"] = Field(
        "current", description="current: masks use this step's scores (written to the store first); stored: "
                               "the scores stored before this step (initial 0.85 until a caption is scored); "
                               "fixed: the run's token_scores file, never updated and GASS never computed "
                               "(ablations: precomputed or oracle scores); constant: every score the initial "
                               "0.85, never updated, no GASS (the MTP-alone ablation)")
    # Heads and loss weights
    mtp_weight: float = Field(0.4, ge=0, description="β of L_mtp in 'gadms' mode")
    mlm_weight: float = Field(1.0, ge=0, description="weight of L_mlm in 'irra' mode")
    mlm_probability: float = Field(0.15, gt=0, le=1)
    id_weight: float = Field(1.0, ge=0)
    mtp_layers: int = Field(4, ge=1, description="transformer layers of the cross-modal MTP/MLM head")
    compile_blocks: bool = Field(False, description="torch.compile the transformer blocks (GPU training: "
                                                    "faster steps after a compile of about a minute)")

    @field_validator("image_size")
    @classmethod
    def _image_size_in_memory(cls, size: tuple[int, int]) -> tuple[int, int]:
        """[100000, 100000] would be killed for memory with no message."""
        if not all(16 <= side <= 4096 for side in size):
            raise ValueError(f"each side must lie in 16..4096, got {list(size)}")
        return size

    @classmethod
    def tiny(cls, **overrides) -> "ModelConfig":
        """A few-layer, 64-wide model on 64×32 images: random weights, for tests and CPU smoke runs."""
        # By name, not path: checkpoints store the config and must load from any checkout.
        values = dict(clip_model="gadms-tiny", image_size=(64, 32), gass_layers=2, mtp_layers=1)
        values.update(overrides)
        return cls(**values)


class GADMS(nn.Module):
    def __init__(self, config: ModelConfig, towers: ClipTowers):
        super().__init__()
        self.config = config
        self.towers = towers
        self.tokenizer = Tokenizer(config.context_length)
        width = towers.embed_dim
        self.mtp_head = (MaskedTokenHead(width, VOCAB_SIZE, layers=config.mtp_layers,
                                         compile_blocks=config.compile_blocks)
                         if config.mode in ("gadms", "irra") else None)
        self.classifier = IdentityClassifier(width, config.num_classes) if config.num_classes > 0 else None

    def _probability_kwargs(self) -> dict[str, float]:
        c = self.config
        return dict(alpha_noise=c.alpha_noise, alpha_informative=c.alpha_informative, mask_lambda=c.mask_lambda,
                    gamma_noise=c.gamma_noise, gamma_informative=c.gamma_informative)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised global image features (B×E)."""
        return nn.functional.normalize(self.towers.image_tokens(images)[:, 0].float(), dim=-1)

    def encode_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        """L2-normalised global text features (B×E) of token ids from `self.tokenizer`."""
        return nn.functional.normalize(self.towers.text_global(text_ids).float(), dim=-1)

    def mask_scores(self, text_ids: torch.Tensor, image_features: torch.Tensor,
                    caption_ids: torch.Tensor | None, score_store: ScoreStore | None) -> torch.Tensor:
        """The scores the masks are drawn from: this step's GASS, through the score store when one is given."""
        c = self.config
        if c.mask_from in ("fixed", "constant"):
            if score_store is None or caption_ids is None:
                raise ValueError(f"mask_from {c.mask_from!r} needs a score store and the batch's caption_ids")
            return score_store.gather(caption_ids)
        scores = gass_scores(self.towers, text_ids, image_features, c.gass_layers, c.gass_normalisation)
        if score_store is None:
            return scores
        if caption_ids is None:
            raise ValueError("a score store needs the batch's caption_ids")
        if c.mask_from == "stored":
            stored = score_store.gather(caption_ids)
            score_store.update(caption_ids, scores)
            return stored
        score_store.update(caption_ids, scores)
        return score_store.gather(caption_ids)

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor, pids: torch.Tensor,
                caption_ids: torch.Tensor | None = None, score_store: ScoreStore | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Training losses of a batch: "loss" (with graph) and each term plus logging stats (detached).

        `pids` are identity labels (0..num_classes-1 when the ID loss is on); `generator` (on the device of
        `text_ids`) drives the masking draws."""
        c = self.config
        image_tokens = self.towers.image_tokens(images)
        image_global = image_tokens[:, 0]
        out: dict[str, torch.Tensor] = {}
        mask_ids = mask_labels = None
        if c.mode == "gadms":
            scores = self.mask_scores(text_ids, image_global, caption_ids, score_store)
            masks = dual_mask(text_ids, scores, generator, self.tokenizer.mask_token_id, **self._probability_kwargs())
            align_ids, mask_ids, mask_labels = masks.noise_ids, masks.mtp_ids, masks.mtp_labels
            out.update(_masking_stats(text_ids, scores, masks.noise, masks.informative))
        else:
            align_ids = text_ids
            if c.mode == "irra":
                mask_ids, mask_labels = random_mask(text_ids, generator, c.mlm_probability,
                                                    self.tokenizer.mask_token_id)
        if mask_ids is None:
            text_global = self.towers.text_global(align_ids)
        else:
            text_global, mask_tokens = self.towers.text_global_and_tokens(align_ids, mask_ids)
        if c.mode == "clip":
            terms = {"clip": (clip_loss(image_global, text_global, pids, c.temperature), 1.0)}
        else:
            terms = {"sdm": (sdm_loss(image_global, text_global, pids, c.temperature), 1.0)}
        if mask_ids is not None:
            predicted = mask_labels != IGNORE_LABEL
            logits = self.mtp_head(mask_tokens, image_tokens, predicted)
            name, weight = ("mtp", c.mtp_weight) if c.mode == "gadms" else ("mlm", c.mlm_weight)
            terms[name] = (mlm_loss(logits, mask_labels[predicted]), weight)
            out[f"{name}_mask_rate"] = predicted.sum() / mask_candidates(text_ids).sum().clamp_min(1)
        if self.classifier is not None:
            terms["id"] = (id_loss(self.classifier(image_global.float()), self.classifier(text_global.float()),
                                   pids), c.id_weight)
        out["loss"] = sum(value * weight for value, weight in terms.values())
        out.update({name: value.detach() for name, (value, _) in terms.items()})
        return out


def _masking_stats(text_ids: torch.Tensor, scores: torch.Tensor, noise: torch.Tensor, informative: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    candidates = mask_candidates(text_ids)
    count = candidates.sum().clamp_min(1)

    def mean_score(selected: torch.Tensor) -> torch.Tensor:  # NaN when nothing was selected
        return (scores * selected).sum() / selected.sum()

    return {
        "noise_mask_rate": noise.sum() / count,
        "gass_noise_masked": mean_score(noise),
        "gass_informative_masked": mean_score(informative),
        "gass_mean": (scores * candidates).sum() / count,
    }


def build_model(config: ModelConfig) -> GADMS:
    """Build GA-DMS from its config: the open_clip towers (weights from `pretrained` when given) and heads."""
    model_config = load_model_config(config.clip_model)
    # Resolved before any download, and recorded in the model's config (so checkpoints store the choice).
    quick_gelu = resolve_quick_gelu(config.clip_model, model_config, config.pretrained, config.quick_gelu)
    config = config.model_copy(update={"quick_gelu": quick_gelu})
    checkpoint = resolve_pretrained(config.clip_model, config.pretrained) if config.pretrained else None
    clip = build_clip(model_config, config.image_size, config.context_length, quick_gelu, config.clip_model)
    if model_config["text_cfg"].get("vocab_size", VOCAB_SIZE) != VOCAB_SIZE:
        raise GadmsError(f"clip_model {config.clip_model!r}: text vocab_size must be {VOCAB_SIZE} (CLIP BPE)")
    towers = ClipTowers(clip, compile_blocks=config.compile_blocks)
    if config.mode == "gadms" and config.gass_layers > towers.text_layers:
        raise GadmsError(f"gass_layers {config.gass_layers} exceeds the {towers.text_layers} text layers of "
                         f"{config.clip_model!r}")
    if checkpoint is not None:
        load_clip_weights(clip, checkpoint)
    return GADMS(config, towers)
