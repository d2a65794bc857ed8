"""The Hugging Face layout of the public WebPerson release: `gadms export` writes it and every reader reads it,
checked against the real `datasets` package in both directions."""
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from flows.cli import main
from gadms_model.data import public_parquet_source
from gadms_model.retrieval.gallery import Gallery
from gadms_model.training import TrainConfig
from gadms_model.training.trainer import build_source
from storage.catalog import write_run_record
from storage.errors import GadmsError
from storage.export import export_public
from storage.layout import OutputLayout
from storage.records import Reject
from storage.schema import HF_METADATA_KEY, PUBLIC_FEATURES
from storage.shards import commit_shard
from tests.storage_fixtures import build_root, captions_for, crop

datasets = pytest.importorskip("datasets")

CAPTIONS1 = ["A woman in a red coat and black boots.", "A man wears a blue shirt.", "The man in black jeans and a white t-shirt."]
CAPTIONS2 = ["She carries a red bag.", "", "He has red shoes."]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    # `datasets` writes its Arrow cache under HF_DATASETS_CACHE; keep it out of the home folder.
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def jpeg_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return pixels(image)


def card_header(path) -> dict:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---\n", 1)[0][4:])


def test_export_is_loaded_by_datasets_with_decoded_images(tmp_path):
    build_root(tmp_path / "root")
    export_public(str(tmp_path / "root"), str(tmp_path / "out"), license="cc-by-4.0")
    crops = [crop(0), crop(1), crop(2)]
    for ds in (
        datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "data" / "*.parquet"), split="train",
                              cache_dir=str(tmp_path / "hf-cache")),
        datasets.load_dataset(str(tmp_path / "out"), split="train", cache_dir=str(tmp_path / "hf-cache")),
    ):
        assert isinstance(ds.features["image"], datasets.Image)
        assert ds["caption1"] == CAPTIONS1 and ds["caption2"] == CAPTIONS2
        assert ds["image_path"] == [f"images/{c.sample_id}.jpg" for c in crops]
        for row, c in zip(ds, crops):
            assert isinstance(row["image"], Image.Image) and row["image"].size == (32, 64)
            assert np.array_equal(pixels(row["image"]), jpeg_pixels(c.image))
    metadata = pq.ParquetFile(tmp_path / "out" / "data" / "train-00000-of-00002.parquet").schema_arrow.metadata
    assert json.loads(metadata[HF_METADATA_KEY]) == {"info": {"features": PUBLIC_FEATURES}}


def test_card_header_parses_with_the_split_size(tmp_path, capsys):
    build_root(tmp_path / "root")
    assert main(["export", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"exported 2 shard(s) to {tmp_path / 'out'} (data/ and README.md)\n"
    assert captured.err == ("gadms export: warning: no --license given; the card says `license: unknown`: "
                            "set it before publishing\n")
    header = card_header(tmp_path / "out" / "README.md")
    assert header["license"] == "unknown"
    assert header["size_categories"] == ["n<1K"]
    info = header["dataset_info"]
    assert [f["name"] for f in info["features"]] == ["image", "image_path", "caption1", "caption2"]
    assert [f["dtype"] for f in info["features"]] == ["image", "string", "string", "string"]
    assert [(s["name"], s["num_examples"]) for s in info["splits"]] == [("train", 3)]
    parquet_bytes = sum(p.stat().st_size for p in (tmp_path / "out" / "data").iterdir())
    assert info["download_size"] == parquet_bytes
    assert header["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert main(["export", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out"), "--license", "cc-by-4.0"]) == 0
    assert capsys.readouterr().err == ""
    assert card_header(tmp_path / "out" / "README.md")["license"] == "cc-by-4.0"
    assert main(["export", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "x"), "--license", "CC BY\n"]) == 2
    assert capsys.readouterr().err == ("gadms export: error: --license 'CC BY\\n': not a Hugging Face license id "
                                       "(e.g. cc-by-4.0, other)\n")


def test_card_tells_funnel_settings_and_safety_and_escapes_web_text(tmp_path):
    layout = OutputLayout(str(tmp_path / "root"))
    hostile = crop(3, "<img src=x onerror=alert(1)>|*x*")
    commit_shard(layout, "shard-00000", "run-1", [hostile], [captions_for(hostile, "A man in a grey coat.", "")],
                 [Reject("filter", "nsfw", "https://c.example/1.jpg"), Reject("filter", "mannequin", "https://c.example/2.jpg")])
    write_run_record(layout.root, {
        "run_id": "run-1", "flow": "build-webperson",
        "config": {"dedup": {"enabled": True, "radius": 6}, "crawl": {"robots": True, "opt_out_directives": ["noai"]},
                   "caption": {"backend": "openai", "models": ["Qwen/Qwen2.5-VL-7B-Instruct"], "filter": True}},
        "summary": {"urls": 10, "downloaded": 7, "persons": 5, "unique": 4, "kept": 1},
    })
    export_public(layout.root, str(tmp_path / "out"))
    lines = (tmp_path / "out" / "README.md").read_text(encoding="utf-8").splitlines()
    assert "| &lt;img src=x onerror=alert\\(1\\)&gt;\\|\\*x\\* | 1 |" in lines
    assert not any("<img" in line for line in lines)
    assert ["| input URLs | 10 |", "| images downloaded | 7 |"] == lines[lines.index("| input URLs | 10 |"):][:2]
    assert "| kept \\(captioned\\) | 1 |" in lines
    assert "| filter / nsfw | 1 |" in lines and "| filter / mannequin | 1 |" in lines
    assert "- dedup pHash radius \\(bits of 64\\): 6" in lines
    assert "- caption models: \\[\"Qwen/Qwen2\\.5\\-VL\\-7B\\-Instruct\"\\]" in lines
    assert "- min confidence: not recorded" in lines
    assert ("- In every recorded run each crop was screened by an MLLM filter before captioning; it rejects, among "
            "others, crops with nudity or sexual content (verdict `nsfw`): 1 crop(s) rejected as `nsfw`.") in lines
    assert "- The crawler obeyed robots.txt and the opt-out directives listed above." in lines


def test_export_replaces_an_earlier_export_and_refuses_the_root(tmp_path, capsys):
    build_root(tmp_path / "root")
    stale = tmp_path / "out" / "data" / "train-00000-of-00005.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    (tmp_path / "out" / "data" / "notes.txt").write_text("mine")
    export_public(str(tmp_path / "root"), str(tmp_path / "out"))
    assert sorted(p.name for p in stale.parent.iterdir()) == [
        "notes.txt", "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    root = tmp_path / "root"
    for out in (root / "public", root, tmp_path):  # the last would put data/ into a root named data
        if out == tmp_path:
            (tmp_path / "data").mkdir()
            build_root(tmp_path / "data")
            root = tmp_path / "data"
        before = sorted(p for p in root.rglob("*"))
        assert main(["export", "--root", str(root), "--out", str(out)]) == 2
        assert capsys.readouterr().err == (
            f"gadms export: error: {out}: inside the output root {root}; export to a folder outside it\n")
        assert sorted(p for p in root.rglob("*")) == before


def _hf_written_file(path, images: list[Image.Image], captions: list[tuple[str, str]]) -> None:
    features = datasets.Features({"image": datasets.Image(), "image_path": datasets.Value("string"),
                                  "caption1": datasets.Value("string"), "caption2": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"image": images, "image_path": [f"images/{i}.jpg" for i in range(len(images))],
         "caption1": [c[0] for c in captions], "caption2": [c[1] for c in captions]},
        features=features,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))


def test_a_file_written_by_datasets_is_read_by_training_search_and_read_public(tmp_path):
    images = [Image.new("RGB", (12, 24), (255, 0, 0)), Image.new("RGB", (20, 10), (0, 0, 255))]
    images[1].putpixel((3, 4), (10, 200, 30))
    captions = [("a man in red", "red shirt"), ("a woman in blue", "blue dress")]
    repo = tmp_path / "hub"
    _hf_written_file(repo / "data" / "train-00000-of-00001.parquet", images, captions)

    source = build_source(TrainConfig.model_validate(
        {"output_dir": str(tmp_path / "run"), "data": {"kind": "public", "path": str(repo)}}))
    assert source.num_images == 2
    assert [source[i].caption for i in range(4)] == ["a man in red", "red shirt", "a woman in blue", "blue dress"]
    assert [source[i].pid for i in range(4)] == [0, 0, 1, 1]
    assert [source.sample_id(i) for i in range(2)] == ["images/0.jpg", "images/1.jpg"]
    for i, image in enumerate(images):
        assert np.array_equal(pixels(source[2 * i].image), pixels(image))

    rows = pq.read_table(repo / "data").to_pylist()  # what a Hub reader gets: struct<bytes, path> images
    assert [(r["image_path"], r["caption1"], r["caption2"]) for r in rows] == [
        ("images/0.jpg", "a man in red", "red shirt"), ("images/1.jpg", "a woman in blue", "blue dress")]
    for row, image in zip(rows, images):
        assert np.array_equal(jpeg_pixels(row["image"]["bytes"]), pixels(image))

    gallery = Gallery(str(repo))
    assert len(gallery) == 2
    assert [gallery.caption(i) for i in range(2)] == ["a man in red", "a woman in blue"]
    assert [gallery.item_id(i) for i in range(2)] == ["images/0.jpg", "images/1.jpg"]
    assert np.array_equal(pixels(gallery.image(1)), pixels(images[1]))


def test_plain_binary_layout_still_reads(tmp_path):
    jpeg = crop(5).image
    table = pa.table({"image": pa.array([jpeg], pa.binary()), "image_path": ["images/x.jpg"],
                      "caption1": ["a man in green"], "caption2": ["green coat"]})
    pq.write_table(table, tmp_path / "old.parquet")
    source = public_parquet_source(str(tmp_path))
    assert (source[1].caption, source.sample_id(0)) == ("green coat", "images/x.jpg")
    assert np.array_equal(pixels(source[0].image), jpeg_pixels(jpeg))


@pytest.mark.parametrize("columns, message", [
    ({"image": pa.array([1], pa.int64())}, "column 'image' is int64, expected binary or struct<bytes: binary, path: string>"),
    ({"caption1": pa.array([7], pa.int64())}, "column 'caption1' is int64, expected string"),
    ({"image": pa.array([{"bytes": None, "path": "x.jpg"}], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))},
     "row group 0: row 0: image.bytes is null (images must be embedded in the file)"),
    ({"caption2": None}, "missing column(s) caption2"),
])
def test_bad_public_files_are_one_line_errors_naming_file_and_column(tmp_path, columns, message):
    table = {"image": pa.array([crop(1).image], pa.binary()), "image_path": pa.array(["images/x.jpg"]),
             "caption1": pa.array(["a"]), "caption2": pa.array(["b"])}
    table.update(columns)
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({k: v for k, v in table.items() if v is not None}), path)
    with pytest.raises(GadmsError) as error:  # the training source checks columns when it opens; images when read
        public_parquet_source(str(path))[0]
    assert str(error.value) == f"{path}: {message}"


def test_a_file_that_is_not_parquet_is_a_one_line_error(tmp_path):
    path = tmp_path / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    path.write_bytes(b"not parquet at all")
    with pytest.raises(GadmsError, match=f"^{path}: not a readable Parquet file: "):
        public_parquet_source(str(tmp_path))


def test_card_says_when_no_filter_ran(tmp_path):
    layout = build_root(tmp_path / "root")
    write_run_record(layout.root, {"run_id": "run-1", "flow": "build-webperson",
                                   "config": {"caption": {"backend": "alt-text", "filter": True, "filter_model": None}}})
    export_public(layout.root, str(tmp_path / "out"))
    lines = (tmp_path / "out" / "README.md").read_text(encoding="utf-8").splitlines()
    assert ("- No MLLM filter ran in the recorded runs (`filter` off, or the alt-text backend, which has none): the "
            "crops were not screened for nudity, sexual or other unsafe content.") in lines
    assert "- filter model \\(null: the first caption model\\): null" in lines
    assert ("The stage counts of the build are not recorded (no build-webperson run record with a summary under "
            "runs/).") in lines
