"""Values bounded at the edge: each bad value is a one-line error with exit status 2, before any work."""
from __future__ import annotations

import pytest

from gadms_model.cli import main

# (argv with {tmp} for a fresh folder, the whole expected error line after "gadms <command>: error: ")
CASES = [
    (["synthweb", "render", "--out", "{tmp}/site", "--images", "1000000000"],
     "--images must lie in 1..1000000, got 1000000000"),
    (["synthweb", "render", "--out", "{tmp}/site", "--images", "0"], "--images must lie in 1..1000000, got 0"),
    (["synthweb", "serve", "{tmp}", "--port", "99999"], "--port must lie in 0..65535, got 99999"),
    (["synthweb", "serve-vlm", "{tmp}", "--port", "-1"], "--port must lie in 0..65535, got -1"),
    (["eval", "--checkpoint", "{tmp}/none.pt", "--dataset", "rstpreid", "--root", "{tmp}", "--num-workers",
      "1000000000"], "--num-workers must lie in 0..256, got 1000000000"),
    (["eval", "--checkpoint", "{tmp}/none.pt", "--dataset", "rstpreid", "--root", "{tmp}", "--batch-size", "0"],
     "--batch-size must lie in 1..65536, got 0"),
    (["search", "--checkpoint", "{tmp}/none.pt", "--gallery", "{tmp}", "a man", "-k", "-3"],
     "-k must lie in 1..100000, got -3"),
    (["search", "--checkpoint", "{tmp}/none.pt", "--gallery", "{tmp}", "a man", "--batch-size", "-1"],
     "--batch-size must lie in 1..65536, got -1"),
    (["demo", "--out", "{tmp}/demo", "--train-steps", "0"], "--train-steps must lie in 1..1000000, got 0"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in enumerate(CASES)])
def test_bad_values_are_one_line_errors_before_any_work(argv, message, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("finished work")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"gadms {argv[0]}: error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # nothing written
    assert (tmp_path / "keep.txt").read_text() == "finished work"


def test_a_site_larger_than_the_free_disk_is_refused(tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5 * 10**6, 5 * 10**6))
    assert main(["synthweb", "render", "--out", str(tmp_path / "site"), "--images", "100"]) == 2
    assert capsys.readouterr().err.strip() == (f"gadms synthweb: error: {tmp_path / 'site'}: 100 scenes need about "
                                               "6 MB, 5 MB are free there")
    assert not (tmp_path / "site").exists()


def test_crawl_retries_are_bounded(tmp_path, capsys):
    config = tmp_path / "crawl.yaml"
    config.write_text("retries: 1000000000\n")
    urls = tmp_path / "urls.txt"
    assert main(["crawl", "--urls", str(tmp_path / "urls.jsonl"), "--out", str(tmp_path / "out"),
                 "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "retries" in err and "less than or equal to 20" in err and "\n" not in err
    assert not (tmp_path / "out").exists() and not urls.exists()
