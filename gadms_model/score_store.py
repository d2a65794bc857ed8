"""The per-dataset store of GASS scores (method §4 [D]): one num_captions × context tensor, initial 0.85.

Every training step writes the scores it computed for its captions; under DDP the update is all-gathered, so
every rank's store holds every rank's freshest scores and a caption's masks never depend on which rank saw it
last. Kept in float16 by default (10 M captions × 77 positions = 1.5 GB of host memory); reads return float32.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from storage.errors import GadmsError, unpickling_reason


class ScoreStore:
    def __init__(self, num_captions: int, context_length: int = 77, initial: float = 0.85,
                 dtype: torch.dtype = torch.float16, device: torch.device | str = "cpu"):
        if num_captions < 1:
            raise ValueError(f"num_captions must be positive, got {num_captions}")
        self.scores = torch.full((num_captions, context_length), initial, dtype=dtype, device=device)

    @property
    def num_captions(self) -> int:
        return self.scores.shape[0]

    def _check_ids(self, ids: torch.Tensor) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_captions):
            raise IndexError(f"caption ids must lie in 0..{self.num_captions - 1}, "
                             f"got {int(ids.min())}..{int(ids.max())}")

    def gather(self, ids: torch.Tensor) -> torch.Tensor:
        """len(ids) × context float32 scores, on the device of `ids`."""
        self._check_ids(ids)
        return self.scores[ids.to(self.scores.device)].to(device=ids.device, dtype=torch.float32)

    def update(self, ids: torch.Tensor, scores: torch.Tensor) -> None:
        """Write `scores` (len(ids) × context) at `ids`, and every other rank's update when torch.distributed
        is initialised (a collective: every rank must call it in the same step)."""
        if ids.shape[0] != scores.shape[0] or scores.shape[1:] != self.scores.shape[1:]:
            raise ValueError(f"scores of shape {tuple(scores.shape)} do not fit ids of shape {tuple(ids.shape)} "
                             f"and context {self.scores.shape[1]}")
        ids, scores = ids.detach().to(scores.device), scores.detach()  # one device for the collectives (NCCL)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ids, scores = _all_gather_rows(ids, scores)
        self._check_ids(ids)
        self.scores[ids.to(self.scores.device)] = scores.to(device=self.scores.device, dtype=self.scores.dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"scores": self.scores.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        scores = state.get("scores") if isinstance(state, dict) else None
        if not isinstance(scores, torch.Tensor) or scores.shape != self.scores.shape:
            found = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise GadmsError(f"score store state: expected 'scores' of shape {tuple(self.scores.shape)}, "
                             f"found {found}")
        self.scores.copy_(scores)


def load_token_scores(path: str, store: ScoreStore) -> None:
    """Fill `store` from a torch file {"scores": tensor} of its shape with values in [0, 1] (checked: the file
    is untrusted input, loaded without unpickling code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GadmsError(f"token_scores {path}: no such file") from None
    except Exception as exc:  # a corrupt file or one holding code: never a traceback, never executed
        raise GadmsError(f"token_scores {path}: not a torch tensor file ({unpickling_reason(exc)})") from None
    if not isinstance(state, dict) or "scores" not in state:
        found = "a dict without 'scores'" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise GadmsError(f"token_scores {path}: expected {{'scores': tensor}}, found {found}")
    scores = state["scores"]
    if not isinstance(scores, torch.Tensor) or scores.shape != store.scores.shape:
        found = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise GadmsError(f"token_scores {path}: 'scores' must be a tensor of shape {tuple(store.scores.shape)} "
                         f"(training pairs × context), found {found}")
    scores = scores.float()
    if not bool(torch.isfinite(scores).all()) or float(scores.min()) < 0 or float(scores.max()) > 1:
        raise GadmsError(f"token_scores {path}: 'scores' must lie in [0, 1]")
    store.scores.copy_(scores)


def _all_gather_rows(ids: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every rank's (ids, scores); ranks may hold different numbers of rows."""
    world = dist.get_world_size()
    count = torch.tensor([ids.shape[0]], device=ids.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    longest = int(max(int(c) for c in counts))
    padded_ids = torch.zeros(longest, dtype=ids.dtype, device=ids.device)
    padded_ids[: ids.shape[0]] = ids
    padded_scores = torch.zeros(longest, *scores.shape[1:], dtype=scores.dtype, device=scores.device)
    padded_scores[: scores.shape[0]] = scores
    all_ids = [torch.empty_like(padded_ids) for _ in range(world)]
    all_scores = [torch.empty_like(padded_scores) for _ in range(world)]
    dist.all_gather(all_ids, padded_ids)
    dist.all_gather(all_scores, padded_scores)
    ids = torch.cat([rank_ids[: int(n)] for rank_ids, n in zip(all_ids, counts)])
    scores = torch.cat([rank_scores[: int(n)] for rank_scores, n in zip(all_scores, counts)])
    return ids, scores
