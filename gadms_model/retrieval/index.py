"""A gallery's embeddings, computed once per (checkpoint, gallery) and cached in a file.

The index file holds only tensors, strings and lists (loads with weights_only=True): format, checkpoint
sha256, gallery fingerprint, ids, captions, embeddings (N × dim, L2-normalised, fp16).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from gadms_model.retrieval.gallery import Gallery
from storage.errors import GadmsError, unpickling_reason

FORMAT = "gadms-gallery-index"


@dataclass
class GalleryIndex:
    ids: list[str]
    captions: list[str]
    embeddings: torch.Tensor  # N × dim, L2-normalised

    def search(self, query: torch.Tensor, k: int) -> list[tuple[int, float]]:
        """(gallery position, cosine score) of the k best matches of one normalised query embedding."""
        scores = self.embeddings.float() @ query.float()
        top = torch.topk(scores, min(k, len(scores)))
        return list(zip(top.indices.tolist(), top.values.tolist()))


class _GalleryImages(Dataset):
    def __init__(self, gallery: Gallery, transform):
        self.gallery, self.transform = gallery, transform

    def __len__(self) -> int:
        return len(self.gallery)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.gallery.image(index))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_index_path(checkpoint_sha256: str, fingerprint: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gadms" / "index"
    return cache / f"{checkpoint_sha256[:16]}-{fingerprint[:16]}.pt"


@torch.no_grad()
def build_index(model, gallery: Gallery, device: torch.device, batch_size: int = 128, num_workers: int = 0,
                progress: bool = True) -> GalleryIndex:
    from gadms_model.data.transforms import eval_transform

    loader = DataLoader(_GalleryImages(gallery, eval_transform(tuple(model.config.image_size))),
                        batch_size=batch_size, num_workers=num_workers)
    parts = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        for batch in tqdm(loader, desc="indexing gallery", unit="batch", disable=not progress):
            parts.append(model.encode_image(batch.to(device)).float().cpu())
    embeddings = torch.nn.functional.normalize(torch.cat(parts), dim=1).half()
    ids = [gallery.item_id(i) for i in range(len(gallery))]
    captions = [gallery.caption(i) for i in range(len(gallery))]
    return GalleryIndex(ids, captions, embeddings)


def load_or_build_index(model, checkpoint: str, gallery: Gallery, device: torch.device,
                        index_path: str | Path | None = None, **build_options) -> tuple[GalleryIndex, Path, bool]:
    """The cached index of (checkpoint, gallery), built and saved when missing or stale.
    Returns (index, its path, whether it was built now)."""
    checkpoint_sha = file_sha256(checkpoint)
    fingerprint = gallery.fingerprint()
    path = Path(index_path) if index_path else default_index_path(checkpoint_sha, fingerprint)
    if path.exists():
        try:
            stored = torch.load(path, weights_only=True)
        except Exception as exc:  # a damaged or foreign file: say which, do not guess
            raise GadmsError(f"{path}: not a readable gallery index: {unpickling_reason(exc)}") from None
        if (isinstance(stored, dict) and stored.get("format") == FORMAT
                and stored.get("checkpoint_sha256") == checkpoint_sha and stored.get("gallery") == fingerprint):
            return GalleryIndex(stored["ids"], stored["captions"], stored["embeddings"]), path, False
    index = build_index(model, gallery, device, **build_options)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": FORMAT, "checkpoint_sha256": checkpoint_sha, "gallery": fingerprint, "ids": index.ids,
                "captions": index.captions, "embeddings": index.embeddings}, tmp)
    os.replace(tmp, path)
    return index, path, True
