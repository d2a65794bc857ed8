"""`gadms browse` in a real browser (headless Chromium via Selenium) on a small built root."""
from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from curation.synthweb.identities import clean_caption, identity_attributes
from flows.browse.app import create_app
from flows.cli import main
from gadms_model.retrieval import TextSearch
from storage.catalog import connect
from tests.browse_fixtures import MARKUP, TOO_SMALL, build_browse_root
from tests.browser import chromium, click_and_wait, serving
from tests.flow_helpers import REPO


@pytest.fixture(scope="module")
def built(tmp_path_factory, search_benchmark):
    return build_browse_root(tmp_path_factory.mktemp("browse") / "root", search_benchmark)


@pytest.fixture(scope="module")
def catalog(built):
    con = connect(str(built.root / "catalog.duckdb"))
    yield con
    con.close()


@pytest.fixture(scope="module")
def site(catalog, built):
    with serving(create_app(catalog, str(built.root))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def shoot(browser, tmp_path, name: str) -> None:
    browser.save_screenshot(str(tmp_path / f"{name}.png"))
    assert (tmp_path / f"{name}.png").stat().st_size > 0


def cards(browser) -> list[str]:
    return [c.get_attribute("data-sample-id") for c in browser.find_elements(By.CSS_SELECTOR, ".card")]


def test_overview_counts_equal_the_catalog(browser, site, catalog, tmp_path):
    browser.get(site + "/")
    shown = {name: int(browser.find_element(By.ID, f"count-{name}").text)
             for name in ("samples", "captions", "shards", "rejects", "runs")}
    counts = catalog.execute("""SELECT (SELECT count(*) FROM samples),
        (SELECT sum((caption1 <> '')::INT + (caption2 <> '')::INT) FROM samples),
        (SELECT count(*) FROM manifest WHERE status = 'complete'), (SELECT count(*) FROM rejects),
        (SELECT count(*) FROM runs)""").fetchone()
    assert shown == dict(zip(("samples", "captions", "shards", "rejects", "runs"), counts))
    reasons = {cell.get_attribute("data-reason"): int(cell.text)
               for cell in browser.find_elements(By.CSS_SELECTOR, "#reasons [data-reason]")}
    assert reasons == {f"{s}/{r}": n for s, r, n in catalog.execute(
        "SELECT stage, reason, count(*) FROM rejects GROUP BY ALL").fetchall()}
    funnel = {cell.get_attribute("data-count"): int(cell.text)
              for cell in browser.find_elements(By.CSS_SELECTOR, "#funnel [data-count]")}
    assert funnel == {**dict(catalog.execute("SELECT stage, count(*) FROM rejects GROUP BY stage").fetchall()),
                      "kept": counts[0]}
    assert len(browser.find_elements(By.CSS_SELECTOR, "#runs tr")) == 1 + counts[4]
    assert browser.find_elements(By.CSS_SELECTOR, "#lengths .histogram div")
    shoot(browser, tmp_path, "overview")


def test_caption_filter_narrows_the_grid(browser, site, built, tmp_path):
    browser.get(site + "/samples")
    assert sorted(cards(browser)) == sorted(i for ids in built.by_identity.values() for i in ids)
    box = browser.find_element(By.NAME, "q")
    box.send_keys("Walker DELTA")
    box.submit()
    assert sorted(cards(browser)) == sorted(built.by_identity[3])
    shoot(browser, tmp_path, "samples")
    Select(browser.find_element(By.NAME, "model")).select_by_visible_text("model-a")
    browser.find_element(By.NAME, "q").submit()
    assert cards(browser) == [] and browser.find_element(By.ID, "no-samples").is_displayed()  # delta is model-b's
    browser.get(site + "/samples?template=t003")
    assert cards(browser) == [built.by_identity[1][0]]  # the one sample whose two captions used t001 and t003


def test_grid_pages_through_every_sample_once(browser, site, built, monkeypatch):
    monkeypatch.setattr("flows.browse.app.PAGE_SIZE", 5)
    seen, url = [], site + "/samples"
    while url:
        browser.get(url)
        seen += cards(browser)
        following = browser.find_elements(By.ID, "next")
        url = following[0].get_attribute("href") if following else None
    assert sorted(seen) == sorted(i for ids in built.by_identity.values() for i in ids)


def test_reject_reason_shows_its_thumbnails(browser, site, tmp_path):
    browser.get(site + "/rejects")
    assert "bytes of JPEG per shard" in browser.find_element(By.ID, "thumbnail-cost").text
    shoot(browser, tmp_path, "rejects")
    click_and_wait(browser, browser.find_element(By.LINK_TEXT, "too_small"))
    images = browser.find_elements(By.CSS_SELECTOR, "#thumbnails img")
    assert len(images) == 8 + TOO_SMALL["shard-00001"]  # the budget keeps 8 of shard-00000's 10
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in images)
    assert max(int(i.get_attribute("naturalWidth")) for i in images) <= 96
    assert "shorter side 12.0px <= 90.0" in browser.find_element(By.ID, "thumbnails").text
    shoot(browser, tmp_path, "reject_reason")
    Select(browser.find_element(By.NAME, "shard")).select_by_visible_text("shard-00001")
    click_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "form button"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#thumbnails img")) == TOO_SMALL["shard-00001"]
    browser.get(site + "/rejects/crawl/http_404")
    assert browser.find_elements(By.CSS_SELECTOR, "#thumbnails img") == []


def test_markup_in_alt_text_and_captions_is_inert(browser, site, built, tmp_path):
    shard_id, sample_id = built.markup_sample
    browser.get(f"{site}/samples/{shard_id}/{sample_id}")
    assert browser.title == f"Sample {sample_id} · gadms browse"
    assert browser.execute_script("return window.pwned === undefined")
    assert browser.find_element(By.ID, "alt-text").text == MARKUP
    assert browser.find_element(By.ID, "caption2").text == f"Photo 0 {MARKUP}"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#drawing circle.keypoint")) == 17
    shoot(browser, tmp_path, "sample")
    browser.get(site + "/samples?q=photo")
    assert browser.title == "Samples · gadms browse" and MARKUP in browser.find_element(By.ID, "samples").text


def test_sample_shows_its_near_duplicate(browser, site, built):
    shard_id, sample_id = built.kept_twin
    browser.get(f"{site}/samples/{shard_id}/{sample_id}")
    duplicates = browser.find_element(By.ID, "near-duplicates")
    assert "near_duplicate" in duplicates.text and len(duplicates.find_elements(By.TAG_NAME, "img")) == 1


def test_sample_shows_its_provenance_faces_and_verdict(browser, site, built):
    shard_id, sample_id = built.kept_twin
    browser.get(f"{site}/samples/{shard_id}/{sample_id}")
    shown = {key: browser.find_element(By.ID, key).text for key in ("fetched", "x-robots-tag", "filter", "faces")}
    assert shown == {"fetched": "2025-01-01 09:30:00+00:00, HTTP 200", "x-robots-tag": "noimageai",
                     "filter": "keep, synthweb-sim-vlm", "faces": "1"}
    face = browser.find_element(By.CSS_SELECTOR, "#drawing rect.face")
    assert [face.get_attribute(a) for a in ("x", "y", "width", "height")] == ["8.0", "6.0", "16.0", "16.0"]
    shard_id, sample_id = built.markup_sample  # recorded by no stage: said so, not left blank
    browser.get(f"{site}/samples/{shard_id}/{sample_id}")
    shown = {key: browser.find_element(By.ID, key).text for key in ("fetched", "x-robots-tag", "filter", "faces")}
    assert shown == {"fetched": "not recorded", "x-robots-tag": "none served", "filter": "not run",
                     "faces": "not counted"}
    assert browser.find_elements(By.CSS_SELECTOR, "#drawing rect.face") == []


@pytest.mark.parametrize("path, status", [
    # A path's %2F is a slash to the router: these match no route.
    ("/samples/shard-00000/..%2F..%2Fcatalog.duckdb", 404),
    ("/samples/..%2F..%2Fetc/0123456789abcdef0123", 404),
    ("/crops/shard-00000/../../catalog.duckdb", 404),
    ("/crops/shard-00000/ZZZ.jpg", 400),
    ("/crops/shard-00000/0123456789abcdef0123.jpg", 404),
    ("/reject-thumbnails/shard-00000/abc.jpg", 404),
    ("/reject-thumbnails/shard-00000/99999.jpg", 404),
    ("/rejects/detect/..%2F..%2Fpasswd", 404),
    ("/rejects/Detect/too_small", 400),
    ("/samples/a%20b/0123456789abcdef0123", 400),
    ("/samples/shard-00000/0123456789abcdef0123", 404),
    ("/rejects/detect/no_such_reason", 404),
    ("/samples?skip=-1", 400),
    ("/samples?shard=..%2Fshards", 400),
    ("/search?k=100000", 400),
])
def test_invalid_ids_are_refused(site, built, path, status):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(site + path)
    assert refused.value.code == status
    body = refused.value.read()
    assert b"DUCK" not in body and b"PAR1" not in body and b"root:" not in body
    assert refused.value.headers["Content-Type"].startswith("text/html")


def test_other_host_names_are_refused(site):
    request = urllib.request.Request(site + "/", headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 400


@pytest.mark.slow
def test_search_box_finds_the_identity_first(browser, built, catalog, tiny_search_model, tmp_path):
    searcher = TextSearch(tiny_search_model, str(built.root), "cpu", str(tmp_path / "index.pt"), progress=False)
    with serving(create_app(catalog, str(built.root), searcher)) as url:
        for identity in (2, 0):
            browser.get(url + "/search")
            box = browser.find_element(By.NAME, "q")
            box.send_keys(clean_caption(identity_attributes(identity)))
            box.submit()
            hits = cards(browser)
            assert len(hits) == 12 and hits[0] in built.by_identity[identity]
            assert browser.find_element(By.CSS_SELECTOR, ".card .score").text.startswith("#1 · score ")
            shoot(browser, tmp_path, f"search-{identity}")


def test_search_page_without_a_checkpoint(browser, site):
    browser.get(site + "/search?q=a+man")
    assert "--checkpoint" in browser.find_element(By.ID, "search-off").text


def test_browse_command_serves_on_loopback(built):
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "browse", "--root", str(built.root),
                                "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith(f"gadms browse: serving {built.root} on http://127.0.0.1:"), process.stderr.read()
        url = line.split(" on ")[1].split()[0]
        with urllib.request.urlopen(url) as response:
            assert response.status == 200 and b"Overview" in response.read()
    finally:
        process.terminate()
        process.wait()


@pytest.mark.parametrize("argv, message", [
    (["--root", "{tmp}/missing"], "gadms browse: error: {tmp}/missing: no such output root"),
    (["--root", "{tmp}"], "gadms browse: error: {tmp}/catalog.duckdb: catalog not found"),
    (["--root", "{tmp}", "--port", "70000"], "gadms browse: error: --port must lie in 0..65535, got 70000"),
])
def test_browse_command_errors_in_one_line(tmp_path, capsys, argv, message):
    assert main(["browse", *[a.format(tmp=tmp_path) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(tmp=tmp_path)) and err.count("\n") == 1
