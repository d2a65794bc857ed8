"""Readers for the three public text-based person retrieval benchmarks, in their released formats.

    CUHK-PEDES/reid_raw.json        split, captions (2), file_path, processed_tokens, id (1-based)
    ICFG-PEDES/ICFG-PEDES.json      split, captions (1), file_path, processed_tokens, id (no val split)
    RSTPReid/data_captions.json     id, img_path, captions (2), split
Images live under `<dataset dir>/imgs/`. `root` may be the dataset directory itself or its parent.

Train pids are remapped to 0..N-1 in order of the released id (for CUHK-PEDES this is id − 1, as in IRRA);
val/test keep the released ids, which only need to be equal within one identity.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from storage.errors import GadmsError


@dataclass(frozen=True)
class BenchmarkSpec:
    directory: str
    annotation_file: str
    path_field: str
    splits: tuple[str, ...]


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "cuhk-pedes": BenchmarkSpec("CUHK-PEDES", "reid_raw.json", "file_path", ("train", "val", "test")),
    "icfg-pedes": BenchmarkSpec("ICFG-PEDES", "ICFG-PEDES.json", "file_path", ("train", "test")),
    "rstpreid": BenchmarkSpec("RSTPReid", "data_captions.json", "img_path", ("train", "val", "test")),
}


class BenchmarkFormatError(GadmsError):
    pass


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


def _dataset_dir(spec: BenchmarkSpec, root: Path) -> Path:
    for candidate in (root / spec.directory, root):
        if (candidate / spec.annotation_file).is_file():
            return candidate
    raise BenchmarkFormatError(
        f"{root / spec.directory / spec.annotation_file}: annotation file not found "
        f"(pass the directory that holds {spec.directory}/ or {spec.annotation_file})"
    )


def _read_records(path: Path) -> list:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkFormatError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BenchmarkFormatError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(records, list):
        raise BenchmarkFormatError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


def _checked(record, index: int, path: Path, spec: BenchmarkSpec, images_dir: Path) -> tuple[str, int, str, list]:
    """(split, id, absolute image path, captions) of one record, or an error naming the file and record."""
    where = f"{path}: record {index}"
    if not isinstance(record, dict):
        raise BenchmarkFormatError(f"{where}: expected an object, got {type(record).__name__}")
    for name in ("split", "captions", spec.path_field, "id"):
        if name not in record:
            raise BenchmarkFormatError(f"{where}: missing required field {name!r}")
    split, pid, relative, captions = record["split"], record["id"], record[spec.path_field], record["captions"]
    if split not in spec.splits:
        raise BenchmarkFormatError(f"{where}: field 'split' is {split!r}, expected one of {list(spec.splits)}")
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise BenchmarkFormatError(f"{where}: field 'id' must be an integer, got {pid!r}")
    if not isinstance(relative, str) or not relative or os.path.isabs(relative) or ".." in Path(relative).parts:
        raise BenchmarkFormatError(f"{where}: field {spec.path_field!r} must be a relative path, got {relative!r}")
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise BenchmarkFormatError(f"{where}: field 'captions' must be a non-empty list of non-empty strings")
    image_path = images_dir / relative
    if not image_path.is_file():
        raise BenchmarkFormatError(f"{where}: image {relative!r} not found under {images_dir}")
    return split, pid, str(image_path), captions


def load_benchmark(name: str, root: str | os.PathLike) -> Benchmark:
    """Read CUHK-PEDES, ICFG-PEDES or RSTPReid (`name`: cuhk-pedes | icfg-pedes | rstpreid) from `root`."""
    if name not in BENCHMARKS:
        raise BenchmarkFormatError(f"unknown benchmark {name!r}: expected one of {sorted(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    dataset_dir = _dataset_dir(spec, Path(root))
    path = dataset_dir / spec.annotation_file
    images_dir = dataset_dir / "imgs"
    by_split: dict[str, list[tuple[int, str, list]]] = {split: [] for split in spec.splits}
    for index, record in enumerate(_read_records(path)):
        split, pid, image_path, captions = _checked(record, index, path, spec, images_dir)
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
    return Benchmark(name=name, root=str(dataset_dir), train=train, val=val, test=_eval_split(by_split["test"]))


def _eval_split(records: list[tuple[int, str, list]]) -> EvalSplit:
    split = EvalSplit()
    for pid, image_path, captions in records:
        split.image_paths.append(image_path)
        split.image_pids.append(pid)
        for caption in captions:
            split.captions.append(caption)
            split.caption_pids.append(pid)
    return split
