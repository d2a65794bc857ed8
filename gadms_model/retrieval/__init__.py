"""Text search over a gallery of person crops: `search(checkpoint, gallery, query, k)`, `gadms search`, and
`TextSearch` for answering many queries with one loaded model and index (`gadms browse`)."""
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


class TextSearch:
    """A checkpoint's model and the cached index of one gallery (built on first use), ready for queries."""

    def __init__(self, checkpoint: str, gallery: str, device: torch.device | str = "cpu",
                 index_path: str | None = None, batch_size: int = 128, progress: bool = True):
        from gadms_model.retrieval.gallery import Gallery
        from gadms_model.retrieval.index import load_or_build_index
        from gadms_model.checkpoint import load_model

        self.device = torch.device(device)
        self.model = load_model(checkpoint, self.device)
        self.gallery = Gallery(gallery)
        self.index, self.index_path, self.index_built = load_or_build_index(
            self.model, checkpoint, self.gallery, self.device, index_path, batch_size=batch_size, progress=progress)

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        """(gallery position, cosine score) of the k best items for a text query, best first."""
        with torch.no_grad():
            embedding = self.model.encode_text(self.model.tokenizer([query]).to(self.device))[0].cpu()
        return self.index.search(embedding, k)

    def hits(self, top: list[tuple[int, float]]) -> list[dict]:
        """`top` as {"rank", "score", "id", "caption"} records."""
        return [{"rank": rank, "score": round(score, 6), "id": self.index.ids[i], "caption": self.index.captions[i]}
                for rank, (i, score) in enumerate(top, start=1)]


def search(checkpoint: str, gallery: str, query: str, k: int = 10, device: torch.device | str = "cpu",
           index_path: str | None = None, sheet_path: str | Path | None = None, batch_size: int = 128,
           progress: bool = True) -> SearchResults:
    """Top-k gallery items for a text query; writes a contact sheet PNG when `sheet_path` is given."""
    from storage.reports import contact_sheet

    searcher = TextSearch(checkpoint, gallery, device, index_path, batch_size=batch_size, progress=progress)
    top = searcher.top(query, k)
    written = None
    if sheet_path is not None:
        written = str(contact_sheet(
            [searcher.gallery.image(i) for i, _ in top], [searcher.index.ids[i][-20:] for i, _ in top], sheet_path,
            columns=max(1, min(5, len(top))), thumb=(128, 256), text_width=20,
            titles=[f"#{rank}  {score:.3f}" for rank, (_, score) in enumerate(top, start=1)], heading=query,
            lines_per_caption=1))
    return SearchResults(searcher.hits(top), str(searcher.index_path), searcher.index_built, written)


__all__ = ["SearchResults", "TextSearch", "search"]
