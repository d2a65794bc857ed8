"""Curation quality against ground truth on a tiny hand-made site and output root, every figure counted by hand."""
from __future__ import annotations

import json

import pytest

from curation.synthweb.attribute_words import judge_caption
from curation.synthweb.identities import identity_attributes
from curation.synthweb.quality import curation_quality, format_quality_table
from storage.catalog import write_run_record
from storage.errors import GadmsError
from storage.layout import OutputLayout
from storage.records import Captions, PersonCrop, Reject, make_sample_id
from storage.shards import commit_shard

BASE = "http://127.0.0.1:8000"
SIZE = (256, 512)


def _keypoints(box, hidden_hips: bool = False) -> list[list[float]]:
    """17 keypoints inside the box, all visible (the hips hidden behind something when asked)."""
    x1, y1, x2, y2 = box
    return [[(x1 + x2) / 2, y1 + (y2 - y1) * (k + 1) / 18, 1 if hidden_hips and k in (11, 12) else 2]
            for k in range(17)]


def _person(box, identity, kind, verdict, hidden_hips=False) -> dict:
    return {"bbox": list(box), "keypoints": _keypoints(box, hidden_hips), "identity": identity, "kind": kind,
            "caption": None, "expected_verdict": verdict}


def _record(name: str, persons: list[dict], copy_of: tuple[str, str] | None = None) -> dict:
    """`copy_of`: (original name, duplicate kind)."""
    return {"path": f"/img/{name}.jpg", "width": SIZE[0], "height": SIZE[1], "persons": persons,
            "duplicate_of": copy_of and f"/img/{copy_of[0]}.jpg", "duplicate_kind": copy_of and copy_of[1],
            "fault": None, "alt_text": "", "pages": ["/gallery/1.html"]}


# The site: a..n. b copies a (re-encoded), k copies a exactly, n mirrors d; the crawler 404s on "missing".
GROUND_TRUTH = [
    _record("a", [_person((60, 40, 200, 480), 1, "main", "one_clear_person")]),
    _record("b", [_person((60, 40, 200, 480), 1, "main", "one_clear_person")], copy_of=("a", "reencoded")),
    _record("c", [_person((50, 30, 190, 470), None, "mannequin", "mannequin")]),
    _record("d", [_person((20, 40, 150, 470), 2, "main", "one_clear_person"),
                  _person((180, 300, 220, 400), 3, "small", "too_blurry")]),  # 40 px wide: fails the size rule
    _record("e", [_person((70, 50, 200, 490), 4, "occluded", "heavily_occluded", hidden_hips=True)]),
    _record("f", [_person((60, 40, 200, 480), 5, "main", "one_clear_person")]),
    _record("g", [_person((60, 40, 200, 480), 6, "main", "one_clear_person")]),
    _record("h", [_person((60, 60, 190, 470), 7, "poster", "drawing_or_render")]),
    _record("missing", []),
    _record("j", []),
    _record("k", [_person((60, 40, 200, 480), 1, "main", "one_clear_person")], copy_of=("a", "exact")),
    _record("l", [_person((60, 40, 200, 480), 8, "main", "one_clear_person")]),
    _record("m", [_person((60, 40, 200, 480), 9, "main", "one_clear_person")]),
    _record("n", [_person((106, 40, 236, 470), 2, "main", "one_clear_person"),
                  _person((36, 300, 76, 400), 3, "small", "too_blurry")], copy_of=("d", "mirrored")),
]
URL_ROWS = ["a", "a", "b", "c", "d", "e", "f", "g", "h", "missing", "j", "k", "l", "m", "n"]  # a is listed twice

# Captions of a (identity 1: man, short gray hair, green coat, pink trousers, black shoes, backpack) and
# d (identity 2: man, short gray hair, orange coat, beige trousers, gray shoes); wrong words marked.
A_CAPTIONS = ("A man with short gray hair wears a green coat, pink trousers and black shoes; he carries a backpack.",
              "The man is standing in a red coat and pink trousers.")  # red
D_CAPTIONS = ("She has short gray hair and wears an orange coat with beige trousers.",  # She
              "A man in an orange coat, beige skirt and [colored shoes].")  # skirt; an unfilled slot


def _crop(name: str, box) -> PersonCrop:
    sha = f"sha-{name}"
    box = tuple(float(v) for v in box)
    return PersonCrop(sample_id=make_sample_id(sha, box), source_url=f"{BASE}/img/{name}.jpg", page_url="",
                      alt_text="", source_sha256=sha, image=b"jpeg", width=100, height=200, bbox=box,
                      det_score=0.9, keypoints=None, phash=0, crop_sha256=f"crop-{name}")


def _reject(stage: str, reason: str, name: str, crop: PersonCrop | None = None, detail: str = "",
            box=None) -> Reject:
    url = f"{BASE}/img/{name}.jpg"
    if crop is not None:
        return Reject(stage, reason, url, crop.sample_id, detail, bbox=crop.bbox)
    sample_id = make_sample_id(f"sha-{name}", box) if box else ""
    return Reject(stage, reason, url, sample_id, detail, bbox=box)


@pytest.fixture
def built(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "ground_truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GROUND_TRUTH))
    urls = tmp_path / "urls.jsonl"
    urls.write_text("".join(json.dumps({"url": f"{BASE}/img/{n}.jpg", "caption": ""}) + "\n" for n in URL_ROWS))

    a, b, c = _crop("a", (62, 42, 198, 478)), _crop("b", (62, 42, 198, 478)), _crop("c", (52, 32, 188, 468))
    d, e, f = _crop("d", (22, 42, 148, 468)), _crop("e", (72, 52, 198, 488)), _crop("f", (60, 40, 200, 480))
    g, h, j = _crop("g", (60, 40, 200, 480)), _crop("h", (58, 62, 192, 468)), _crop("j", (10, 10, 110, 300))
    m, n = _crop("m", (60, 40, 200, 480)), _crop("n", (108, 42, 234, 468))
    rejects = [
        _reject("crawl", "duplicate_url", "a"), _reject("crawl", "http_404", "missing"),
        _reject("crawl", "duplicate_sha256", "k", detail=f"{BASE}/img/a.jpg"),
        _reject("detect", "too_small", "d", box=(178.0, 302.0, 221.0, 398.0)),
        _reject("detect", "low_conf", "l", box=(60.0, 40.0, 200.0, 480.0)),  # a person the detector doubts
        _reject("dedup", "near_duplicate", "b", b, detail=a.sample_id),  # a true link
        _reject("dedup", "near_duplicate", "f", f, detail=a.sample_id),  # another person merged into a
        _reject("filter", "mannequin", "c", c),
        _reject("filter", "heavily_occluded", "e", e),  # the pose model guessed the hidden hips
        _reject("filter", "several_people", "g", g),  # a person wrongly rejected
        _reject("filter", "not_a_person", "j", j),  # a box on the background
        _reject("quality", "unfilled_placeholder", "m", m, detail="caption1: contains '[bag]'"),
    ]
    captions = [Captions(a.sample_id, *A_CAPTIONS, "sim", "openai", "t1", "v1"),
                Captions(d.sample_id, *D_CAPTIONS, "sim", "openai", "t1", "v1"),
                Captions(h.sample_id, "A drawing of a woman.", "A framed drawing.", "sim", "openai", "t1", "v1"),
                Captions(n.sample_id, "A person.", "Someone walking.", "sim", "openai", "t1", "v1")]
    root = tmp_path / "root"
    layout = OutputLayout(str(root))
    commit_shard(layout, "part-00000", "run-1", [a, d, h, n], captions, rejects)
    write_run_record(str(root), {"run_id": "run-1", "flow": "build-webperson", "started_at": "2025-01-01T00:00:00",
                                 "config": {"inputs": {"url_lists": [str(urls)], "seed_pages": [], "limit": None},
                                            "crawl": {"url_column": "url", "caption_column": "caption"},
                                            "detect": {"weights": "yolo11n-pose.pt", "imgsz": 384}}})
    return site, root


def test_curation_quality_gives_the_hand_counted_figures(built):
    quality = curation_quality(*built)
    # 11 crops passed detection: a b c d e f g h j m n. e's figure hides its hips (fails the pose rule), j is no
    # figure. Figures meeting the rules in the images that reached detection: a b c d f g h l m n (the small ones
    # of d and n and e's fail them); l was missed.
    assert quality["detection"] == {
        "crops": 11, "correct": 9, "precision": 0.8182, "figures_meeting_rules": 10, "found": 9, "recall": 0.9,
        "false_positives": {"no figure": 1, "occluded failing the rules": 1}, "missed_by_kind": {"main": 1},
        "not_persons_passed": 2}
    # Instances: a=b, c, d=n, e, f, g, h, m. Links b → a (caught) and n → d (the mirror was kept); f merged into a.
    assert quality["dedup"] == {"instances": 8, "links": 2, "caught": 1, "recall": 0.5,
                                "missed_by_copy_kind": {"mirrored": 1}, "wrongly_merged": 1, "merged_share": 0.125,
                                "unresolved": 0, "exact_copies_dropped_by_crawl": 1}
    # Past dedup: a c d e g h j m n. Negatives c e h j; the poster h got through. Persons a d g m n; g rejected.
    assert quality["filter"] == {
        "crops": 9, "negatives": 4, "negatives_rejected": 3, "rejected_share": 0.75, "right_reason": 3,
        "right_reason_share": 0.75,
        "negatives_by_kind": {"mannequin": {"crops": 1, "rejected": 1, "reasons": {"mannequin": 1}},
                              "no figure": {"crops": 1, "rejected": 1, "reasons": {"not_a_person": 1}},
                              "occluded": {"crops": 1, "rejected": 1, "reasons": {"heavily_occluded": 1}},
                              "poster": {"crops": 1, "rejected": 0, "reasons": {}}},
        "persons": 5, "persons_rejected": 1, "persons_rejected_share": 0.2}
    # a: 10 + 4 right, "red" wrong; d: 6 right, "she" wrong, 4 right, "skirt" wrong; n's have no attribute word.
    # The poster's are not judged.
    assert quality["captions"] == {"captions_judged": 6, "attribute_words": 27, "right": 24, "right_share": 0.8889,
                                   "wrong_words": {"red": 1, "she": 1, "skirt": 1}, "unfilled_slots": 2}
    assert quality["kept"] == {"samples": 4, "one_clear_person": 3, "precision": 0.75}
    assert quality["urls"] == {"rows": 15, "accounted": True, "by_final_stage": {
        "crawl": 3, "dedup": 2, "detect": 1, "filter": 4, "kept": 4, "quality": 1}}
    table = format_quality_table(quality)
    assert "precision               81.8%  9/11 crops" in table
    assert "URLs 15: crawl 3, dedup 2, detect 1, filter 4, kept 4, quality 1 (all accounted for)" in table


def test_attribute_words_by_hand():
    one = identity_attributes(1)
    judged = judge_caption(A_CAPTIONS[0], one)
    assert (judged.right, judged.wrong) == (10, [])
    judged = judge_caption("A woman in a green shirt carrying a shoulder bag, wearing glasses.", one)
    assert (judged.right, judged.wrong) == (1, ["woman", "shirt", "bag", "glasses"])  # green goes with shirt


def test_a_url_the_build_never_mentions_is_unaccounted(built, tmp_path):
    site, root = built
    urls = tmp_path / "urls.jsonl"
    urls.write_text(urls.read_text() + json.dumps({"url": f"{BASE}/img/j.jpg", "caption": ""}) + "\n"
                    + json.dumps({"url": f"{BASE}/img/never.jpg", "caption": ""}) + "\n")
    result = curation_quality(site, root)["urls"]
    assert result["rows"] == 17 and result["accounted"] is False
    assert result["by_final_stage"]["unaccounted"] == 2  # j's second row has no crawl reject; never.jpg nothing


def test_bad_inputs_are_one_line_errors(built, tmp_path):
    site, root = built
    with pytest.raises(GadmsError, match=f"^{tmp_path}: no ground_truth.jsonl here"):
        curation_quality(tmp_path, root)
    with pytest.raises(GadmsError, match=f"^{tmp_path / 'nothing'}: no build-webperson run record"):
        curation_quality(site, tmp_path / "nothing")
    (site / "ground_truth.jsonl").write_text("[1]\n")
    with pytest.raises(GadmsError, match="ground_truth.jsonl:1: expected a JSON object, got list$"):
        curation_quality(site, root)
