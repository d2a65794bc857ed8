"""Text search over a gallery of person crops: `search(checkpoint, gallery, query, k)` and `gadms search`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class SearchResults:
    hits: list[dict]  # {"rank", "score", "id", "caption"}, best first
    index_path: str
    index_built: bool
    sheet_path: str | None


def search(checkpoint: str, gallery: str, query: str, k: int = 10, device: torch.device | str = "cpu",
           index_path: str | None = None, sheet_path: str | Path | None = None, batch_size: int = 128,
           progress: bool = True) -> SearchResults:
    """Top-k gallery items for a text query; writes a contact sheet PNG when `sheet_path` is given."""
    from gadms_model.retrieval.gallery import Gallery
    from gadms_model.retrieval.index import load_or_build_index
    from gadms_model.retrieval.sheet import contact_sheet
    from gadms_model.training.checkpoint import load_model

    device = torch.device(device)
    model = load_model(checkpoint, device)
    items = Gallery(gallery)
    index, path, built = load_or_build_index(model, checkpoint, items, device, index_path,
                                             batch_size=batch_size, progress=progress)
    with torch.no_grad():
        query_embedding = model.encode_text(model.tokenizer([query]).to(device))[0].cpu()
    top = index.search(query_embedding, k)
    hits = [{"rank": rank, "score": round(score, 6), "id": index.ids[i], "caption": index.captions[i]}
            for rank, (i, score) in enumerate(top, start=1)]
    written = None
    if sheet_path is not None:
        written = str(contact_sheet(query, [(items.image(i), score, index.ids[i]) for i, score in top], sheet_path))
    return SearchResults(hits, str(path), built, written)


__all__ = ["SearchResults", "search"]
