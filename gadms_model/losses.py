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


def _logits_and_target(image_features: torch.Tensor, text_features: torch.Tensor, pids: torch.Tensor,
                       temperature: float, gather: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(image_i, text_j)/τ over the (gathered) batch, and q: the same-pid indicator normalised per row."""
    if gather:
        image_features = gather_with_local_grad(image_features)
        text_features = gather_with_local_grad(text_features)
        pids = gather_with_local_grad(pids)
    image_features = F.normalize(at_least_float32(image_features), dim=-1)
    text_features = F.normalize(at_least_float32(text_features), dim=-1)
    same = (pids[:, None] == pids[None, :]).to(image_features.dtype)
    return image_features @ text_features.t() / temperature, same / same.sum(dim=1, keepdim=True)


def sdm_loss(image_features: torch.Tensor, text_features: torch.Tensor, pids: torch.Tensor,
             temperature: float = 0.02, epsilon: float = 1e-8, gather: bool = True) -> torch.Tensor:
    """L_i2t + L_t2i with p = softmax(cos/τ) per row and q = same-pid indicator normalised per row:
    L_i2t = mean_i Σ_j p_ij (log p_ij − log(q_ij + ε))."""
    image_to_text, target = _logits_and_target(image_features, text_features, pids, temperature, gather)

    def divergence(logits: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        return (log_p.exp() * (log_p - torch.log(target + epsilon))).sum(dim=1).mean()

    return divergence(image_to_text) + divergence(image_to_text.t())


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, pids: torch.Tensor,
              temperature: float = 0.02, gather: bool = True) -> torch.Tensor:
    """CLIP's symmetric InfoNCE with the same-pid target q of `sdm_loss`: L_i2t = mean_i −Σ_j q_ij log p_ij, plus
    L_t2i (the mean of the two directions, as CLIP; with unique pids it is CLIP's cross-entropy exactly).

    Cross-entropy is KL(q‖p) up to q's entropy, where SDM is KL(p‖q). From random init a tiny CLIP trained with
    SDM stayed near its uniform-prediction loss for 150-200 steps (64-pair batches from 512 pairs, τ 0.05, Adam
    3e-4 or 1e-3) where this loss (Adam 5e-4) fell from 4.38 to 2.35 in 125: the demo CLIP is aligned with it, and GA-DMS then trains with SDM."""
    image_to_text, target = _logits_and_target(image_features, text_features, pids, temperature, gather)

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

