"""Losses (method §6): similarity distribution matching (SDM), identity (ID) and masked-token cross-entropy.

Under DDP, `sdm_loss` gathers the features and pids of all ranks and computes the loss of the whole global batch
on every rank; only the local slice carries gradient, so each rank's gradient is its own share of the global
loss's gradient (DDP then averages the shares: the global gradient divided by the world size, as in open_clip's
gathered contrastive loss).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gadms_model.masking import IGNORE_LABEL
from gadms_model.towers import at_least_float32


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_local_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` over ranks (equal first dimension everywhere); only this rank's slice keeps its graph."""
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def sdm_loss(image_features: torch.Tensor, text_features: torch.Tensor, pids: torch.Tensor,
             temperature: float = 0.02, epsilon: float = 1e-8, gather: bool = True) -> torch.Tensor:
    """L_i2t + L_t2i with p = softmax(cos/τ) per row and q = same-pid indicator normalised per row:
    L_i2t = mean_i Σ_j p_ij (log p_ij − log(q_ij + ε))."""
    if gather:
        image_features = gather_with_local_grad(image_features)
        text_features = gather_with_local_grad(text_features)
        pids = gather_with_local_grad(pids)
    image_features = F.normalize(at_least_float32(image_features), dim=-1)
    text_features = F.normalize(at_least_float32(text_features), dim=-1)
    same = (pids[:, None] == pids[None, :]).to(image_features.dtype)
    target = same / same.sum(dim=1, keepdim=True)
    image_to_text = image_features @ text_features.t() / temperature

    def divergence(logits: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        return (log_p.exp() * (log_p - torch.log(target + epsilon))).sum(dim=1).mean()

    return divergence(image_to_text) + divergence(image_to_text.t())


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, pids: torch.Tensor,
              temperature: float = 0.02, gather: bool = True) -> torch.Tensor:
    """CLIP's symmetric InfoNCE with the same-pid target q of `sdm_loss`: L_i2t = mean_i −Σ_j q_ij log p_ij, plus
    L_t2i (the mean of the two directions, as CLIP; with unique pids it is CLIP's cross-entropy exactly).

    Cross-entropy is KL(q‖p) up to q's entropy, where SDM is KL(p‖q): from random init p is near uniform, SDM's
    gradient is spread over the batch and a tiny model stalls for hundreds of steps; this loss does not, which is
    why the demo CLIP is aligned with it before GA-DMS trains with SDM."""
    if gather:
        image_features = gather_with_local_grad(image_features)
        text_features = gather_with_local_grad(text_features)
        pids = gather_with_local_grad(pids)
    image_features = F.normalize(at_least_float32(image_features), dim=-1)
    text_features = F.normalize(at_least_float32(text_features), dim=-1)
    same = (pids[:, None] == pids[None, :]).to(image_features.dtype)
    target = same / same.sum(dim=1, keepdim=True)
    image_to_text = image_features @ text_features.t() / temperature

    def cross_entropy(logits: torch.Tensor) -> torch.Tensor:
        return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()

    return (cross_entropy(image_to_text) + cross_entropy(image_to_text.t())) / 2


def id_loss(image_logits: torch.Tensor, text_logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """Mean of the identity cross-entropies of the image and the text logits (one shared classifier)."""
    image_loss = F.cross_entropy(at_least_float32(image_logits), pids)
    return (image_loss + F.cross_entropy(at_least_float32(text_logits), pids)) / 2


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at masked positions: logits (..., V), labels (...) with IGNORE_LABEL (-100) elsewhere.
    Used for IRRA's MLM and GA-DMS's masked token prediction (MTP)."""
    return F.cross_entropy(at_least_float32(logits.reshape(-1, logits.shape[-1])), labels.reshape(-1),
                           ignore_index=IGNORE_LABEL)

