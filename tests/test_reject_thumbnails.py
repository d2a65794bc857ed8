"""Reject thumbnails: the budget per reason and shard, the picture each reject gets, and the catalog view."""
from __future__ import annotations

import io

from PIL import Image

from storage.catalog import connect, refresh
from storage.records import Download, Reject
from storage.reject_thumbnails import reject_thumbnails_table
from tests.browse_fixtures import jpeg
from tests.storage_fixtures import build_root, crop


def test_budget_and_pictures(tmp_path):
    scene = Image.new("RGB", (400, 300), (0, 0, 255))
    scene.paste(Image.new("RGB", (50, 100), (255, 0, 0)), (100, 50))
    source = Download("https://a.example/scene.jpg", "", "", jpeg(scene), "s" * 64, "image/jpeg", 400, 300)
    kept_crop = crop(1)
    rejects = [Reject("crawl", "http_404", url="https://a.example/gone.jpg"),
               Reject("detect", "no_person", url=source.url),
               *[Reject("detect", "too_small", url=source.url, sample_id=f"{i:020d}", detail=f"side {i}",
                        bbox=(100.0, 50.0, 150.0, 150.0)) for i in range(5)],
               Reject("quality", "too_short", url=kept_crop.source_url, sample_id=kept_crop.sample_id),
               Reject("filter", "not_a_person", url="https://a.example/elsewhere.jpg", sample_id="f" * 20)]
    table = reject_thumbnails_table(rejects, [source], [kept_crop], "shard-1", per_reason=3, max_side=40)
    rows = table.to_pylist()
    # crawl has no picture, the budget keeps 3 of 5, a reject whose picture the chunk lacks is skipped.
    assert [(r["stage"], r["reason"], r["reject_row"]) for r in rows] == [
        ("detect", "no_person", 1), ("detect", "too_small", 2), ("detect", "too_small", 3), ("detect", "too_small", 4),
        ("quality", "too_short", 7)]
    pictures = [Image.open(io.BytesIO(r["image"])) for r in rows]
    assert [p.size for p in pictures] == [(r["width"], r["height"]) for r in rows]
    assert pictures[0].size == (40, 30)  # the whole image, longest side 40
    assert pictures[1].size == (20, 40)  # the box cut out of the source
    red, _, blue = pictures[1].convert("RGB").getpixel((10, 20))
    assert red > 200 and blue < 60  # the red person, not the blue scene
    assert rows[1]["detail"] == "side 0" and rows[0]["detail"] is None
    assert pictures[4].size == (20, 40)  # the crop's own JPEG (32 × 64), scaled


def test_catalog_of_a_root_without_thumbnails(tmp_path):
    build_root(tmp_path)  # written without thumbnails, as builds before them were
    con = connect(refresh(str(tmp_path)))
    assert con.execute("SELECT count(*) FROM reject_thumbnails").fetchone() == (0,)
    con.close()
