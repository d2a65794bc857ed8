"""The benchmark contamination guard: seed the dedup index with the val and test images of CUHK-PEDES, ICFG-PEDES
or RSTPReid (read from their released layouts by storage.benchmarks), so a web crop within the near-duplicate
radius of one is rejected as `benchmark_overlap` (curation.dedup.index) instead of entering the training data
of a model later evaluated on that benchmark."""
from __future__ import annotations

import os
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from curation.dedup.index import DedupIndex
from curation.dedup.phash import phash64
from storage.benchmarks import BenchmarkFormatError, benchmark_spec, eval_images
from storage.shards import file_sha256


@dataclass(frozen=True)
class BenchmarkSeed:
    dataset: str  # the benchmark's directory name, the prefix of `detail` (RSTPReid)
    images: int
    skipped: bool  # seeded before from the same annotation file: nothing was read again


def seed_benchmark(index: DedupIndex, name: str, root: str | os.PathLike) -> BenchmarkSeed:
    """Insert the pHashes of benchmark `name`'s val and test images under `root` into `index` (replacing what an
    earlier seed of that benchmark inserted). Files are named `<dataset>:<path under imgs/>`."""
    dataset = benchmark_spec(name).directory
    annotations, images = eval_images(name, root)
    digest = file_sha256(str(annotations))
    if index.benchmark_source(dataset) == digest:
        return BenchmarkSeed(dataset, len(images), skipped=True)
    phashes = []
    for relative, path in images:
        try:
            with Image.open(path) as image:
                phashes.append(phash64(image.convert("RGB")))
        except (OSError, UnidentifiedImageError) as exc:
            raise BenchmarkFormatError(f"{path}: unreadable image of {dataset}: {exc}") from None
    index.seed_benchmark(dataset, digest, [f"{dataset}:{relative}" for relative, _ in images], phashes)
    return BenchmarkSeed(dataset, len(images), skipped=False)
