"""The simulated VLM over the OpenAI protocol, reached through the real `openai` caption backend."""
from __future__ import annotations

import hashlib
import io
import json
import random

import pytest
from PIL import Image

from curation.caption import CaptionConfig, caption_crops
from curation.caption.backends import jpeg_for_model
from curation.caption.prompts import assign_templates, load_templates
from curation.detect.crop import crop_region
from curation.synthweb import identity_attributes, render_site
from curation.synthweb.identities import COLOURS, Identity
from curation.synthweb.vlm import (
    SIMULATED_MODEL_NAME,
    SimulatedVlm,
    SimulatedVlmServer,
    fill_caption,
    read_hallucination_log,
)
from flows.cli import main
from storage.records import PersonCrop, make_sample_id


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return render_site(tmp_path_factory.mktemp("vlm") / "site", images=60, seed=3)


def _records(site) -> list[dict]:
    return [json.loads(line) for line in site.ground_truth.read_text(encoding="utf-8").splitlines()]


def _crop(site, record: dict, region: tuple[int, int, int, int]) -> PersonCrop:
    """A crop as the detect stage makes it: the region of the source image, JPEG-encoded."""
    with Image.open(site.docroot / record["path"].lstrip("/")) as image:
        buffer = io.BytesIO()
        image.convert("RGB").crop(region).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    bbox = tuple(float(v) for v in region)
    return PersonCrop(
        sample_id=make_sample_id(record["sha256"], bbox), source_url=f"http://127.0.0.1{record['path']}",
        page_url="", alt_text=record["alt_text"], source_sha256=record["sha256"], image=data,
        width=region[2] - region[0], height=region[3] - region[1], bbox=bbox, det_score=0.9, keypoints=None,
        phash=0, crop_sha256=hashlib.sha256(data).hexdigest(),
    )


def _person_crop(site, kind: str, plan: str | None = None) -> tuple[PersonCrop, dict]:
    """The first original scene person of `kind`, its box jittered by 3 % as a detector's would be."""
    rng = random.Random(0)
    for record in _records(site):
        if record["duplicate_of"] or record["fault"] or (plan and record["plan"] != plan):
            continue
        for person in record["persons"]:
            if person["kind"] == kind:
                x1, y1, x2, y2 = person["bbox"]
                w, h = x2 - x1, y2 - y1
                box = (x1 + rng.uniform(-.03, .03) * w, y1 + rng.uniform(-.03, .03) * h,
                       x2 + rng.uniform(-.03, .03) * w, y2 + rng.uniform(-.03, .03) * h)
                region = crop_region(box, (record["width"], record["height"]), 0.05)
                return _crop(site, record, region), person
    raise AssertionError(f"the site has no {kind} person")


def _empty_scene_crop(site) -> PersonCrop:
    record = next(r for r in _records(site) if r["plan"] == "empty" and not r["duplicate_of"] and not r["fault"])
    return _crop(site, record, (30, 60, 130, 330))


def _config(server: SimulatedVlmServer, **changes) -> CaptionConfig:
    return CaptionConfig(endpoints=[server.base_url], models=[SIMULATED_MODEL_NAME], retries=0, **changes)


SHE = Identity(number=0, gender="woman", hair_length="long", hair_colour="brown", skin=(0, 0, 0),
               top_type="jacket", top_colour="orange", bottom_type="skirt", bottom_colour="navy",
               shoe_colour="white", backpack=False, shoulder_bag=True, hat=False, hat_colour="red", glasses=False,
               build=1.0)


def test_fill_caption_by_hand():
    template = "A [man/woman] with [hairstyle] wears a [colored top], [colored bottom] and a [headwear]; " \
               "[he/she] carries a [bag]."
    caption, hallucinated = fill_caption(template, SHE, "main", random.Random(0), 0.0)
    assert caption == "A woman with long brown hair wears an orange jacket, navy skirt; she carries a shoulder bag."
    assert hallucinated == []


def test_every_hallucinated_word_is_in_the_caption_where_the_log_says():
    template = "A [man/woman] in a [colored top] and [colored shoes]; [he/she] carries a [bag] and wears [accessory]."
    for seed in range(20):
        caption, hallucinated = fill_caption(template, SHE, "main", random.Random(seed), 0.5)
        words = caption.split()
        for entry in hallucinated:
            assert words[entry["word_index"]].strip(".,;") == entry["word"]
            assert entry["word"] != entry["truth"]
    caption, hallucinated = fill_caption(template, SHE, "main", random.Random(1), 1.0)
    assert {h["slot"] for h in hallucinated} == {"man/woman", "colored top", "colored shoes", "he/she", "accessory"}
    assert caption.split()[1] == "man" and "glasses." in caption.split()  # flipped; invented
    by_slot = {h["slot"]: h for h in hallucinated}
    assert by_slot["he/she"]["word"] == "he" and by_slot["accessory"]["word"] == "glasses"
    for slot in ("colored top", "colored shoes"):
        wrong, truth = by_slot[slot]["word"], by_slot[slot]["truth"]
        assert wrong in COLOURS and wrong != truth.split()[0]


def test_through_the_openai_backend_a_person_is_kept_and_captioned_truly_and_negatives_get_their_reason(
        site, tmp_path):
    person_crop, person = _person_crop(site, "main", plan="single")
    truncated_crop, _ = _person_crop(site, "truncated")
    small_crop, _ = _person_crop(site, "small")
    empty_crop = _empty_scene_crop(site)
    identity = identity_attributes(person["identity"])
    with SimulatedVlmServer(SimulatedVlm(site.root)) as server:
        config = _config(server)
        captions, rejects = caption_crops([person_crop, truncated_crop, small_crop, empty_crop], config,
                                          tmp_path / "cache")
        assert {(r.sample_id, r.stage, r.reason) for r in rejects} == {
            (truncated_crop.sample_id, "filter", "heavily_occluded"),
            (small_crop.sample_id, "filter", "too_blurry"),
            (empty_crop.sample_id, "filter", "not_a_person"),
        }
        assert len(captions) == 1 and captions[0].sample_id == person_crop.sample_id
        result = captions[0]
        assert result.caption_model == SIMULATED_MODEL_NAME and result.caption_backend == "openai"
        bank = {t.id: t for t in load_templates(config.templates_path)}
        first, second = assign_templates(person_crop.sample_id, list(bank.values()), 2, salt="v1")
        assert result.template_id == f"{first.id},{second.id}"
        for text, template in ((result.caption1, first), (result.caption2, second)):
            expected, _ = fill_caption(template.text, identity, "main", random.Random(0), 0.0)
            assert text == expected
            if "[colored top]" in template.text:
                assert f"{identity.top_colour} {identity.top_type}" in text
            if "[man/woman]" in template.text:
                assert identity.gender in text.split()

        sent = server.requests
        again, _ = caption_crops([person_crop, truncated_crop], config, tmp_path / "cache")
        assert again == captions and server.requests == sent  # the request cache: a rerun sends nothing


@pytest.fixture(scope="module")
def negatives_site(tmp_path_factory):
    """Long enough for every negative plan once: they come one scene in 20, at 7, 27, ..., 87."""
    return render_site(tmp_path_factory.mktemp("vlm-negatives") / "site", images=90, seed=3)


def test_through_the_openai_backend_each_negative_kind_is_rejected_with_its_reason(negatives_site, tmp_path):
    site = negatives_site
    person_crop, _ = _person_crop(site, "main", plan="single")
    negatives = {kind: _person_crop(site, kind)[0] for kind in ("mannequin", "statue", "poster", "occluded")}
    # The detector often boxes two overlapping persons as one: the union's crop is several people too.
    record = next(r for r in _records(site) if r["plan"] == "overlapping" and not r["duplicate_of"])
    boxes = [p["bbox"] for p in record["persons"]]
    union = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    negatives["overlapping"] = _person_crop(site, "overlapping")[0]
    negatives["overlapping union"] = _crop(site, record, crop_region(union, (record["width"], record["height"]), 0.05))
    with SimulatedVlmServer(SimulatedVlm(site.root)) as server:
        captions, rejects = caption_crops([person_crop, *negatives.values()], _config(server), tmp_path / "cache")
    assert [c.sample_id for c in captions] == [person_crop.sample_id]
    reasons = {r.sample_id: (r.stage, r.reason) for r in rejects}
    assert {kind: reasons[crop.sample_id] for kind, crop in negatives.items()} == {
        "mannequin": ("filter", "mannequin"),
        "statue": ("filter", "mannequin"),
        "poster": ("filter", "drawing_or_render"),
        "occluded": ("filter", "heavily_occluded"),
        "overlapping": ("filter", "several_people"),
        "overlapping union": ("filter", "several_people"),
    }


def test_a_person_behind_a_slow_or_rate_limited_url_is_recognised(site, tmp_path):
    """Those URLs serve their image from a payload file, which the VLM must know too."""
    crops = []
    for fault in ("slow", "rate_limited", "short_read"):
        record = next(r for r in _records(site) if r["fault"] == fault)
        (person,) = record["persons"]
        assert person["expected_verdict"] == "one_clear_person"
        payload = {**record, "path": site.faults[record["path"]]["file"]}
        crops.append(_crop(site, payload, crop_region(tuple(person["bbox"]), (record["width"], record["height"]),
                                                      0.05)))
    with SimulatedVlmServer(SimulatedVlm(site.root)) as server:
        captions, rejects = caption_crops(crops, _config(server), tmp_path / "cache")
    assert rejects == [] and len(captions) == 3


def test_hallucination_log_names_the_words_the_answers_carry(site, tmp_path):
    person_crop, person = _person_crop(site, "main", plan="single")
    log = tmp_path / "hallucinations.jsonl"
    with SimulatedVlmServer(SimulatedVlm(site.root, hallucination_rate=0.5, log_path=log)) as server:
        config = _config(server)
        captions, _ = caption_crops([person_crop], config, tmp_path / "cache")
    sent_image = jpeg_for_model(person_crop.image, config.image_max_side)  # the image the model was shown
    entries = read_hallucination_log(log)
    assert entries, "at rate 0.5 some slot of the two captions is filled wrongly"
    answered = {captions[0].caption1, captions[0].caption2}
    for entry in entries:
        assert entry["caption"] in answered
        assert entry["identity"] == person["identity"]
        assert entry["image_sha256"] == hashlib.sha256(sent_image).hexdigest()
        assert entry["caption"].split()[entry["word_index"]].strip(".,;") == entry["word"]


def test_serve_vlm_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["synthweb", "serve-vlm", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"gadms synthweb: error: {tmp_path}: no ground_truth.jsonl here; render a site with " \
                  "`gadms synthweb render`"
    assert main(["synthweb", "serve-vlm", str(tmp_path), "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "gadms synthweb: error: --port must lie in 0..65535, got 70000"
