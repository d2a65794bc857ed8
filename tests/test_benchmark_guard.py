"""The benchmark contamination guard: val/test images of a released-layout benchmark seeded into the dedup index,
crops near one rejected as benchmark_overlap naming the file."""
from __future__ import annotations

import hashlib
import io
import json

import duckdb
import numpy as np
import pytest
from PIL import Image, ImageOps

from curation.dedup import DedupIndex, phash64
from curation.dedup.index import INDEX_FILE
from flows.cli import main
from curation.synthweb.benchmark import write_synthetic_benchmark
from storage.records import PersonCrop, make_sample_id


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    write_synthetic_benchmark(root, train_identities=2, val_identities=2, test_identities=3, images_per_identity=2,
                              seed=7, train_captions="clean", size=(64, 128), first_identity=500_000)
    return root


def _records(root) -> list[dict]:
    return json.loads((root / "RSTPReid" / "data_captions.json").read_text())


def _crop(url: str, image: Image.Image) -> PersonCrop:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)  # a re-encode, as a web copy would be
    data = buffer.getvalue()
    box = (0.0, 0.0, float(image.width), float(image.height))
    source_sha = hashlib.sha256(data).hexdigest()
    return PersonCrop(sample_id=make_sample_id(source_sha, box), source_url=url, page_url="", alt_text="",
                      source_sha256=source_sha, image=data, width=image.width, height=image.height, bbox=box,
                      det_score=0.9, keypoints=None,
                      phash=phash64(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))),
                      crop_sha256=hashlib.sha256(data).hexdigest())


def test_seed_benchmark_command_stores_val_and_test_images_once(benchmark, tmp_path, capsys):
    index_dir = tmp_path / "root" / "dedup"
    args = ["dedup", "seed-benchmark", "--dataset", "RSTPReid", "--root", str(benchmark), "--index", str(index_dir)]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == f"RSTPReid: 10 val/test image(s) seeded in {index_dir}"
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == (
        f"RSTPReid: 10 val/test image(s) already seeded from the same annotation file in {index_dir}")
    con = duckdb.connect(str(index_dir / INDEX_FILE), read_only=True)
    files = con.execute("SELECT file FROM benchmark ORDER BY file").fetchall()
    stored = dict(con.execute("SELECT file, phash FROM benchmark").fetchall())
    con.close()
    held_out = sorted(r["img_path"] for r in _records(benchmark) if r["split"] != "train")
    assert [f for f, in files] == [f"RSTPReid:{p}" for p in held_out]
    for path in held_out:
        with Image.open(benchmark / "RSTPReid" / "imgs" / path) as image:
            assert stored[f"RSTPReid:{path}"] == phash64(image.convert("RGB"))


def test_crops_near_a_benchmark_image_are_benchmark_overlap(benchmark, tmp_path):
    records = _records(benchmark)
    test = [r["img_path"] for r in records if r["split"] == "test"]
    train = [r["img_path"] for r in records if r["split"] == "train"]
    assert main(["dedup", "seed-benchmark", "--dataset", "rstpreid", "--root", str(benchmark / "RSTPReid"),
                 "--index", str(tmp_path / "dedup")]) == 0
    images = benchmark / "RSTPReid" / "imgs"

    def opened(path):
        with Image.open(images / path) as image:
            return image.convert("RGB")

    crops = [
        _crop("http://web.example/copy.jpg", opened(test[0])),
        _crop("http://web.example/mirror.jpg", ImageOps.mirror(opened(test[3]))),
        _crop("http://web.example/train.jpg", opened(train[0])),  # train images are not guarded
        # A rotated copy is far in pHash (which is not rotation invariant): the guard does not catch it.
        _crop("http://web.example/rotated.jpg", opened(test[1]).rotate(90, expand=True).resize((64, 128))),
    ]
    index = DedupIndex.open(tmp_path / "dedup")
    assert index.benchmark_images == 10
    kept, rejects = index.deduplicate(crops, "shard-a")
    assert [c.source_url for c in kept] == ["http://web.example/train.jpg", "http://web.example/rotated.jpg"]
    assert [(r.stage, r.reason, r.url, r.detail) for r in rejects] == [
        ("dedup", "benchmark_overlap", "http://web.example/copy.jpg", f"RSTPReid:{test[0]}"),
        ("dedup", "benchmark_overlap", "http://web.example/mirror.jpg", f"RSTPReid:{test[3]}"),
    ]
    # Another process opening the index sees the guard too; an overlapping crop is never stored as kept.
    again = DedupIndex.open(tmp_path / "dedup")
    kept, rejects = again.deduplicate([crops[0]], "shard-b")
    assert kept == [] and [r.reason for r in rejects] == ["benchmark_overlap"]
    assert len(again) == 2


def test_a_bad_benchmark_is_a_one_line_error(benchmark, tmp_path, capsys):
    assert main(["dedup", "seed-benchmark", "--dataset", "market1501", "--root", str(benchmark),
                 "--index", str(tmp_path / "dedup")]) == 2
    assert capsys.readouterr().err.strip() == ("gadms dedup: error: unknown benchmark 'market1501': expected one of "
                                               "['cuhk-pedes', 'icfg-pedes', 'rstpreid']")
    assert main(["dedup", "seed-benchmark", "--dataset", "cuhk-pedes", "--root", str(benchmark),
                 "--index", str(tmp_path / "dedup")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"gadms dedup: error: {benchmark / 'CUHK-PEDES' / 'reid_raw.json'}: annotation file not found "
        "(pass the directory that holds CUHK-PEDES/ or reid_raw.json)")
