"""The CLIP image and text towers, built from open_clip model configs, run with fused attention.

open_clip builds the modules (so checkpoints keep open_clip's / OpenAI's key layout); the forward passes here
reuse those modules' weights but call `F.scaled_dot_product_attention` directly (flash attention in bf16, with
`is_causal` for the text tower instead of an explicit mask), and the text tower can record, for the GASS pass,
what the last layers' real multi-head attention computed (queries, keys, values and the attention output before
the output projection). Checkpoints are read here too (weights only, the position grid resized to the model's).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from storage.compat import ensure_torchvision_ops
from storage.errors import GadmsError, unpickling_reason

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


def load_model_config(name_or_path: str) -> dict:
    """An open_clip model config: a JSON file path, a config shipped in gadms_model/model_configs, or an
    open_clip config name such as "ViT-B-16"."""
    candidates = [Path(name_or_path), MODEL_CONFIG_DIR / f"{name_or_path}.json"]
    for path in candidates:
        if path.is_file():
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise GadmsError(f"{path}: not a readable JSON model config: {exc}") from None
            if not isinstance(config, dict):
                raise GadmsError(f"{path}: a model config must be a JSON object")
            return config.get("model_cfg", config)
    ensure_torchvision_ops()
    import open_clip

    config = open_clip.get_model_config(name_or_path)
    if config is None:
        raise GadmsError(
            f"clip_model {name_or_path!r}: neither a JSON file, a config in {MODEL_CONFIG_DIR}, "
            "nor an open_clip model config name (e.g. ViT-B-16)"
        )
    return config


def build_clip(model_config: dict, image_size: tuple[int, int], context_length: int, quick_gelu: bool,
               source: str) -> nn.Module:
    """An open_clip `CLIP` with random weights, the vision grid sized for `image_size`."""
    ensure_torchvision_ops()
    from open_clip.model import CLIP

    unsupported = [key for key in ("custom_text", "text_cfg.hf_model_name", "vision_cfg.timm_model_name")
                   if _nested_get(model_config, key)]
    if unsupported or "vision_cfg" not in model_config or "text_cfg" not in model_config:
        raise GadmsError(f"clip_model {source!r}: only open_clip ViT configs with the CLIP text transformer "
                         f"are supported (found {', '.join(unsupported) or 'no vision_cfg/text_cfg'})")
    vision_cfg = dict(model_config["vision_cfg"], image_size=list(image_size))
    text_cfg = dict(model_config["text_cfg"], context_length=context_length)
    try:
        clip = CLIP(embed_dim=model_config["embed_dim"], vision_cfg=vision_cfg, text_cfg=text_cfg,
                    quick_gelu=quick_gelu)
    except (TypeError, ValueError, AssertionError) as exc:
        raise GadmsError(f"clip_model {source!r}: open_clip cannot build it: {exc}") from None
    _check_supported(clip, source)
    # The temperature is fixed (method §1): the checkpoint's logit scale is loaded but never trained.
    clip.logit_scale.requires_grad_(False)
    return clip


def _nested_get(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _check_supported(clip: nn.Module, source: str) -> None:
    from open_clip.transformer import ResidualAttentionBlock

    visual = clip.visual
    problems = []
    if not hasattr(visual, "conv1") or visual.attn_pool is not None or visual.pool_type != "tok" \
            or visual.final_ln_after_pool:
        problems.append("the vision tower must be a ViT pooled on its class token")
    if clip.text_pool_type != "argmax" or clip.attn_mask is None:
        problems.append("the text tower must be causal and pooled at EOT (argmax)")
    blocks = list(visual.transformer.resblocks) + list(clip.transformer.resblocks)
    if not all(type(block) is ResidualAttentionBlock for block in blocks):
        problems.append("custom attention blocks are not supported")
    if problems:
        raise GadmsError(f"clip_model {source!r}: {'; '.join(problems)}")


def _project(x: torch.Tensor, projection) -> torch.Tensor:
    if projection is None:
        return x
    if isinstance(projection, nn.Linear):
        return projection(x)
    return x @ projection


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """B×N×D → B×H×N×(D/H)."""
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """B×H×N×d → B×N×(H·d)."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


def attention_core(block: nn.Module, x: torch.Tensor, causal: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attention of an open_clip ResidualAttentionBlock, fused: (q, k, v, attention output before
    out_proj), heads concatenated (B×N×D each)."""
    attn = block.attn
    heads = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    out = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads),
                                         is_causal=causal)
    return q, k, v, merge_heads(out)


def block_output(block: nn.Module, x: torch.Tensor, attention_output: torch.Tensor) -> torch.Tensor:
    """The rest of the block: output projection, residual, MLP (pre-LN), residual."""
    x = x + block.ls_1(block.attn.out_proj(attention_output))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def block_forward(block: nn.Module, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """One open_clip ResidualAttentionBlock (pre-LN attention + MLP) with fused attention."""
    return block_output(block, x, attention_core(block, x, causal)[3])


def compiled(function):
    """`torch.compile` for the per-block functions: every block of a tower shares one graph (module weights
    are graph inputs), fusing LayerNorm, QuickGELU, residuals and autocast casts between the matmuls."""
    return torch.compile(function, dynamic=False)


@dataclass
class AttentionRecord:
    """What one text layer's attention computed, for GASS. Heads are concatenated along the last dim (B×N×D).

    `output` is the attention output before the output projection and stays in the autograd graph (GASS takes
    the gradient of the image-text similarity with respect to it); the others are detached.
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    output: torch.Tensor
    heads: int


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision (AMP) values promoted to float32; float32 and float64 kept (tests check in float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def eot_positions(text_ids: torch.Tensor) -> torch.Tensor:
    """Index of EOT in each row (the highest id, as CLIP pools)."""
    return text_ids.argmax(dim=-1)


class ClipTowers(nn.Module):
    """Holds the open_clip CLIP under `.clip` (its state-dict keys are the checkpoint keys)."""

    def __init__(self, clip: nn.Module, compile_blocks: bool = False):
        super().__init__()
        self.clip = clip
        maybe_compiled = compiled if compile_blocks else (lambda function: function)
        self.run_block = maybe_compiled(block_forward)
        # GASS differentiates w.r.t. the attention output: it must stay a tensor between two graphs.
        self.run_attention = maybe_compiled(attention_core)
        self.run_block_output = maybe_compiled(block_output)

    @property
    def embed_dim(self) -> int:
        return self.clip.visual.output_dim

    @property
    def text_layers(self) -> int:
        return len(self.clip.transformer.resblocks)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """B×(1+P)×E projected tokens after ln_post; index 0 is the global (CLS) feature."""
        visual = self.clip.visual
        x = visual._embeds(images)
        for block in visual.transformer.resblocks:
            x = self.run_block(block, x, causal=False)
        return _project(visual.ln_post(x), visual.proj)

    def _text_embeds(self, text_ids: torch.Tensor) -> torch.Tensor:
        clip = self.clip
        return clip.token_embedding(text_ids) + clip.positional_embedding[: text_ids.shape[1]]

    def _text_hidden(self, text_ids: torch.Tensor) -> torch.Tensor:
        """B×N×width output of the last text block, before ln_final."""
        x = self._text_embeds(text_ids)
        for block in self.clip.transformer.resblocks:
            x = self.run_block(block, x, causal=True)
        return x

    def _eot_feature(self, hidden: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """B×E projected feature at each caption's EOT position."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return _project(self.clip.ln_final(hidden[rows, eot_positions(text_ids)]), self.clip.text_projection)

    def text_global(self, text_ids: torch.Tensor) -> torch.Tensor:
        """B×E projected EOT feature (not normalised)."""
        return self._eot_feature(self._text_hidden(text_ids), text_ids)

    def text_tokens(self, text_ids: torch.Tensor) -> torch.Tensor:
        """B×N×E projected features of every position after ln_final."""
        return _project(self.clip.ln_final(self._text_hidden(text_ids)), self.clip.text_projection)

    def text_global_and_tokens(self, global_ids: torch.Tensor, token_ids: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """`text_global(global_ids)` and `text_tokens(token_ids)` from one pass over both batches: the same
        arithmetic per caption with half the kernel launches (a training step on a GPU is launch-bound)."""
        hidden_global, hidden_tokens = self._text_hidden(torch.cat([global_ids, token_ids])).split(
            [global_ids.shape[0], token_ids.shape[0]])
        tokens = _project(self.clip.ln_final(hidden_tokens), self.clip.text_projection)
        return self._eot_feature(hidden_global, global_ids), tokens

    def text_global_recorded(self, text_ids: torch.Tensor, num_layers: int
                             ) -> tuple[torch.Tensor, list[AttentionRecord]]:
        """EOT feature with a graph back to the last `num_layers` layers' attention outputs, and their records.

        The earlier layers run without a graph: GASS needs no gradient below the first recorded layer. The
        recorded part is built even when the weights are frozen (its input requires grad).
        """
        blocks = list(self.clip.transformer.resblocks)
        first_recorded = len(blocks) - num_layers
        with torch.no_grad():
            x = self._text_embeds(text_ids)
            for block in blocks[:first_recorded]:
                x = self.run_block(block, x, causal=True)
        x = x.detach().requires_grad_(True)
        records = []
        for block in blocks[first_recorded:]:
            query, key, value, output = self.run_attention(block, x, causal=True)
            x = self.run_block_output(block, x, output)
            records.append(AttentionRecord(query=query.detach(), key=key.detach(), value=value.detach(),
                                           output=output, heads=block.attn.num_heads))
        return self._eot_feature(x, text_ids), records


# Metadata integers OpenAI's checkpoints carry beside the weights.
_OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, loaded without running code: `torch.load(weights_only=True)` or
    safetensors. Accepts a bare state dict or one under "state_dict"/"model"; strips DDP's "module." prefix."""
    path = Path(path)
    if not path.is_file():
        raise GadmsError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise GadmsError(f"{path}: not a readable safetensors file: {exc}") from None
    else:
        if _is_torchscript_archive(path):
            raise GadmsError(
                f"{path}: is a TorchScript archive (OpenAI's original release), which cannot be loaded without "
                "running its code; use open_clip's copy of the same weights (pretrained 'openai' when online, "
                "or its open_clip_model.safetensors / open_clip_pytorch_model.bin file)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
            raise GadmsError(f"{path}: not a weights-only PyTorch checkpoint: {unpickling_reason(exc)}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, (torch.Tensor, int)) for v in state.values()):
        raise GadmsError(f"{path}: expected a mapping of parameter names to tensors")
    state = {(key[len("module."):] if key.startswith("module.") else key): value for key, value in state.items()}
    return {key: value for key, value in state.items() if key not in _OPENAI_METADATA_KEYS}


def _is_torchscript_archive(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def resize_position_grid(position_embedding: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """(1 + g·g)×W class + square grid position embedding → (1 + h·w)×W float32, grid resized bilinearly."""
    class_token, grid = position_embedding[:1], position_embedding[1:]
    side = math.isqrt(grid.shape[0])
    if side * side != grid.shape[0]:
        raise ValueError(f"{grid.shape[0]} grid positions do not form a square grid")
    grid = grid.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=grid_size, mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(grid_size[0] * grid_size[1], -1)
    return torch.cat([class_token.float(), grid])  # float32: a half-precision checkpoint loses nothing more


def load_clip_weights(clip: nn.Module, path: str | Path) -> None:
    """Load an OpenAI- or open_clip-layout CLIP checkpoint into `clip`, resizing the image position grid to the
    model's. Missing or unexpected keys and shape mismatches fail with a GadmsError naming them."""
    state = read_state_dict(path)
    expected = clip.state_dict()
    key = "visual.positional_embedding"
    if key in state and key in expected and state[key].shape != expected[key].shape:
        try:
            state[key] = resize_position_grid(state[key], tuple(clip.visual.grid_size))
        except ValueError as exc:
            raise GadmsError(f"{path}: {key}: cannot resize to the model's grid: {exc}") from None
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    mismatched = [f"{name} {tuple(state[name].shape)} vs model {tuple(expected[name].shape)}"
                  for name in sorted(set(state) & set(expected)) if state[name].shape != expected[name].shape]
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_first(mismatched)})")
    if problems:
        raise GadmsError(f"{path}: checkpoint does not fit the model: {'; '.join(problems)}")
    clip.load_state_dict(state, strict=True)


def _first(items: list[str], shown: int = 4) -> str:
    return ", ".join(items[:shown]) + (", ..." if len(items) > shown else "")


def resolve_pretrained(clip_model: str, pretrained: str) -> Path:
    """A local checkpoint path, or the file of an open_clip pretrained tag (downloaded when online)."""
    path = Path(pretrained)
    if path.exists():
        return path
    ensure_torchvision_ops()
    import open_clip

    tag_config = open_clip.get_pretrained_cfg(clip_model, pretrained)
    if not tag_config:
        raise GadmsError(f"pretrained {pretrained!r}: neither a file nor an open_clip pretrained tag of "
                         f"{clip_model!r}")
    try:
        return Path(open_clip.download_pretrained(tag_config))
    except Exception as exc:  # hub/network errors come in many types
        raise GadmsError(f"pretrained {pretrained!r} of {clip_model!r}: download failed ({type(exc).__name__}); "
                         "this project runs offline by default: export HF_HUB_OFFLINE=0 or pass a local "
                         "checkpoint file") from None
