"""The released layouts of the three public text-based person retrieval benchmarks, read at the storage level so
that curation (the benchmark contamination guard) and gadms_model (training and evaluation) share one reader.

    CUHK-PEDES/reid_raw.json        split, captions (2), file_path, processed_tokens, id (1-based)
    ICFG-PEDES/ICFG-PEDES.json      split, captions (1), file_path, processed_tokens, id (no val split)
    RSTPReid/data_captions.json     id, img_path, captions (2), split
Images live under `<dataset dir>/imgs/`. `root` may be the dataset directory itself or its parent.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
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


def benchmark_spec(name: str) -> BenchmarkSpec:
    """The spec of `name` (cuhk-pedes | icfg-pedes | rstpreid, any case); BenchmarkFormatError for another name."""
    spec = BENCHMARKS.get(name.lower())
    if spec is None:
        raise BenchmarkFormatError(f"unknown benchmark {name!r}: expected one of {sorted(BENCHMARKS)}")
    return spec


def dataset_dir(spec: BenchmarkSpec, root: Path) -> Path:
    for candidate in (root / spec.directory, root):
        if (candidate / spec.annotation_file).is_file():
            return candidate
    raise BenchmarkFormatError(
        f"{root / spec.directory / spec.annotation_file}: annotation file not found "
        f"(pass the directory that holds {spec.directory}/ or {spec.annotation_file})"
    )


def read_records(path: Path) -> list:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkFormatError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BenchmarkFormatError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(records, list):
        raise BenchmarkFormatError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


def checked_record(record, index: int, path: Path, spec: BenchmarkSpec, images_dir: Path) -> tuple[str, int, str, list]:
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


def eval_images(name: str, root: str | os.PathLike) -> tuple[Path, list[tuple[str, str]]]:
    """(annotation file, [(image path relative to imgs/, absolute path)]) of the val and test images of benchmark
    `name` under `root`, each image once, in file order: what a model is evaluated on."""
    spec = benchmark_spec(name)
    directory = dataset_dir(spec, Path(root))
    path = directory / spec.annotation_file
    images_dir = directory / "imgs"
    seen: dict[str, str] = {}
    for index, record in enumerate(read_records(path)):
        split, _, image_path, _ = checked_record(record, index, path, spec, images_dir)
        if split != "train":
            seen.setdefault(record[spec.path_field], image_path)
    return path, list(seen.items())
