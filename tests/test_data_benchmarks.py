"""load_benchmark on small trees written in each benchmark's released format."""
import json
from pathlib import Path

import pytest
from PIL import Image

from gadms_model.data import BenchmarkFormatError, load_benchmark


def write_tree(root: Path, directory: str, annotation: str, records: list, path_field: str) -> Path:
    dataset = root / directory
    for record in records:
        if isinstance(record, dict) and path_field in record and ".." not in record[path_field]:
            image = dataset / "imgs" / record[path_field]
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 16), (len(str(image)) * 7 % 255, 0, 0)).save(image)
    (dataset / annotation).write_text(json.dumps(records), encoding="utf-8")
    return dataset


CUHK = [
    {"split": "train", "captions": ["A woman in a white blouse.", "The lady has a red bag."], "file_path": "cam_a/000123_1.jpg", "processed_tokens": [["a"], ["the"]], "id": 2},
    {"split": "train", "captions": ["A man in a black coat.", "He carries a backpack."], "file_path": "cam_b/000001_1.jpg", "processed_tokens": [["a"], ["he"]], "id": 1},
    {"split": "train", "captions": ["A woman with brown hair.", "She wears jeans."], "file_path": "cam_a/000123_2.jpg", "processed_tokens": [["a"], ["she"]], "id": 2},
    {"split": "val", "captions": ["A boy in a green shirt.", "The boy wears shorts."], "file_path": "val/10_1.jpg", "processed_tokens": [["a"], ["the"]], "id": 10},
    {"split": "test", "captions": ["A man in grey trousers.", "He has white sneakers."], "file_path": "test/3517/3517_c05_0042.jpg", "processed_tokens": [["a"], ["he"]], "id": 3517},
    {"split": "test", "captions": ["A girl with a yellow umbrella.", "The girl wears a skirt."], "file_path": "test/3600/3600_c01_0001.jpg", "processed_tokens": [["a"], ["the"]], "id": 3600},
    {"split": "test", "captions": ["The man wears a black jacket.", "A man with grey trousers."], "file_path": "test/3517/3517_c02_0007.jpg", "processed_tokens": [["the"], ["a"]], "id": 3517},
]
ICFG = [
    {"split": "train", "captions": ["The man is wearing a black down jacket."], "file_path": "train/0000/0000_c1_1.jpg", "processed_tokens": [["the"]], "id": 0},
    {"split": "train", "captions": ["A woman in a red dress."], "file_path": "train/0001/0001_c2_1.jpg", "processed_tokens": [["a"]], "id": 1},
    {"split": "test", "captions": ["The man wears blue jeans."], "file_path": "test/3102/3102_c1_1.jpg", "processed_tokens": [["the"]], "id": 3102},
    {"split": "test", "captions": ["A woman with a white hat."], "file_path": "test/3103/3103_c3_1.jpg", "processed_tokens": [["a"]], "id": 3103},
]
RSTP = [
    {"id": 0, "img_path": "0000_c01_0001.jpg", "captions": ["A young man in a navy hoodie.", "The man wears a dark top."], "split": "train"},
    {"id": 1, "img_path": "0001_c03_0002.jpg", "captions": ["A woman in a long coat.", "She carries a phone."], "split": "train"},
    {"id": 17, "img_path": "0017_c03_0008.jpg", "captions": ["A young man in khaki shorts.", "The man wears a blue hooded top."], "split": "val"},
    {"id": 30, "img_path": "0030_c05_0001.jpg", "captions": ["A girl in a pink jacket.", "The girl has a ponytail."], "split": "test"},
]


def test_cuhk_pedes(tmp_path):
    dataset = write_tree(tmp_path, "CUHK-PEDES", "reid_raw.json", CUHK, "file_path")
    bench = load_benchmark("cuhk-pedes", tmp_path)
    assert [(s.pid, s.image_id, Path(s.image_path).relative_to(dataset / "imgs").as_posix(), s.caption) for s in bench.train] == [
        (1, 0, "cam_a/000123_1.jpg", "A woman in a white blouse."),
        (1, 0, "cam_a/000123_1.jpg", "The lady has a red bag."),
        (0, 1, "cam_b/000001_1.jpg", "A man in a black coat."),
        (0, 1, "cam_b/000001_1.jpg", "He carries a backpack."),
        (1, 2, "cam_a/000123_2.jpg", "A woman with brown hair."),
        (1, 2, "cam_a/000123_2.jpg", "She wears jeans."),
    ]
    assert bench.num_train_ids == 2
    assert bench.val.image_pids == [10] and bench.val.caption_pids == [10, 10]
    assert bench.test.image_pids == [3517, 3600, 3517]
    assert bench.test.caption_pids == [3517, 3517, 3600, 3600, 3517, 3517]
    assert bench.test.captions[2] == "A girl with a yellow umbrella."
    assert bench.test.image_paths[1] == str(dataset / "imgs" / "test/3600/3600_c01_0001.jpg")
    # The dataset directory itself works as root too.
    assert load_benchmark("cuhk-pedes", dataset).test.captions == bench.test.captions


def test_icfg_pedes_has_no_val_split(tmp_path):
    write_tree(tmp_path, "ICFG-PEDES", "ICFG-PEDES.json", ICFG, "file_path")
    bench = load_benchmark("icfg-pedes", tmp_path)
    assert bench.val is None
    assert [(s.pid, s.caption) for s in bench.train] == [(0, "The man is wearing a black down jacket."), (1, "A woman in a red dress.")]
    assert bench.test.image_pids == [3102, 3103] and bench.test.caption_pids == [3102, 3103]


def test_icfg_pedes_rejects_a_val_record(tmp_path):
    write_tree(tmp_path, "ICFG-PEDES", "ICFG-PEDES.json", ICFG + [{**ICFG[0], "split": "val"}], "file_path")
    with pytest.raises(BenchmarkFormatError, match=r"ICFG-PEDES.json: record 4: field 'split' is 'val'"):
        load_benchmark("icfg-pedes", tmp_path)


def test_rstpreid_reads_img_path(tmp_path):
    write_tree(tmp_path, "RSTPReid", "data_captions.json", RSTP, "img_path")
    bench = load_benchmark("rstpreid", tmp_path)
    assert [s.pid for s in bench.train] == [0, 0, 1, 1]
    assert bench.val.captions == ["A young man in khaki shorts.", "The man wears a blue hooded top."]
    assert bench.test.image_paths == [str(tmp_path / "RSTPReid" / "imgs" / "0030_c05_0001.jpg")]


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(BenchmarkFormatError, match=r"RSTPReid/data_captions.json: annotation file not found"):
        load_benchmark("rstpreid", tmp_path)


def test_record_without_required_field_is_named(tmp_path):
    broken = [dict(r) for r in CUHK]
    del broken[4]["captions"]
    write_tree(tmp_path, "CUHK-PEDES", "reid_raw.json", broken, "file_path")
    with pytest.raises(BenchmarkFormatError, match=r"reid_raw.json: record 4: missing required field 'captions'"):
        load_benchmark("cuhk-pedes", tmp_path)


def test_rstpreid_file_path_instead_of_img_path_is_named(tmp_path):
    wrong = [{**{k: v for k, v in r.items() if k != "img_path"}, "file_path": r["img_path"]} for r in RSTP]
    write_tree(tmp_path, "RSTPReid", "data_captions.json", wrong, "file_path")
    with pytest.raises(BenchmarkFormatError, match=r"data_captions.json: record 0: missing required field 'img_path'"):
        load_benchmark("rstpreid", tmp_path)


def test_missing_image_is_named(tmp_path):
    dataset = write_tree(tmp_path, "CUHK-PEDES", "reid_raw.json", CUHK, "file_path")
    (dataset / "imgs" / "test/3600/3600_c01_0001.jpg").unlink()
    with pytest.raises(BenchmarkFormatError, match=r"reid_raw.json: record 5: image 'test/3600/3600_c01_0001.jpg' not found"):
        load_benchmark("cuhk-pedes", tmp_path)


def test_path_escaping_the_image_folder_is_rejected(tmp_path):
    write_tree(tmp_path, "RSTPReid", "data_captions.json", RSTP + [{**RSTP[0], "img_path": "../../etc/passwd"}], "img_path")
    with pytest.raises(BenchmarkFormatError, match=r"record 4: field 'img_path' must be a relative path"):
        load_benchmark("rstpreid", tmp_path)


def test_unknown_benchmark(tmp_path):
    with pytest.raises(BenchmarkFormatError, match="unknown benchmark 'market1501'"):
        load_benchmark("market1501", tmp_path)
