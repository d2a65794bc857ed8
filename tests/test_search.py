"""`gadms search` on a tiny model trained on the synthetic web finds the queried identity."""
from pathlib import Path

import pytest
from PIL import Image

from curation.synthweb.identities import clean_caption, identity_attributes
from flows.cli import main
from gadms_model.retrieval import search
from storage.layout import OutputLayout
from storage.shards import commit_shard
from tests.storage_fixtures import captions_for, crop


@pytest.fixture
def trained(tiny_search_model, search_benchmark):
    return tiny_search_model, search_benchmark / "imgs"


@pytest.mark.slow
def test_search_returns_the_queried_identity(trained, tmp_path, capsys):
    checkpoint, gallery = trained
    sheet, index = tmp_path / "sheet.png", tmp_path / "index.pt"
    query = clean_caption(identity_attributes(2))
    argv = ["search", query, "--checkpoint", checkpoint, "--gallery", str(gallery), "-k", "4", "--index", str(index),
            "--sheet", str(sheet), "--device", "cpu"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    ranks = [line.split() for line in lines[:4]]
    assert [r[0] for r in ranks] == ["1", "2", "3", "4"]
    assert ranks[0][2].startswith("train/00002_")
    assert lines[4] == f"index: {index} (built); contact sheet: {sheet}"
    with Image.open(sheet) as image:
        # 4 results in one row of 138 × 290 cells (a 128 × 256 thumbnail, title and id lines) under the query
        assert image.size == (4 * 138, 24 + 290)
    # The second query reuses the cached index.
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[4].endswith("(cached); contact sheet: " + str(sheet))
    # Most identities' clean captions find one of their own images first (chance: 1 in 4).
    found = 0
    for identity in range(4):
        hits = search(checkpoint, str(gallery), clean_caption(identity_attributes(identity)), k=1,
                      index_path=str(index), progress=False).hits
        found += hits[0]["id"].startswith(f"train/{identity:05d}_")
    assert found >= 3


@pytest.mark.slow
def test_search_a_webperson_output_root(trained, tmp_path):
    checkpoint, _ = trained
    layout = OutputLayout(str(tmp_path / "out"))
    crops = [crop(n) for n in (1, 2, 3)]
    commit_shard(layout, "s0001", "run-1", crops, [captions_for(c, f"caption one {i}", f"caption two {i}") for i, c in enumerate(crops)], [])
    results = search(checkpoint, str(tmp_path / "out" / "catalog.duckdb"), "a person", k=3,
                     index_path=str(tmp_path / "index.pt"), sheet_path=tmp_path / "s.png", progress=False)
    assert sorted(h["id"] for h in results.hits) == sorted(c.sample_id for c in crops)
    assert {h["caption"] for h in results.hits} == {"caption one 0", "caption one 1", "caption one 2"}
    assert results.index_built and Path(results.sheet_path).exists()


def test_search_rejects_an_unknown_gallery(tmp_path, capsys):
    assert main(["search", "x", "--checkpoint", str(tmp_path / "none.pt"), "--gallery", str(tmp_path / "missing")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
