"""Caption quality checks, alt-text cleaning, prompt files, the template bank and `gadms templates`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from curation.caption import CaptionConfig, QualityConfig
from curation.caption.alttext import clean_alt_text
from curation.caption.pipeline import parse_verdict, tidy_caption
from curation.caption.prompts import (
    Template, assign_templates, check_templates, load_prompts, load_templates, read_templates,
)
from curation.caption.quality import check_alt_caption, check_caption
from curation.caption.template_bank import kmeans, local_embeddings, read_human_captions, select_per_cluster
from flows.cli import main as gadms
from openai_server import VllmStandIn
from storage.errors import GadmsError

QUALITY = QualityConfig()
TEMPLATE = Template("t9", "A [man/woman] wearing a [colored top] and [colored bottom] is [action].")
GOOD = "A woman wearing a red T-shirt and blue jeans is walking forward with a black bag."


@pytest.mark.parametrize(
    "caption, reason",
    [
        ("", "empty"),
        ("  \n ", "empty"),
        ("A woman in red.", "too_short"),
        ("A woman wearing " + "a red T-shirt and " * 20 + "blue jeans.", "too_long"),
        ("Una mujer con una camiseta roja y unos pantalones vaqueros azules camina por la calle.", "not_english"),
        ("一个穿着红色T恤和蓝色牛仔裤的女人正在向前走，背着一个黑色的包。", "not_english"),
        ("Woman red shirt blue jeans black bag white sneakers walking forward quickly.", "not_english"),
        ("I'm sorry, but I can't identify people in this image.", "refusal"),
        ("As an AI, I describe: a woman wearing a red T-shirt and blue jeans.", "refusal"),
        ("A woman possibly wearing a red T-shirt and blue jeans is walking forward.", "hedging"),
        ("A woman who appears to be young wears a red T-shirt and blue jeans.", "hedging"),
        ("A woman in a red T-shirt and blue jeans walks along a busy street with her bag.", "background"),
        ("A woman wearing a red T-shirt and blue jeans stands with trees in the background.", "background"),
        ("A woman wearing a [colored top] and blue jeans is walking forward with a bag.", "unfilled_placeholder"),
        ("A woman wearing a red T-shirt and {colored bottom} is walking forward with a bag.", "unfilled_placeholder"),
        ("A [man/woman] wearing a [colored top] and [colored bottom] is [action].", "template_copy"),
        ("a [MAN/WOMAN] wearing a [colored top], and [colored bottom] is [action]", "template_copy"),
    ],
)
def test_each_quality_check_rejects_its_case(caption, reason):
    problem = check_caption(caption, TEMPLATE, QUALITY)
    assert problem is not None and problem[0] == reason


def test_good_captions_pass_and_limits_are_configurable():
    assert check_caption(GOOD, TEMPLATE, QUALITY) is None
    assert check_caption("A man with short black hair wears a grey coat, dark trousers and brown boots.", None,
                         QUALITY) is None
    # "seem" inside "seemly" or "street" inside "streetwear" is not the forbidden word.
    assert check_caption("A woman in seemly streetwear: a red T-shirt and blue jeans, walking forward.", TEMPLATE,
                         QUALITY) is None
    assert check_caption(GOOD, TEMPLATE, QualityConfig(max_words=10)) == ("too_long", "16 words > 10")
    assert check_caption("A woman in red.", TEMPLATE, QualityConfig(min_words=4)) is None
    with pytest.raises(ValueError, match="min_words"):
        QualityConfig(min_words=50, max_words=40)


def test_alt_text_checks():
    assert check_alt_caption("Woman in a red coat.", QUALITY) is None
    assert check_alt_caption("Sokak.", QUALITY) == ("too_short", "1 words < 3")
    assert check_alt_caption("Frau mit einer roten Jacke und der Tasche.", QUALITY)[0] == "not_english"


@pytest.mark.parametrize(
    "alt, cleaned",
    [
        ("woman in a red coat", "Woman in a red coat."),
        ("buy now stock photo | man wearing an orange coat , beige trousers - top 10 outfits shop the look",
         "Man wearing an orange coat, beige trousers."),
        ("Girl &amp; her dog <b>walking</b> https://shop.example/x?id=1 #ootd @brand", "Girl & her dog walking."),
        ("IMG_4821.JPG", ""),
        ("photo (3).png", ""),
        ("sale -50% trending now", ""),
        ("red dress, summer, fashion, women, style", ""),
        ("Straßenfotografie man in a blue jacket", "Man in a blue jacket."),
        ("man man in a grey grey suit 2024 12345", "Man in a grey suit."),
        ("", ""),
    ],
)
def test_alt_text_cleaning_removes_junk_and_adds_nothing(alt, cleaned):
    assert clean_alt_text(alt) == cleaned


def test_verdict_parsing_and_caption_tidying():
    assert parse_verdict('{"keep": true, "reason": "one_clear_person"}').keep is True
    assert parse_verdict('```json\n{"keep": false, "reason": "nsfw"}\n```').reason == "nsfw"
    for bad in ('{"keep": "yes", "reason": "one_clear_person"}', '{"keep": false, "reason": "ugly"}',
                '{"keep": true, "reason": "one_clear_person", "extra": 1}', "[]", "keep"):
        with pytest.raises(ValueError):
            parse_verdict(bad)
    assert tidy_caption('  Caption: "A woman in a red coat\n walks."  ') == "A woman in a red coat walks."


def test_shipped_prompts_and_template_bank():
    config = CaptionConfig()
    prompts = load_prompts(config.prompts_path, "v1")
    prompt = prompts.caption_prompt(TEMPLATE, 60)
    assert TEMPLATE.text in prompt and "at most 60 words" in prompt and "{{" not in prompt
    assert '"one_clear_person"' in prompts.filter
    bank = load_templates(config.templates_path)
    assert len(bank) >= 100 and check_templates(bank) == []
    assert len({t.id for t in bank}) == len(bank)
    with pytest.raises(GadmsError, match="prompt_version 'v9'"):
        load_prompts(config.prompts_path, "v9")


def test_bank_problems_are_reported_by_id(tmp_path):
    rows = [
        {"id": "a", "text": "A [man/woman] in a [colored top]."},
        {"id": "a", "text": "[He/She] wears [colored shoes]."},
        {"id": "c", "text": "a [MAN/woman] in a [colored top]"},
        {"id": "d", "text": "A [man/woman] in a [shiny hat]."},
        {"id": "e", "text": "A person in a red coat."},
        {"id": "f", "text": "A [man/woman in a [colored top]."},
    ]
    bank = tmp_path / "bank.jsonl"
    bank.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert check_templates(read_templates(bank)) == [
        "a: duplicate id",
        "c: unknown placeholder(s) [MAN/woman]",
        "c: same text as a",
        "d: unknown placeholder(s) [shiny hat]",
        "e: no placeholder",
        "f: unbalanced brackets",
    ]
    with pytest.raises(GadmsError, match=r"bank.jsonl: template a: duplicate id \(and 5 more\)"):
        load_templates(bank)
    assert gadms(["templates", "validate", "--file", str(bank)]) == 1
    assert gadms(["templates", "validate"]) == 0
    (tmp_path / "broken.jsonl").write_text('{"id": "x", "text": "A [man/woman]."}\n{"id": 3}\n')
    with pytest.raises(GadmsError, match=r"broken.jsonl:2: expected an object"):
        read_templates(tmp_path / "broken.jsonl")


def test_assign_templates_needs_enough_templates():
    with pytest.raises(GadmsError, match="need 2 distinct templates, the bank has 1"):
        assign_templates("s", [TEMPLATE], 2)


def test_kmeans_separates_blobs_and_selection_keeps_centroid_plus_random():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + rng.normal(0, 0.3, (20, 2)) for c in centres])
    labels, found = kmeans(points, 3, seed=1)
    assert all(len(set(labels[i * 20:(i + 1) * 20])) == 1 for i in range(3))
    assert len(set(labels)) == 3
    chosen = select_per_cluster(points, labels, found, extra=5, seed=0)
    assert len(chosen) == 18 and [role for _, _, role in chosen].count("centroid") == 3
    for index, cluster, role in chosen:
        assert labels[index] == cluster
        if role == "centroid":
            members = np.flatnonzero(labels == cluster)
            assert index == members[np.argmin(((points[members] - found[cluster]) ** 2).sum(1))]
    with pytest.raises(GadmsError, match="--clusters 61"):
        kmeans(points, 61)


def test_local_embeddings_are_normalised_and_similar_for_similar_templates():
    texts = ["A [man/woman] in a [colored top].", "A [man/woman] in a [colored top] and [colored bottom].",
             "[He/She] carries a [bag] while [action]."]
    vectors = local_embeddings(texts)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2]


def test_read_human_captions_formats(tmp_path):
    (tmp_path / "c.txt").write_text("A man in a red shirt.\n\nA woman in a blue coat.\n")
    (tmp_path / "c.jsonl").write_text('{"caption": "one"}\n{"text": "two"}\n{"captions": ["three", "four"]}\n')
    (tmp_path / "c.json").write_text(json.dumps([{"id": 1, "captions": ["a b", "c d"]}, "e f"]))
    assert read_human_captions(tmp_path / "c.txt") == ["A man in a red shirt.", "A woman in a blue coat."]
    assert read_human_captions(tmp_path / "c.jsonl") == ["one", "two", "three", "four"]
    assert read_human_captions(tmp_path / "c.json") == ["a b", "c d", "e f"]
    (tmp_path / "bad.json").write_text(json.dumps([{"id": 1}]))
    with pytest.raises(GadmsError, match="record 1 has no caption"):
        read_human_captions(tmp_path / "bad.json")


HUMAN_CAPTIONS = [
    f"{who} wears a {top} shirt and {bottom} jeans with {shoes} shoes."
    for who in ("The man", "The woman", "She", "He")
    for top, bottom, shoes in (("red", "blue", "white"), ("black", "grey", "brown"), ("green", "black", "red"))
] + [
    f"A {who} with long straight hair carries a {bag} backpack."
    for who in ("woman", "man", "girl", "boy") for bag in ("black", "blue", "pink")
] + ["This caption has no attribute to replace at all."]


@pytest.mark.parametrize("embedding_model", [None, "stand-in-vlm"])
def test_templates_build_cli(tmp_path, capsys, embedding_model):
    server = VllmStandIn().start()
    try:
        (tmp_path / "human.txt").write_text("\n".join(HUMAN_CAPTIONS))
        config = {"endpoints": [server.base_url], "models": ["stand-in-vlm"], "embedding_model": embedding_model}
        (tmp_path / "caption.yaml").write_text(json.dumps(config))
        arguments = ["templates", "build", "--captions", str(tmp_path / "human.txt"), "--out",
                     str(tmp_path / "built.jsonl"), "--clusters", "2", "--per-cluster-random", "1", "--config",
                     str(tmp_path / "caption.yaml")]
        assert gadms(arguments) == 0
        out = capsys.readouterr().out
        # 12 garment captions → 2 templates ("The [man/woman] wears..." and "[He/She] wears..."), 12 bag
        # captions → 1, the last caption has nothing to turn into a slot.
        assert "25 captions → 3 distinct templates (1 invalid, 21 duplicates, 0 failed requests)" in out
        rows = [json.loads(line) for line in (tmp_path / "built.jsonl").read_text().splitlines()]
        assert sorted(r["role"] for r in rows) == ["centroid", "centroid", "random"]
        assert check_templates([Template(r["id"], r["text"]) for r in rows]) == []
        assert server.embedding_requests == (1 if embedding_model else 0)
        sent = len(server.chat_requests)
        assert gadms(arguments) == 0 and len(server.chat_requests) == sent  # rewrites come from the cache
    finally:
        server.stop()
