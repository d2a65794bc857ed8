"""Heads on top of the CLIP towers: the masked-token prediction head (IRRA's cross-modal module, method §5) and the
identity classifier used by the ID loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from storage.compat import ensure_torchvision_ops
from gadms_model.towers import block_forward, compiled, merge_heads, split_heads


class MaskedTokenHead(nn.Module):
    """Text tokens (queries) attend to image tokens (keys/values) with one multi-head cross-attention (no
    residual), then a pre-LN transformer (MLP 4×, QuickGELU), LayerNorm, and the vocabulary head
    Linear → QuickGELU → LayerNorm → Linear(vocab). Used for GA-DMS's MTP and IRRA's MLM."""

    def __init__(self, width: int, vocab_size: int, layers: int = 4, heads: int | None = None,
                 compile_blocks: bool = False):
        super().__init__()
        ensure_torchvision_ops()
        from open_clip.transformer import LayerNorm, QuickGELU, Transformer

        heads = heads or max(1, width // 64)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_pre_t = LayerNorm(width)
        self.ln_pre_i = LayerNorm(width)
        self.transformer = Transformer(width=width, layers=layers, heads=heads, act_layer=QuickGELU)
        self.ln_post = LayerNorm(width)
        self.mlm_head = nn.Sequential()
        self.mlm_head.add_module("dense", nn.Linear(width, width))
        self.mlm_head.add_module("gelu", QuickGELU())
        self.mlm_head.add_module("ln", LayerNorm(width))
        self.mlm_head.add_module("fc", nn.Linear(width, vocab_size))
        self._init_weights(width, layers)
        self.run_block = compiled(block_forward) if compile_blocks else block_forward

    def _init_weights(self, width: int, layers: int) -> None:
        # IRRA's initialisation of its cross-modal module.
        attn_std = width ** -0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.cross_attn.in_proj_weight, std=attn_std)
        nn.init.normal_(self.cross_attn.out_proj.weight, std=proj_std)
        nn.init.normal_(self.mlm_head.dense.weight, std=fc_std)
        nn.init.normal_(self.mlm_head.fc.weight, std=proj_std)

    def _cross_attention(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        attn = self.cross_attn
        width, heads = attn.embed_dim, attn.num_heads
        w_q, w_kv = attn.in_proj_weight.split([width, 2 * width])
        b_q, b_kv = attn.in_proj_bias.split([width, 2 * width])
        query = F.linear(self.ln_pre_t(text_tokens), w_q, b_q)
        key, value = F.linear(self.ln_pre_i(image_tokens), w_kv, b_kv).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(split_heads(query, heads), split_heads(key, heads),
                                             split_heads(value, heads))
        return attn.out_proj(merge_heads(out))

    def forward(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor, positions: torch.Tensor
                ) -> torch.Tensor:
        """Vocabulary logits (K×V) at the K `positions` (B×N bool) of the B×N×E text tokens.

        Only the predicted positions go through the vocabulary head (the cross-entropy ignores the rest)."""
        x = self._cross_attention(text_tokens, image_tokens)
        for block in self.transformer.resblocks:
            x = self.run_block(block, x, causal=False)
        return self.mlm_head(self.ln_post(x[positions]))


class IdentityClassifier(nn.Linear):
    """One linear classifier over identities, shared by the image and text global features (IRRA)."""

    def __init__(self, width: int, num_classes: int):
        super().__init__(width, num_classes)
        nn.init.normal_(self.weight, std=0.001)
        nn.init.zeros_(self.bias)

