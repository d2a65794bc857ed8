"""`gadms detect` on crawl-style Parquet: crops and rejects files, global dedup across files, resume, errors."""
from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data
from PIL import Image
from ultralytics.utils import ASSETS

from curation.detect.parquet_io import read_crops
from flows.cli import main
from storage.schema import CROP_SCHEMA, REJECT_SCHEMA

BUS = (ASSETS / "bus.jpg").read_bytes()


def _jpeg(pixels, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _row(url: str, data: bytes | None) -> dict:
    return {"url": url, "page_url": url + ".html", "alt_text": "a photo", "data": data,
            "sha256": hashlib.sha256(data).hexdigest() if data else None, "mime": "image/jpeg", "width": 0, "height": 0}


def _write(path, rows) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture
def crawl_dir(tmp_path):
    folder = tmp_path / "crawl"
    folder.mkdir()
    bus_pixels = np.asarray(Image.open(io.BytesIO(BUS)).convert("RGB"))
    _write(folder / "part-0.parquet", [
        _row("https://a.example/bus.jpg", BUS),
        _row("https://mirror.example/bus.jpg", BUS),  # the same bytes elsewhere
        _row("https://a.example/coffee.jpg", _jpeg(skimage.data.coffee())),
        _row("https://a.example/broken.jpg", BUS[:4000]),
        _row("https://a.example/gone.jpg", None),  # a crawl failure: no bytes
    ])
    _write(folder / "part-1.parquet", [
        _row("https://b.example/bus-q70.jpg", _jpeg(bus_pixels, quality=70)),
    ])
    return folder


def _rejects(out, shard: str) -> list[dict]:
    table = pq.read_table(out / "rejects" / f"{shard}.parquet")
    assert table.schema.equals(REJECT_SCHEMA, check_metadata=False)
    return table.to_pylist()


def test_detect_cli_writes_crops_and_rejects_and_dedups_across_files(crawl_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["detect", "--downloads", str(crawl_dir), "--out", str(out), "--backend", "hog", "--run-id", "r1"]) == 0
    assert "2 shards done (0 already done): 1 crops kept" in capsys.readouterr().out

    crops = read_crops(out / "crops" / "part-0.parquet")
    assert pq.read_schema(out / "crops" / "part-0.parquet").names == CROP_SCHEMA.names
    (bus,) = crops
    assert bus.source_url == "https://a.example/bus.jpg" and bus.page_url == "https://a.example/bus.jpg.html"
    assert bus.keypoints is None and bus.crop_sha256 == hashlib.sha256(bus.image).hexdigest()

    rejects = _rejects(out, "part-0")
    by_url = {}
    for r in rejects:
        by_url.setdefault(r["url"], []).append((r["stage"], r["reason"]))
        assert r["run_id"] == "r1" and r["shard_id"] == "part-0"
    assert by_url["https://a.example/broken.jpg"] == [("decode", "decode_error")]
    assert by_url["https://a.example/coffee.jpg"] == [("detect", "no_person")]
    assert "https://a.example/gone.jpg" not in by_url
    duplicate = [r for r in rejects if r["reason"] == "exact_duplicate"]
    assert [(r["url"], r["stage"], r["detail"]) for r in duplicate] == [("https://mirror.example/bus.jpg", "dedup", bus.sample_id)]

    assert read_crops(out / "crops" / "part-1.parquet") == []
    near = [r for r in _rejects(out, "part-1") if r["stage"] == "dedup"]
    assert [(r["reason"], r["detail"]) for r in near] == [("near_duplicate", bus.sample_id)]

    record = json.loads((out / "runs" / "r1.json").read_text())
    assert record["summary"]["counts"] == {"images": 5, "kept": 1, "rejects": len(rejects) + len(_rejects(out, "part-1")),
                                           "shards_done": 2, "shards_skipped": 0}
    assert record["config"]["rules_used"]["pose"] == "skipped (hog backend: boxes only)"
    assert (out / "dedup" / "index.duckdb").is_file()

    # A second run finds both shards done and redoes nothing.
    assert main(["detect", "--downloads", str(crawl_dir), "--out", str(out), "--backend", "hog", "--run-id", "r2"]) == 0
    assert "0 shards done (2 already done): 0 crops kept" in capsys.readouterr().out
    assert json.loads((out / "runs" / "r2.json").read_text())["summary"]["counts"]["shards_skipped"] == 2


def test_detect_cli_reads_the_crawl_cli_output_root(tmp_path, capsys):
    """The crawl CLI writes <out>/downloads/<chunk>.parquet with the bytes in an `image` column."""
    from curation.crawl.output import write_downloads
    from storage.schema import DOWNLOAD_SCHEMA

    crawl_out = tmp_path / "crawl-out"
    (crawl_out / "downloads").mkdir(parents=True)
    fetched_at = datetime(2026, 5, 1, 12, 30, tzinfo=timezone.utc)
    row = {"url": "https://a.example/bus.jpg", "page_url": "https://a.example/", "alt_text": "a bus", "image": BUS,
           "sha256": hashlib.sha256(BUS).hexdigest(), "mime": "image/jpeg", "width": 810, "height": 1080,
           "source_meta": '{"license": "cc-by"}', "fetched_at": fetched_at, "http_status": 203,
           "x_robots_tag": "otherbot: noai, noarchive"}
    columns = [f for f in DOWNLOAD_SCHEMA if f.name in row]
    write_downloads(pa.Table.from_pylist([row], schema=pa.schema(columns)),
                    str(crawl_out / "downloads" / "chunk-0.parquet"), "chunk-0", "crawl-run")
    out = tmp_path / "out"
    assert main(["detect", "--downloads", str(crawl_out), "--out", str(out), "--backend", "hog"]) == 0
    (crop,) = read_crops(out / "crops" / "chunk-0.parquet")
    assert (crop.source_url, crop.alt_text, crop.source_sha256, crop.source_meta) == (
        row["url"], "a bus", row["sha256"], row["source_meta"])
    assert (crop.fetched_at, crop.http_status, crop.x_robots_tag) == (fetched_at, 203, "otherbot: noai, noarchive")
    # HOG boxes the man on the left; the face counter finds his face, inside the crop's upper half.
    assert crop.num_faces == 1
    (x1, y1, x2, y2), = crop.face_boxes
    assert 0 <= x1 < x2 <= crop.width and 0 <= y1 < y2 <= crop.height / 2


def test_detect_cli_reads_a_single_file_and_a_config(crawl_dir, tmp_path, capsys):
    config = tmp_path / "detect.yaml"
    config.write_text("detect:\n  backend: hog\n  crop_margin: 0.0\ndedup:\n  enabled: false\n")
    out = tmp_path / "single"
    assert main(["detect", "--downloads", str(crawl_dir / "part-1.parquet"), "--out", str(out), "--config", str(config)]) == 0
    (crop,) = read_crops(out / "crops" / "part-1.parquet")
    x1, y1, x2, y2 = crop.bbox
    assert abs(crop.width - (x2 - x1)) <= 2 and abs(crop.height - (y2 - y1)) <= 2  # no margin
    assert not (out / "dedup").exists()


def test_detect_cli_errors_are_one_line(crawl_dir, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("detect:\n  weights: x.pt\n  min_confidence: 0.9\n")
    assert main(["detect", "--downloads", str(crawl_dir), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gadms detect: error: ") and "bad.yaml" in err and "detect.min_confidence" in err
    assert "\n" not in err

    no_data = tmp_path / "no-data.parquet"
    _write(no_data, [{"url": "https://a.example/x.jpg"}])
    assert main(["detect", "--downloads", str(no_data), "--out", str(tmp_path / "o"), "--backend", "hog"]) == 2
    assert "no-data.parquet: missing column 'data'" in capsys.readouterr().err

    assert main(["detect", "--downloads", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--backend", "hog"]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err

    assert main(["detect", "--downloads", str(crawl_dir), "--out", str(tmp_path / "o"), "--weights", "x.pt", "--device", "gpu"]) == 2
    assert "field 'detect.device': Value error, must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err
