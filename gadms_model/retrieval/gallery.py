"""Galleries to search: a WebPerson output root (or its catalog.duckdb), a public-release Parquet folder (flat, or
a Hugging Face repository with data/train-*.parquet), or a folder of image files. Each gives ids, captions
(empty for plain images) and images by position."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image

from gadms_model.data.sources import ShardSource, open_image, public_parquet_source, webperson_source
from storage.errors import GadmsError
from storage.public import public_files

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


class Gallery:
    def __init__(self, location: str):
        self.location = location
        path = Path(location)
        self._shards: ShardSource | None = None
        self._files: list[Path] = []
        if path.suffix == ".duckdb" or (path / "manifest").is_dir():
            self._shards = webperson_source(location)
        elif path.is_dir() and public_files(location):
            self._shards = public_parquet_source(location)
        elif path.is_dir():
            self._files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not self._files:
                raise GadmsError(f"{location}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        else:
            raise GadmsError(f"{location}: not a WebPerson output root, catalog, Parquet folder or image folder")

    def __len__(self) -> int:
        return self._shards.num_images if self._shards else len(self._files)

    def item_id(self, index: int) -> str:
        if self._shards:
            return self._shards.sample_id(index)
        return self._files[index].relative_to(self.location).as_posix()

    def caption(self, index: int) -> str:
        return self._shards[2 * index].caption if self._shards else ""

    def image(self, index: int) -> Image.Image:
        if self._shards:
            return self._shards[2 * index].image
        return open_image(str(self._files[index]), str(self._files[index]))

    def fingerprint(self) -> str:
        """Changes when the gallery's files change (names, sizes, modification times)."""
        files = self._shards.files if self._shards else [str(p) for p in self._files]
        digest = hashlib.sha256()
        for name in files:
            stat = os.stat(name) if "://" not in name else None
            digest.update(f"{name}|{stat.st_size if stat else ''}|{stat.st_mtime_ns if stat else ''}\n".encode())
        return digest.hexdigest()
