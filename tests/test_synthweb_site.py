"""The synthetic web's renderer, site writer, ground truth, alt text and identity dataset."""
from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageChops, ImageDraw

from curation.synthweb import (
    FLIP_INDEX,
    clean_caption,
    identity_attributes,
    make_alt_text,
    render_identity_dataset,
    render_site,
    write_url_list,
)
from curation.synthweb.alttext import STYLES
from curation.synthweb.figure import Pose, draw_person, random_pose
from curation.synthweb.identities import COLOURS
from curation.synthweb.scene import NEGATIVE_PLANS, render_scene
from flows.cli import main
from storage.errors import GadmsError


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return render_site(tmp_path_factory.mktemp("site") / "web", images=48, seed=7)


def _records(site) -> list[dict]:
    return [json.loads(line) for line in site.ground_truth.read_text(encoding="utf-8").splitlines()]


def _tree_digest(docroot: Path) -> dict[str, str]:
    return {str(p.relative_to(docroot)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(docroot.rglob("*")) if p.is_file()}


def test_same_seed_same_site_other_seed_other_site(site, tmp_path):
    again = render_site(tmp_path / "again", images=48, seed=7)
    assert again.ground_truth.read_bytes() == site.ground_truth.read_bytes()
    assert _tree_digest(again.docroot) == _tree_digest(site.docroot)
    other = render_site(tmp_path / "other", images=48, seed=8)
    assert other.ground_truth.read_bytes() != site.ground_truth.read_bytes()


def test_site_layout_and_counts(site):
    records = _records(site)
    scenes = [r for r in records if r["duplicate_of"] is None and r["fault"] is None]
    assert len(scenes) == 48 and site.scenes == 48 and site.records == len(records)
    assert (site.docroot / "robots.txt").read_text().startswith("User-agent: *\nDisallow: /private/\n")
    assert (site.docroot / "sitemap.xml").is_file() and (site.docroot / "index.html").is_file()
    assert {r["fault"] for r in records} - {None} == {
        "truncated_jpeg", "html_as_jpeg", "decompression_bomb", "http_404", "noai", "slow", "redirect_loop",
        "redirect", "http_500", "rate_limited", "short_read"}
    assert {r["duplicate_kind"] for r in records} >= {"exact", "reencoded", "resized"}
    assert any(r["robots_disallowed"] for r in records)
    plans = {r["plan"] for r in scenes}
    assert {"single", "empty", "group"} <= plans
    kinds = {p["kind"] for r in scenes for p in r["persons"]}
    assert {"main", "small"} <= kinds
    # Every referenced image is on a page; the private ones only on private pages.
    for record in records:
        if record["path"].startswith("/private/"):
            assert record["pages"] and all(p.startswith("/private/") for p in record["pages"])
    assert len(records[0]["pages"]) == 2  # the first scene is referenced twice


def test_the_filters_work_is_one_scene_in_twenty_with_its_expected_verdict(site):
    scenes = {int(r["path"].rsplit("/s", 1)[1][:5]): r for r in _records(site)
              if r["duplicate_of"] is None and r["fault"] is None}
    negatives = {i: r["plan"] for i, r in scenes.items() if r["plan"] in NEGATIVE_PLANS}
    assert negatives == {7: "mannequin", 27: "overlapping", 47: "poster"}
    verdicts = {i: [(p["kind"], p["expected_verdict"]) for p in scenes[i]["persons"]] for i in negatives}
    assert verdicts == {7: [("mannequin", "mannequin")],
                        27: [("overlapping", "several_people"), ("overlapping", "several_people")],
                        47: [("poster", "drawing_or_render")]}
    assert scenes[7]["persons"][0]["identity"] is None and scenes[47]["persons"][0]["identity"] is not None
    # The other scenes' persons: whole and large ones are kept unless another shares their crop.
    others = [p for i, r in scenes.items() if i not in negatives for p in r["persons"]]
    assert {p["expected_verdict"] for p in others if p["kind"] == "small"} == {"too_blurry"}
    assert {p["expected_verdict"] for p in others if p["kind"] == "truncated"} <= {"heavily_occluded"}
    assert {p["expected_verdict"] for p in others if p["kind"] == "main"} <= {"one_clear_person", "several_people"}


def test_negative_figures_look_like_what_they_are():
    """Boxes inside the image; mannequins and statues depict no one; a poster is ink on paper; a board hides part
    of the occluded person."""
    for plan in NEGATIVE_PLANS:
        scene = render_scene(random.Random(f"negative-{plan}"), 0, list(range(8)), plan)
        assert scene.plan == plan and scene.persons
        image = np.asarray(scene.image.convert("RGB"), dtype=np.int16)
        for person in scene.persons:
            x1, y1, x2, y2 = (round(v) for v in person.bbox)
            assert 0 <= x1 < x2 <= scene.image.width and 0 <= y1 < y2 <= scene.image.height
            assert (person.identity is None) == (plan in ("mannequin", "statue"))
        if plan == "poster":  # two colours on the sheet: paper and ink (lighting scales both)
            x1, y1, x2, y2 = (round(v) for v in scene.persons[0].bbox)
            sheet = image[y1:y2, x1:x2].reshape(-1, 3)
            assert len({tuple(c // 24) for c in sheet}) < 12
        if plan == "occluded":  # keypoints behind the board are marked hidden
            assert any(v == 1 for _, _, v in scene.persons[0].keypoints)


def test_ground_truth_matches_files_and_geometry(site):
    for record in _records(site):
        if record["sha256"] is None:
            assert record["fault"] in ("http_404", "http_500", "redirect_loop")
            continue
        if record["fault"] in ("slow", "rate_limited", "short_read", "redirect"):
            continue  # served from a payload file; checked over HTTP in test_synthweb_server
        data = (site.docroot / record["path"].lstrip("/")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"], record["path"]
        if record["fault"] in ("html_as_jpeg", "decompression_bomb", "truncated_jpeg"):
            continue
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (record["width"], record["height"])
        assert len(record["noise_words"]) == len(record["alt_text"].split())
        for person in record["persons"]:
            x1, y1, x2, y2 = person["bbox"]
            assert 0 <= x1 < x2 <= record["width"] and 0 <= y1 < y2 <= record["height"]
            assert len(person["keypoints"]) == 17
            if person["identity"] is None:  # a mannequin or a statue depicts no one
                assert person["kind"] in ("mannequin", "statue") and person["caption"] is None
            else:
                assert person["caption"] == clean_caption(identity_attributes(person["identity"]))
            for x, y, v in person["keypoints"]:
                assert v in (0, 1, 2)
                if v:
                    assert x1 - 2 <= x <= x2 + 2 and y1 - 2 <= y <= y2 + 2
                else:
                    assert (x, y) == (0, 0)
            if person["kind"] in ("main", "small"):
                assert all(v > 0 for _, _, v in person["keypoints"])


def test_near_duplicates_carry_transformed_ground_truth(site):
    records = {r["path"]: r for r in _records(site)}
    dups = [r for r in records.values() if r["duplicate_kind"] and r["fault"] is None]
    assert dups
    for dup in dups:
        original = records[dup["duplicate_of"]]
        assert len(dup["persons"]) == len(original["persons"])
        if dup["duplicate_kind"] == "exact":
            assert dup["sha256"] == original["sha256"]
        if dup["duplicate_kind"] == "resized":
            scale = dup["width"] / original["width"]
            for a, b in zip(dup["persons"], original["persons"]):
                assert a["bbox"] == pytest.approx([v * scale for v in b["bbox"]], abs=0.11)
        if dup["duplicate_kind"] == "mirrored":
            w = original["width"]
            for a, b in zip(dup["persons"], original["persons"]):
                assert a["bbox"][0] == pytest.approx(w - b["bbox"][2], abs=0.11)
                for j, k in enumerate(FLIP_INDEX):
                    if b["keypoints"][k][2]:
                        assert a["keypoints"][j][0] == pytest.approx(w - b["keypoints"][k][0], abs=0.11)


@pytest.mark.parametrize("angle", [0.0, 88.0, -95.0])
def test_drawn_box_is_tight_around_the_drawn_pixels(angle):
    rng = random.Random(3)
    for number in range(6):
        image = Image.new("RGB", (512, 512), (0, 255, 0))  # no identity colour is pure green
        pose = random_pose(rng)
        drawn = draw_person(ImageDraw.Draw(image), image.size, identity_attributes(number), pose, 300,
                            (256, 420 if angle == 0 else 260), angle, rng)
        background = Image.new("RGB", image.size, (0, 255, 0))
        painted = ImageChops.difference(image, background).convert("L").point(lambda v: 255 if v else 0).getbbox()
        assert painted is not None
        for got, want in zip(painted, drawn.bbox):
            assert abs(got - want) <= 2.5, (painted, drawn.bbox, pose)


def test_back_view_hides_the_face_and_swaps_sides():
    rng = random.Random(0)
    identity = identity_attributes(1)
    base = dict(arm_angles=(5.0, 5.0), elbow_bends=(0.0, 0.0), arm_lengths=(1.0, 1.0), leg_angles=(3.0, 3.0),
                knee_bends=(0.0, 0.0), leg_lengths=(1.0, 1.0))
    size = (256, 512)
    front = draw_person(ImageDraw.Draw(Image.new("RGB", size)), size, identity, Pose(back_view=False, **base),
                        400, (128, 480), 0.0, rng)
    back = draw_person(ImageDraw.Draw(Image.new("RGB", size)), size, identity, Pose(back_view=True, **base),
                       400, (128, 480), 0.0, rng)
    assert [v for _, _, v in front.keypoints] == [2] * 17
    assert [v for _, _, v in back.keypoints[:3]] == [1, 1, 1]
    # Facing the camera the person's left shoulder (index 5) is on the image right; from behind, on the left.
    assert front.keypoints[5][0] > front.keypoints[6][0]
    assert back.keypoints[5][0] < back.keypoints[6][0]


def test_alt_text_styles_and_noise_flags():
    identity = identity_attributes(12)
    seen = {}
    for i in range(400):
        alt = make_alt_text(identity, random.Random(i))
        assert len(alt.noise_words) == len(alt.text.split())
        seen.setdefault(alt.style, alt)
        words = alt.text.split()
        if alt.style == "fair":
            assert not any(alt.noise_words) and identity.gender in words
        elif alt.style in ("spam", "filename"):
            assert words and all(alt.noise_words)
        elif alt.style == "empty":
            assert alt.text == "" and alt.noise_words == ()
        elif alt.style == "wrong_colour":
            wrong = [w for w, n in zip(words, alt.noise_words) if n]
            assert 1 <= len(wrong) <= 2 and all(w in COLOURS for w in wrong)
        elif alt.style == "fair_spam":
            assert any(alt.noise_words) and not all(alt.noise_words)
    assert set(seen) == set(STYLES)
    nobody = make_alt_text(None, random.Random(5))
    assert all(nobody.noise_words)


def test_identity_dataset_is_deterministic_and_labelled():
    first = render_identity_dataset(3, 2, seed=11)
    again = render_identity_dataset(3, 2, seed=11)
    other = render_identity_dataset(3, 2, seed=12)
    assert [s.identity for s in first] == [0, 0, 1, 1, 2, 2]
    assert all(s.image.size == (128, 384) for s in first)
    assert [s.image.tobytes() for s in first] == [s.image.tobytes() for s in again]
    assert first[0].image.tobytes() != other[0].image.tobytes()
    assert first[0].image.tobytes() != first[1].image.tobytes()  # same identity, another picture
    for sample in first:
        assert sample.clean_caption == clean_caption(identity_attributes(sample.identity))
        assert len(sample.noise_words) == len(sample.alt_text.split())
    later = render_identity_dataset(2, 1, seed=11, size=(64, 192), first_identity=500)
    assert [s.identity for s in later] == [500, 501] and later[0].image.size == (64, 192)


def test_url_lists_parquet_and_jsonl(site, tmp_path):
    referenced = [r for r in _records(site) if r["pages"]]
    rows = write_url_list(site.root, "http://127.0.0.1:9/", tmp_path / "urls.parquet")
    table = pq.read_table(tmp_path / "urls.parquet")
    assert rows == table.num_rows == len(referenced)
    assert table.column_names == ["url", "caption", "page_url"]
    assert table.column("url")[0].as_py() == "http://127.0.0.1:9" + referenced[0]["path"]
    assert table.column("caption").to_pylist() == [r["alt_text"] for r in referenced]
    write_url_list(site.root, "http://127.0.0.1:9", tmp_path / "urls.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "urls.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [x["url"] for x in lines] == table.column("url").to_pylist()
    with pytest.raises(GadmsError, match="must end in .parquet or .jsonl"):
        write_url_list(site.root, "http://127.0.0.1:9", tmp_path / "urls.csv")
    with pytest.raises(GadmsError, match="no ground_truth.jsonl"):
        write_url_list(tmp_path, "http://127.0.0.1:9", tmp_path / "urls.jsonl")


def test_cli_render_and_urls(tmp_path, capsys):
    assert main(["synthweb", "render", "--out", str(tmp_path / "web"), "--images", "5", "--seed", "1"]) == 0
    assert "rendered 5 scenes" in capsys.readouterr().out
    assert main(["synthweb", "render", "--out", str(tmp_path / "web"), "--images", "5"]) == 2
    assert "output folder is not empty" in capsys.readouterr().err
    assert main(["synthweb", "render", "--out", str(tmp_path / "zero"), "--images", "0"]) == 2
    out = tmp_path / "urls.jsonl"
    assert main(["synthweb", "urls", str(tmp_path / "web"), "--base-url", "http://127.0.0.1:8000",
                 "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8").count("\n") >= 5


def test_described_captions_are_true_varied_and_deterministic():
    from curation.synthweb.identities import described_caption, garment_phrases

    identity = identity_attributes(1)
    captions = [described_caption(identity, random.Random(k)) for k in range(40)]
    assert captions == [described_caption(identity, random.Random(k)) for k in range(40)]
    top, bottom, _ = garment_phrases(identity)
    assert all(top in c and bottom in c and c[0].isupper() and c.endswith(".") for c in captions)
    assert len(set(captions)) >= 15
    samples = render_identity_dataset(2, 2, seed=11)
    assert [s.described for s in samples] == [
        described_caption(identity_attributes(s.identity), random.Random(f"synthweb-described-11-{s.identity}-{k}"))
        for s, k in zip(samples, [0, 1, 0, 1])
    ]


def test_synthetic_benchmark_per_image_queries(tmp_path):
    from curation.synthweb.benchmark import write_synthetic_benchmark

    dataset = write_synthetic_benchmark(tmp_path, 1, 0, 2, 3, seed=4, query_captions="per_image")
    records = json.loads((dataset / "data_captions.json").read_text())
    test = [r for r in records if r["split"] == "test"]
    expected = [s.described for s in render_identity_dataset(2, 3, seed=4, size=(32, 64), first_identity=1)]
    assert [r["captions"][0] for r in test] == expected
    assert [r["id"] for r in test] == [1, 1, 1, 2, 2, 2]


def test_described_alt_text_keeps_only_alt_texts_about_the_person(tmp_path):
    from curation.synthweb.benchmark import write_synthetic_benchmark

    all_alt = json.loads((write_synthetic_benchmark(tmp_path / "a", 12, 0, 0, 2, seed=3)
                          / "noise_words.json").read_text())
    described = json.loads((write_synthetic_benchmark(tmp_path / "d", 12, 0, 0, 2, seed=3,
                                                      train_captions="described_alt_text")
                            / "noise_words.json").read_text())
    assert described == {name: entry for name, entry in all_alt.items() if not all(entry["noise"])}
    assert 0 < len(described) < len(all_alt)
