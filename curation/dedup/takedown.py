"""Takedown at build: crops whose source or crop bytes, URL or pHash a takedown list names are never kept."""
from __future__ import annotations

import numpy as np

from storage.records import PersonCrop, Reject
from storage.takedown import TakedownList


def drop_taken_down(crops: list[PersonCrop], takedown: TakedownList,
                    radius: int) -> tuple[list[PersonCrop], list[Reject]]:
    """(crops no entry matches, a dedup reject `takedown` with the entry in `detail` for each of the others)."""
    if not len(takedown) or not crops:
        return crops, []
    near = takedown.phash_matches(np.array([c.phash for c in crops], dtype=np.uint64), radius)
    kept, rejects = [], []
    for crop, k in zip(crops, near):
        entry = takedown.sample_entry(crop.source_url, crop.page_url, crop.source_sha256, crop.crop_sha256, int(k))
        if entry is None:
            kept.append(crop)
        else:
            rejects.append(Reject("dedup", "takedown", url=crop.source_url, sample_id=crop.sample_id,
                                  detail=str(entry), bbox=crop.bbox))
    return kept, rejects
