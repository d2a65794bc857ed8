"""Face counting (curation.detect.faces) on the photos of people that installed packages ship, and face blurring
on export (`gadms export --blur-faces`), checked through the `datasets` package that loads the export."""
from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage.data
from PIL import Image
from ultralytics.utils import ASSETS

from curation.synthweb.detector import DEMO_WEIGHTS, DetectConfig
from curation.detect.crop import crop_region, encode_jpeg
from curation.detect.faces import FaceCounter
from flows.cli import main
from storage.export import BLURRED_JPEG_QUALITY
from storage.layout import OutputLayout
from storage.schema import ADDED_IN_V2, SCHEMA_VERSION_KEY, SHARD_SCHEMA
from storage.shards import commit_shard, read_shard
from tests.storage_fixtures import captions_for, crop

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    # `datasets` writes its Arrow cache under HF_DATASETS_CACHE; keep it out of the home folder.
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")

# The persons of the photos, boxed as a COCO-trained YOLO boxes them (the project's demo weights never saw a
# photograph), and the faces a person sees in them (x1, y1, x2, y2, photo pixels). bus.jpg: four pedestrians, of
# whom the two on the left face the camera (the third walks away, the fourth is cut by the left edge); zidane.jpg:
# Zidane, bent forward and half turned, in a box wider than tall, and Ancelotti facing the camera; the astronaut
# (the whole 512 × 512 image as one crop) faces the camera.
PERSONS = {
    "bus.jpg": [(50, 400, 245, 905), (222, 408, 345, 860), (670, 380, 810, 875), (0, 550, 60, 870)],
    "zidane.jpg": [(123, 197, 1111, 712), (747, 41, 1141, 712)],
    "astronaut": [(0, 0, 512, 512)],
}
TRUE_FACES = {
    "bus.jpg": [(114, 416, 165, 467), (262, 420, 319, 477)],
    "zidane.jpg": [(586, 280, 701, 395), (922, 111, 1068, 257)],
    "astronaut": [(178, 69, 270, 161)],
}
# Measured with the defaults (alt2, upper half, longest side 112, scale 1.12, 2 neighbours): faces found per
# person crop. Misses: Zidane's half-turned face (his crop is 1,088 px wide, so his face is 12 px at that size).
EXPECTED_PER_CROP = {"bus.jpg": [1, 1, 0, 0], "zidane.jpg": [0, 1], "astronaut": [1]}


def photo(name: str) -> np.ndarray:
    if name == "astronaut":
        return skimage.data.astronaut()
    with Image.open(ASSETS / name) as image:
        return np.asarray(image.convert("RGB"))


def person_crops(name: str) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Each person's crop as the detect stage cuts it (5 % margin), with its top-left corner in the photo."""
    pixels = photo(name)
    crops = []
    for box in PERSONS[name]:
        margin = DetectConfig.model_fields["crop_margin"].default
        x1, y1, x2, y2 = crop_region(box, (pixels.shape[1], pixels.shape[0]), margin)
        crops.append((pixels[y1:y2, x1:x2], (x1, y1)))
    return crops


def iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def counter() -> FaceCounter:
    return FaceCounter(DetectConfig(weights=str(DEMO_WEIGHTS)))


@pytest.mark.parametrize("name", sorted(PERSONS))
def test_faces_per_person_crop_of_the_bundled_photos(counter, name):
    found = [counter.boxes(pixels) for pixels, _ in person_crops(name)]
    assert [len(boxes) for boxes in found] == EXPECTED_PER_CROP[name]
    # Every hit is a real face: in photo pixels it overlaps one of the photo's faces by IoU >= 0.5.
    for (pixels, (ox, oy)), boxes in zip(person_crops(name), found):
        for x1, y1, x2, y2 in boxes:
            assert 0 <= x1 < x2 <= pixels.shape[1] and 0 <= y1 < y2 <= pixels.shape[0] / 2
            assert max(iou((x1 + ox, y1 + oy, x2 + ox, y2 + oy), face) for face in TRUE_FACES[name]) >= 0.5


# scikit-image's bundled photos without a person (animals, objects, textures, micrographs, sky, text): the two
# neighbours the defaults ask for must not find faces in them.
NO_PEOPLE = ("brick", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel", "horse", "hubble_deep_field",
             "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
             "text")


def rgb_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def test_no_faces_in_the_bundled_photos_without_people(counter):
    found = {}
    for name in NO_PEOPLE:
        pixels = rgb_uint8(getattr(skimage.data, name)())
        height, width = pixels.shape[:2]
        # The whole photo, and person-crop-shaped strips across it (width = height / 2.5, half a strip apart).
        strip = max(20, round(height / 2.5))
        regions = [pixels] + [pixels[:, x:x + strip] for x in range(0, max(1, width - strip + 1), max(1, strip // 2))]
        found[name] = sum(len(counter.boxes(region)) for region in regions)
    assert found == dict.fromkeys(NO_PEOPLE, 0)


def test_face_boxes_are_the_same_on_every_run_and_from_parallel_threads(counter):
    crops = [pixels for name in sorted(PERSONS) for pixels, _ in person_crops(name)]
    serial = [counter.boxes(pixels) for pixels in crops]
    assert serial == [counter.boxes(pixels) for pixels in crops]
    with ThreadPoolExecutor(4) as pool:  # the build runs chunks in threads that share one detector
        assert list(pool.map(counter.boxes, crops * 4)) == serial * 4


def test_a_crop_smaller_than_the_cascade_window_has_no_faces(counter):
    assert counter.boxes(np.zeros((30, 12, 3), np.uint8)) == []


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def _root_with_a_face(tmp_path, counter):
    """A root of two samples: the astronaut (one face, boxed by the counter) and a face-free crop."""
    face_crop = crop(0)
    pixels = skimage.data.astronaut()
    face_crop.image, face_crop.width, face_crop.height = encode_jpeg(pixels, 90), 512, 512
    face_crop.face_boxes = counter.boxes(pixels)
    face_crop.num_faces = len(face_crop.face_boxes)
    plain = crop(1)
    plain.num_faces, plain.face_boxes = 0, []
    layout = OutputLayout(str(tmp_path / "root"))
    commit_shard(layout, "shard-00000", "run-1", [face_crop, plain],
                 [captions_for(face_crop, "An astronaut in a white suit.", ""),
                  captions_for(plain, "A man in a blue coat.", "")], [])
    return layout, face_crop, plain


def test_export_blurs_the_stored_face_boxes_and_nothing_else(tmp_path, counter, capsys):
    layout, face_crop, plain = _root_with_a_face(tmp_path, counter)
    (box,) = face_crop.face_boxes
    assert main(["export", "--root", layout.root, "--out", str(tmp_path / "out"), "--blur-faces"]) == 0
    assert capsys.readouterr().out == f"exported 1 shard(s) to {tmp_path / 'out'} (data/ and README.md, faces blurred)\n"
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "data" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    data_file = next((tmp_path / "out" / "data").glob("*.parquet"))
    stored = pq.read_table(data_file).column("image").to_pylist()
    assert stored[1]["bytes"] == plain.image  # a crop without faces is exported as it is
    blurred = np.asarray(ds[0]["image"].convert("RGB")).astype(int)
    original = decode(face_crop.image)
    # The same crop re-encoded as the export re-encodes it, without blurring: what every untouched block gives.
    buffer = io.BytesIO()
    Image.fromarray(original.astype(np.uint8)).save(buffer, format="JPEG", quality=BLURRED_JPEG_QUALITY, subsampling=0)
    reencoded = decode(buffer.getvalue())
    x1, y1, x2, y2 = int(box[0]), int(box[1]), int(np.ceil(box[2])), int(np.ceil(box[3]))
    inside = np.abs(blurred[y1:y2, x1:x2] - original[y1:y2, x1:x2])
    assert inside.mean() > 10  # the face's detail is gone (uniform areas barely change, edges a lot)
    # JPEG codes 8 × 8 blocks on their own: outside the blocks the box touches, pixels are those of the re-encode.
    touched = np.zeros(original.shape[:2], bool)
    touched[y1 // 8 * 8:(y2 + 7) // 8 * 8, x1 // 8 * 8:(x2 + 7) // 8 * 8] = True
    assert touched.mean() < 0.5
    assert np.array_equal(blurred[~touched], reencoded[~touched])
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8").splitlines()
    assert ("- Faces: the detect stage's face counter (OpenCV's frontal-face Haar cascade; it misses faces in "
            "profile, small or turned away) found 1 face(s) in 1 of the 2 crops it searched.") in card
    assert ("- The face boxes it found are blurred in this export's images (`gadms export --blur-faces`); faces it "
            "missed are not.") in card


def test_without_the_flag_faces_are_exported_as_they_are(tmp_path, counter):
    layout, face_crop, _ = _root_with_a_face(tmp_path, counter)
    assert main(["export", "--root", layout.root, "--out", str(tmp_path / "out")]) == 0
    data_file = next((tmp_path / "out" / "data").glob("*.parquet"))
    assert pq.read_table(data_file).column("image").to_pylist()[0]["bytes"] == face_crop.image
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8").splitlines()
    assert "- Faces are not blurred in this export (`gadms export --blur-faces` blurs the found boxes)." in card


def write_v1_shard(layout: OutputLayout, shard_id: str, crops) -> None:
    """A shard as schema v1 wrote it (none of the v2 columns), with its manifest entry as then written (no
    schema_version or row_groups)."""
    commit_shard(layout, shard_id, "run-old", crops, [captions_for(c, "A man in a grey coat.", "") for c in crops], [])
    path = layout.shard_path(shard_id)
    table = pq.read_table(path)
    table = table.drop_columns(list(ADDED_IN_V2)).replace_schema_metadata({SCHEMA_VERSION_KEY: b"1"})
    pq.write_table(table, path)
    entry = json.loads(Path(layout.manifest_path(shard_id)).read_text())
    data = Path(path).read_bytes()
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    del entry["schema_version"], entry["row_groups"]
    Path(layout.manifest_path(shard_id)).write_text(json.dumps(entry))


def test_a_v1_shard_reads_with_the_new_columns_null_and_refuses_blurring(tmp_path, capsys):
    layout = OutputLayout(str(tmp_path / "root"))
    old, new = crop(2), crop(3)
    new.num_faces, new.face_boxes, new.http_status = 1, [[1.0, 2.0, 9.0, 12.0]], 200
    write_v1_shard(layout, "shard-00000", [old])
    commit_shard(layout, "shard-00001", "run-new", [new], [captions_for(new, "A woman in red.", "")], [])
    table = read_shard(layout.shard_path("shard-00000"))
    assert table.schema.remove_metadata() == SHARD_SCHEMA.remove_metadata()
    assert all(table.column(name).null_count == 1 for name in ADDED_IN_V2)
    # The catalog the build refreshes, read with plain DuckDB: one view over both versions.
    assert main(["catalog", "refresh", "--root", layout.root]) == 0
    con = duckdb.connect(str(tmp_path / "root" / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT shard_id, num_faces, http_status FROM samples ORDER BY shard_id").fetchall() == [
        ("shard-00000", None, None), ("shard-00001", 1, 200)]
    con.close()
    capsys.readouterr()
    assert main(["export", "--root", layout.root, "--out", str(tmp_path / "out"), "--blur-faces"]) == 2
    assert capsys.readouterr().err == (
        f"gadms export: error: {layout.shard_path('shard-00000')}: 1 sample(s) without a face count (a shard of "
        "schema v1 or built with detect.face_count: false), so --blur-faces cannot blur them; rebuild the shard "
        "(delete its manifest entry and rerun gadms build) or export without --blur-faces\n")
    assert not (tmp_path / "out").exists()
    assert main(["export", "--root", layout.root, "--out", str(tmp_path / "out")]) == 0
