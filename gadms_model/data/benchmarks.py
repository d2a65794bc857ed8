"""The three public text-based person retrieval benchmarks as training and evaluation splits; their released
layouts are read by storage.benchmarks.

Train pids are remapped to 0..N-1 in order of the released id (for CUHK-PEDES this is id − 1, as in IRRA);
val/test keep the released ids, which only need to be equal within one identity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from storage.benchmarks import BENCHMARKS, BenchmarkFormatError, checked_record, dataset_dir, read_records

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkFormatError", "EvalSplit", "TrainSample", "load_benchmark"]


@dataclass(frozen=True)
class TrainSample:
    """One (image, caption) pair of a training split; `image_id` counts images, `pid` identities from 0."""

    pid: int
    image_id: int
    image_path: str
    caption: str


@dataclass
class EvalSplit:
    """A val or test split in the standard protocol: every caption is a query, every image once in the gallery."""

    image_paths: list[str] = field(default_factory=list)
    image_pids: list[int] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    caption_pids: list[int] = field(default_factory=list)


@dataclass
class Benchmark:
    name: str
    root: str
    train: list[TrainSample]
    val: EvalSplit | None  # None for ICFG-PEDES (no val split) or a file without val records
    test: EvalSplit

    @property
    def num_train_ids(self) -> int:
        return len({sample.pid for sample in self.train})


def load_benchmark(name: str, root: str | os.PathLike) -> Benchmark:
    """Read CUHK-PEDES, ICFG-PEDES or RSTPReid (`name`: cuhk-pedes | icfg-pedes | rstpreid) from `root`."""
    if name not in BENCHMARKS:
        raise BenchmarkFormatError(f"unknown benchmark {name!r}: expected one of {sorted(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    directory = dataset_dir(spec, Path(root))
    path = directory / spec.annotation_file
    images_dir = directory / "imgs"
    by_split: dict[str, list[tuple[int, str, list]]] = {split: [] for split in spec.splits}
    for index, record in enumerate(read_records(path)):
        split, pid, image_path, captions = checked_record(record, index, path, spec, images_dir)
        by_split[split].append((pid, image_path, captions))
    if not by_split["train"] and not by_split["test"]:
        raise BenchmarkFormatError(f"{path}: no train or test records")

    train_ids = {pid: new for new, pid in enumerate(sorted({pid for pid, _, _ in by_split["train"]}))}
    train = [
        TrainSample(pid=train_ids[pid], image_id=image_id, image_path=image_path, caption=caption)
        for image_id, (pid, image_path, captions) in enumerate(by_split["train"])
        for caption in captions
    ]
    val = _eval_split(by_split["val"]) if by_split.get("val") else None
    return Benchmark(name=name, root=str(directory), train=train, val=val, test=_eval_split(by_split["test"]))


def _eval_split(records: list[tuple[int, str, list]]) -> EvalSplit:
    split = EvalSplit()
    for pid, image_path, captions in records:
        split.image_paths.append(image_path)
        split.image_pids.append(pid)
        for caption in captions:
            split.captions.append(caption)
            split.caption_pids.append(pid)
    return split
