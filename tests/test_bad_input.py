"""Bad input, as a careless or hostile user gives it (issue 21): each probe is a one-line error with exit status 2,
and whatever was already written stays as it was.

Where each probe of issue 21's table is tested (this file unless a file is named; ROOT, CRAWL, RERUN, DETECT,
INPUT, CAPTIONER and UNWRITABLE are the *_CASES tables below, CASES the first one):

runs code    detect --weights evil.pt: test_detect_weights::test_detect_refuses_a_crafted_checkpoint_without_running_it;
             synthweb train-detector --model evil.pt: test_detect_weights::test_train_detector_refuses_a_crafted_model_
             before_rendering; code-carrying transformers weights: CAPTIONER
loses work   export --out R/shards: ROOT, test_export_hf::test_export_replaces_an_earlier_export_and_refuses_the_root;
             demo after a bad --train-steps: CASES (checked before anything is written); demo after Ctrl-C:
             test_demo::test_short_demo_interrupted_while_training_resumes_and_retrieves_the_identity_a_caption_
             describes (finished stages skipped, training resumed; other arguments refused)
hangs        Ctrl-C in build: test_flows::test_ctrl_c_ends_a_build_within_seconds_and_the_rerun_resumes;
             eval --num-workers 10^9, render --images 10^9: CASES; model.image_size: INPUT; crawl retries 10^9:
             test_crawl_retries_are_bounded; crawl/train-detector workers 10^9: CRAWL, INPUT
silent       crawl rerun with another list: RERUN; --seed notaurl, synthweb urls --base-url notaurl: CRAWL; wrong
             size or rows, missing caption1, missing root: ROOT (refresh, export, train; stats reads what refresh
             verified, a shard damaged since: ROOT); wrong sha256: ROOT (refresh, the one reader that hashes, as the
             README says: export and train check size, rows and columns); NULL/duplicate sample_id,
             negative --limit, search "", empty template bank: INPUT; truncated crops file:
             test_detect_rerun_after_a_truncated_crops_file_redoes_that_shard
traceback    crawl (empty/truncated Parquet, int/list URLs, 128 KiB CSV field, --out a file, foo://): CRAWL; damaged
             state: RERUN; unwritable --out: UNWRITABLE; 300-character host, foo:// rows:
             test_a_host_name_longer_than_dns_allows_or_a_foreign_scheme_is_an_invalid_url_reject.
             detect int alt_text: DETECT; imgsz: test_detect_imgsz_is_bounded; --device cuda: INPUT (caption.device:
             CAPTIONER; a local build's devices, train-detector's --device: INPUT).
             caption int/NULL sample_id, NULL image: INPUT; cache not SQLite, not a model, damaged weights: CAPTIONER.
             templates non-UTF-8, negative count, --out a folder: INPUT.
             build failure inside the flow: test_a_failure_inside_a_build_task_is_one_line,
             test_a_failed_build_run_has_the_error_line_as_its_state_message.
             catalog/stats/export --root a file, run record a list, --top -1, missing column: ROOT.
             train/eval/search batch <= 0, workers, cuda/tpu: CASES, INPUT; corrupt image in a worker:
             test_a_corrupt_image_read_in_a_dataloader_worker_is_one_line, test_a_corrupt_benchmark_image_read_by_cli_
             workers_is_one_line; --sheet a folder: INPUT, not writable: UNWRITABLE.
             synthweb/demo --out a file, corrupt ground_truth.jsonl: CRAWL, INPUT; --port 99999: CASES
misleading   YAML/JPEG as a GA-DMS checkpoint, JPEG as detector weights: INPUT (never torch's weights_only=False
             advice), test_model_loading::test_unreadable_or_unsafe_files_are_refused; pickle as detector weights:
             test_detect_weights::test_files_that_are_no_checkpoint_are_named; a *.duckdb that is not DuckDB: ROOT
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.synthweb.detector import DEMO_WEIGHTS
from flows.cli import main
from storage.layout import OutputLayout
from tests.storage_fixtures import build_root

# Values bounded at the edge: (argv with {tmp} for a fresh folder, the whole expected error line after
# "gadms <command>: error: ").
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




def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and a hash of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _probe(tmp_path: Path, argv: list[str], capsys) -> tuple[int, str]:
    """Run `gadms argv` in-process; its exit status and stderr. Asserts nothing under tmp_path changed."""
    before = _snapshot(tmp_path)
    status = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().replace(str(tmp_path), "{tmp}")
    assert _snapshot(tmp_path) == before
    return status, err


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in enumerate(CASES)])
def test_bad_values_are_one_line_errors_before_any_work(argv, message, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("finished work")
    assert _probe(tmp_path, argv, capsys) == (2, f"gadms {argv[0]}: error: {message}")


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


# Damaged output roots. Each setup turns a fresh two-shard root at {tmp}/root into the probe's input.
SHARD0 = "{tmp}/root/shards/shard-00000.parquet"
FIX0 = "delete {tmp}/root/manifest/shard-00000.json and rerun gadms build to rewrite it"


def _edit_manifest(tmp: Path, **changes) -> None:
    path = Path(OutputLayout(str(tmp / "root")).manifest_path("shard-00000"))
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _truncate_shard(tmp: Path) -> None:
    path = Path(OutputLayout(str(tmp / "root")).shard_path("shard-00000"))
    path.write_bytes(path.read_bytes()[:100])


def _drop_caption1(tmp: Path) -> None:
    """The shard without caption1, and a manifest entry that matches the damaged file (as a careless rewrite leaves)."""
    path = Path(OutputLayout(str(tmp / "root")).shard_path("shard-00000"))
    pq.write_table(pq.read_table(path).drop_columns(["caption1"]), path)
    data = path.read_bytes()
    _edit_manifest(tmp, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def _run_record_list(tmp: Path) -> None:
    (tmp / "root" / "runs").mkdir()
    (tmp / "root" / "runs" / "run-1.json").write_text("[1, 2]")


def _refreshed_then_truncated(tmp: Path) -> None:
    assert main(["catalog", "refresh", "--root", str(tmp / "root")]) == 0
    _truncate_shard(tmp)


def _train_on_root(tmp: Path, damage) -> None:
    damage(tmp)
    (tmp / "train.yaml").write_text(f"output_dir: {tmp / 'model'}\ndata: {{kind: webperson, path: {tmp / 'root'}}}\n"
                                    "device: cpu\n")


def _not_duckdb(tmp: Path) -> None:
    (tmp / "root" / "catalog.duckdb").write_bytes(b"not a database" * 100)
    (tmp / "root" / "train.yaml").write_text(f"output_dir: {tmp / 'model'}\ndata: {{kind: webperson, path: "
                                             f"{tmp / 'root' / 'catalog.duckdb'}}}\ndevice: cpu\n")


ROOT_CASES = [
    (_truncate_shard, ["catalog", "refresh", "--root", "{tmp}/root"], f"{SHARD0}: 100 bytes, its manifest entry says "),
    (_truncate_shard, ["export", "--root", "{tmp}/root", "--out", "{tmp}/public"],
     f"{SHARD0}: 100 bytes, its manifest entry says "),
    (lambda tmp: _edit_manifest(tmp, rows=7), ["catalog", "refresh", "--root", "{tmp}/root"],
     f"{SHARD0}: 2 rows, its manifest entry says 7: {FIX0}"),
    (lambda tmp: _edit_manifest(tmp, rows=7), ["export", "--root", "{tmp}/root", "--out", "{tmp}/public"],
     f"{SHARD0}: 2 rows, its manifest entry says 7: {FIX0}"),
    (lambda tmp: _edit_manifest(tmp, sha256="0" * 64), ["catalog", "refresh", "--root", "{tmp}/root"],
     f"{SHARD0}: sha256 differs from its manifest entry: {FIX0}"),
    (_drop_caption1, ["catalog", "refresh", "--root", "{tmp}/root"], f"{SHARD0}: missing column(s) caption1: {FIX0}"),
    (lambda tmp: (tmp / "root" / "shards" / "shard-00000.parquet").unlink(), ["catalog", "refresh", "--root", "{tmp}/root"],
     f"{SHARD0}: shard missing, its manifest entry says complete: {FIX0}"),
    (None, ["catalog", "refresh", "--root", "{tmp}/nowhere"], "{tmp}/nowhere: output root not found"),
    (None, ["catalog", "refresh", "--root", "{tmp}/root/shards/shard-00000.parquet"],
     f"{SHARD0}: output root is a file, not a folder"),
    (None, ["export", "--root", "{tmp}/nowhere", "--out", "{tmp}/public"], "{tmp}/nowhere: output root not found"),
    (None, ["export", "--root", "{tmp}/root/manifest/shard-00000.json", "--out", "{tmp}/public"],
     "{tmp}/root/manifest/shard-00000.json: output root is a file, not a folder"),
    (_run_record_list, ["catalog", "refresh", "--root", "{tmp}/root"],
     "{tmp}/root/runs/run-1.json: corrupt run record: expected an object with a run_id string"),
    (None, ["stats", "--catalog", "{tmp}/root/catalog.duckdb", "--top", "-1"], "--top must lie in 1..100000, got -1"),
    (_refreshed_then_truncated, ["stats", "--catalog", "{tmp}/root/catalog.duckdb"],
     "{tmp}/root/catalog.duckdb: not a readable gadms catalog: Invalid Input Error: No magic bytes found at end of "
     f"file '{SHARD0}'"),
    (_drop_caption1, ["export", "--root", "{tmp}/root", "--out", "{tmp}/public"],
     f"{SHARD0}: missing column(s) caption1: {FIX0}"),
    (None, ["export", "--root", "{tmp}/root", "--out", "{tmp}/root/shards"],
     "{tmp}/root/shards: inside the output root {tmp}/root; export to a folder outside it"),
    (lambda tmp: _train_on_root(tmp, _truncate_shard), ["train", "--config", "{tmp}/train.yaml"],
     f"{SHARD0}: 100 bytes, its manifest entry says "),
    (_not_duckdb, ["train", "--config", "{tmp}/root/train.yaml"], "{tmp}/root/catalog.duckdb: not a readable gadms catalog: "),
    (_not_duckdb, ["stats", "--catalog", "{tmp}/root/catalog.duckdb"],
     "{tmp}/root/catalog.duckdb: not a readable gadms catalog: IO Error: The file "),
]


@pytest.mark.parametrize("setup, argv, message", ROOT_CASES,
                         ids=[" ".join(c[1][:2]) + f" #{i}" for i, c in enumerate(ROOT_CASES)])
def test_damaged_or_missing_roots_are_one_line_errors_naming_the_file(setup, argv, message, tmp_path, capsys):
    build_root(tmp_path / "root")
    if setup:
        setup(tmp_path)
    status, err = _probe(tmp_path, argv, capsys)
    assert status == 2 and "\n" not in err
    assert err.startswith(f"gadms {argv[0]}: error: {message}")


def test_a_verified_refresh_serves_the_whole_root(tmp_path, capsys):
    build_root(tmp_path / "root")
    assert main(["catalog", "refresh", "--root", str(tmp_path / "root")]) == 0
    assert main(["stats", "--catalog", str(tmp_path / "root" / "catalog.duckdb"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["samples"] == 3


# Crawl, synthweb and demo inputs. Each setup writes the probe's input under {tmp}/in (and, for reruns, an
# earlier run's output under {tmp}/out); an ok crawl of unreachable rows needs no network.
def _url_lists(tmp: Path) -> None:
    import pandas as pd

    folder = tmp / "in"
    folder.mkdir()
    (folder / "empty.parquet").write_bytes(b"")
    pd.DataFrame({"url": [1, 2]}).to_parquet(folder / "int.parquet")
    pd.DataFrame({"url": [["http://a.example/1.jpg"]]}).to_parquet(folder / "list.parquet")
    (folder / "trunc.parquet").write_bytes((folder / "int.parquet").read_bytes()[:300])
    (folder / "big.csv").write_text("url,caption\nhttp://a.example/1.jpg," + "a" * 140_000 + "\n")
    (folder / "a.txt").write_text("notaurl-a\n")
    (folder / "b.txt").write_text("notaurl-b\n")
    # A contact_url, so the crawl logs no warning: Prefect, once imported, logs to the stream of an earlier test.
    (folder / "crawl.yaml").write_text("contact_url: https://example.org/contact\n")
    (folder / "ground_truth.jsonl").write_text('{"path": "/img/1.jpg", "pages": []}\n')
    (folder / "cut_site").mkdir()
    (folder / "cut_site" / "ground_truth.jsonl").write_text('{"path": "/img/1.jpg", "pa\n')
    (folder / "cut_demo").mkdir()
    (folder / "cut_demo" / "demo_run.json").write_text('{"arguments": ')


def _crawled_a(tmp: Path) -> None:
    _url_lists(tmp)
    assert main(["crawl", "--urls", str(tmp / "in" / "a.txt"), "--out", str(tmp / "out"),
                 "--config", str(tmp / "in" / "crawl.yaml")]) == 0


def _damaged_state(tmp: Path, segment: bool) -> None:
    from curation.crawl import CrawlConfig
    from curation.crawl.urllist import read_url_list
    from storage.configfile import dump_config, load_config

    _url_lists(tmp)
    state = tmp / "out" / "work" / "crawl" / "part-00000"
    state.mkdir(parents=True)
    dump_config(load_config(str(tmp / "in" / "crawl.yaml"), CrawlConfig), str(tmp / "out" / "crawl_config.yaml"))  # as the interrupted run left it
    if segment:
        from curation.crawl.state import open_chunk_state

        open_chunk_state(str(state), list(read_url_list(str(tmp / "in" / "a.txt"))))
        (state / "seg-0-00000.arrow").write_bytes(b"half a segment")
    else:
        (state / "chunk.json").write_text("{")


STATE = "{tmp}/out/work/crawl/part-00000"
CRAWL_CONFIG = ["--config", "{tmp}/in/crawl.yaml"]
CRAWL_CASES = [
    (["crawl", "--urls", "{tmp}/in/empty.parquet", "--out", "{tmp}/out", *CRAWL_CONFIG],
     "{tmp}/in/empty.parquet: not a readable Parquet file: Parquet file size is 0 bytes"),
    (["crawl", "--urls", "{tmp}/in/trunc.parquet", "--out", "{tmp}/out", *CRAWL_CONFIG],
     "{tmp}/in/trunc.parquet: not a readable Parquet file: "),
    (["crawl", "--urls", "{tmp}/in/int.parquet", "--out", "{tmp}/out", *CRAWL_CONFIG],
     "{tmp}/in/int.parquet: row 0: url is int 1, expected a URL string"),
    (["crawl", "--urls", "{tmp}/in/list.parquet", "--out", "{tmp}/out", *CRAWL_CONFIG],
     "{tmp}/in/list.parquet: row 0: url is list ['http://a.example/1.jpg'], expected a URL string"),
    (["crawl", "--urls", "{tmp}/in/big.csv", "--out", "{tmp}/out", *CRAWL_CONFIG],
     "{tmp}/in/big.csv:2: field larger than field limit (131072)"),
    (["crawl", "--urls", "{tmp}/in/a.txt", "--out", "{tmp}/in/a.txt", *CRAWL_CONFIG],
     "{tmp}/in/a.txt: crawl output folder is a file, not a folder"),
    (["crawl", "--seed", "notaurl", "--out", "{tmp}/out", *CRAWL_CONFIG], "--seed 'notaurl': not an absolute http(s) URL: 'notaurl'"),
    (["crawl", "--seed", "foo://x.example/", "--out", "{tmp}/out", *CRAWL_CONFIG],
     "--seed 'foo://x.example/': not an absolute http(s) URL: 'foo://x.example/'"),
    (["synthweb", "urls", "{tmp}/in", "--base-url", "notaurl", "--out", "{tmp}/urls.jsonl"],
     "--base-url 'notaurl': not an absolute http(s) URL: 'notaurl'"),
    (["synthweb", "urls", "{tmp}/in", "--base-url", "http://127.0.0.1:8000", "--out", "{tmp}/urls.jsonl"],
     "{tmp}/in/ground_truth.jsonl:1: field 'alt_text' must be a str"),
    (["synthweb", "urls", "{tmp}/in/cut_site", "--base-url", "http://127.0.0.1:8000", "--out", "{tmp}/urls.jsonl"],
     "{tmp}/in/cut_site/ground_truth.jsonl:1: not valid JSON: Unterminated string starting at"),
    (["synthweb", "render", "--out", "{tmp}/in/a.txt", "--images", "2"], "{tmp}/in/a.txt: site folder is a file, not a folder"),
    (["crawl", "--urls", "{tmp}/in/a.txt", "--out", "{tmp}/out", *CRAWL_CONFIG, "--workers", "1000000000"],
     "command line: field 'workers': Input should be less than or equal to 256"),
    (["demo", "--out", "{tmp}/in/a.txt"], "{tmp}/in/a.txt: demo output folder is a file, not a folder"),
    (["demo", "--out", "{tmp}/in"], "{tmp}/in: output folder is not empty and holds no demo_run.json of an earlier "
     "demo; remove it or pass another --out"),
    (["demo", "--out", "{tmp}/in/cut_demo"], "{tmp}/in/cut_demo/demo_run.json: not a demo progress record "
     "(Expecting value: line 1 column 15 (char 14)); remove {tmp}/in/cut_demo or pass another --out"),
]
RERUN_CASES = [
    (_crawled_a, ["crawl", "--urls", "{tmp}/in/b.txt", "--out", "{tmp}/out", *CRAWL_CONFIG],
     "{tmp}/out/downloads/part-00000.parquet: crawled from another URL list (its chunk of 1 URLs differs); "
     "use another --out for this list"),
    (lambda tmp: _damaged_state(tmp, segment=False), ["crawl", "--urls", "{tmp}/in/a.txt", "--out", "{tmp}/out", *CRAWL_CONFIG],
     f"{STATE}/chunk.json: damaged crawl state (Expecting property name enclosed in double quotes: line 1 column 2 "
     f"(char 1)); delete {STATE} to restart this chunk"),
    (lambda tmp: _damaged_state(tmp, segment=True), ["crawl", "--urls", "{tmp}/in/a.txt", "--out", "{tmp}/out", *CRAWL_CONFIG],
     f"{STATE}/seg-0-00000.arrow: damaged crawl state ("),
]


@pytest.mark.parametrize("setup, argv, message", [(_url_lists, *c) for c in CRAWL_CASES] + RERUN_CASES,
                         ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in enumerate(CRAWL_CASES + [c[1:] for c in RERUN_CASES])])
def test_bad_crawl_and_site_inputs_are_one_line_errors(setup, argv, message, tmp_path, capsys):
    setup(tmp_path)
    capsys.readouterr()
    status, err = _probe(tmp_path, argv, capsys)
    assert status == 2 and "\n" not in err, err
    assert err.startswith(f"gadms {argv[0]}: error: {message}")


def test_a_host_name_longer_than_dns_allows_or_a_foreign_scheme_is_an_invalid_url_reject(tmp_path, capsys):
    """Rows of a URL list, unlike --seed, are rejects: one bad row does not stop the crawl of the others."""
    import pyarrow.parquet as pq

    _url_lists(tmp_path)
    (tmp_path / "urls.txt").write_text(f"http://{'a' * 300}.example/1.jpg\nfoo://x.example/2.jpg\n")
    assert main(["crawl", "--urls", str(tmp_path / "urls.txt"), "--out", str(tmp_path / "out"),
                 "--config", str(tmp_path / "in" / "crawl.yaml")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    rejects = pq.read_table(tmp_path / "out" / "rejects" / "part-00000.parquet").to_pylist()
    assert [r["reason"] for r in rejects] == ["invalid_url", "invalid_url"]
    assert rejects[0]["detail"].startswith("host name longer than DNS allows")
    assert rejects[1]["detail"] == "not an absolute http(s) URL: 'foo://x.example/2.jpg'"


def _downloads(tmp: Path, **columns) -> None:
    import pyarrow as pa

    (tmp / "in").mkdir()
    row = {"url": "https://a.example/1.jpg", "data": b"\xff\xd8 not decoded before the check", **columns}
    pq.write_table(pa.Table.from_pylist([row]), tmp / "in" / "part-0.parquet")


DETECT_CASES = [
    (lambda tmp: _downloads(tmp, alt_text=7), ["detect", "--downloads", "{tmp}/in", "--out", "{tmp}/out", "--backend", "hog"],
     "{tmp}/in/part-0.parquet: column 'alt_text' is int64, expected string"),
    (lambda tmp: _downloads(tmp, width="wide"), ["detect", "--downloads", "{tmp}/in", "--out", "{tmp}/out", "--backend", "hog"],
     "{tmp}/in/part-0.parquet: column 'width' is string, expected integer"),
]


@pytest.mark.parametrize("setup, argv, message", DETECT_CASES, ids=[f"detect #{i}" for i in range(len(DETECT_CASES))])
def test_bad_detect_inputs_are_one_line_errors_before_detection(setup, argv, message, tmp_path, capsys):
    setup(tmp_path)
    status, err = _probe(tmp_path, argv, capsys)
    assert status == 2 and "\n" not in err, err
    assert err == f"gadms detect: error: {message}"


def test_detect_imgsz_is_bounded(tmp_path, capsys):
    _downloads(tmp_path)
    (tmp_path / "detect.yaml").write_text("detect:\n  weights: x.pt\n  imgsz: 1000000000\n")
    status, err = _probe(tmp_path, ["detect", "--downloads", "{tmp}/in", "--out", "{tmp}/out", "--config",
                                    "{tmp}/detect.yaml"], capsys)
    assert status == 2 and "\n" not in err
    assert "detect.imgsz" in err and "less than or equal to 4096" in err


def test_detect_rerun_after_a_truncated_crops_file_redoes_that_shard(tmp_path, capsys):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="JPEG")
    _downloads(tmp_path, data=buffer.getvalue())
    argv = ["detect", "--downloads", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--backend", "hog"]
    assert main(argv) == 0
    crops = tmp_path / "out" / "crops" / "part-0.parquet"
    whole = crops.read_bytes()
    crops.write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()
    assert main(argv) == 0
    assert "1 shards done (0 already done)" in capsys.readouterr().out
    assert pq.read_metadata(crops).num_rows == 0


# The build flow: an expected failure inside a task is the CLI's one line, and the flow run's state message.
def _unchanged(before: dict[str, str], folder: Path) -> bool:
    """Every file in `before` (a _snapshot) is still there with the same bytes; a failed build may add state."""
    after = _snapshot(folder)
    return all(after.get(name) == digest for name, digest in before.items())


def _build_inputs(tmp: Path, url_column: str = "url", **detect) -> Path:
    """A build config over one URL the crawl rejects without the network (a loopback address is not allowed)."""
    from tests.flow_helpers import write_config

    (tmp / "urls.csv").write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a person\n")
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("finished work")
    return write_config(tmp / "build.yaml", {
        "inputs": {"url_lists": [str(tmp / "urls.csv")]}, "output_root": str(tmp / "out"),
        "crawl": {"url_column": url_column}, "detect": {"weights": str(DEMO_WEIGHTS), "device": "cpu", **detect},
        "caption": {"backend": "alt-text"}, "runner": {"kind": "local", "max_workers": 1}})


@pytest.mark.slow
def test_a_failure_inside_a_build_task_is_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from tests.flow_helpers import REPO

    (tmp_path / "garbage.pt").write_bytes(bytes(range(256)) * 10)
    config = _build_inputs(tmp_path, weights=str(tmp_path / "garbage.pt"))  # loaded by a chunk's detect task
    before = _snapshot(tmp_path)
    # PREFECT_LOGGING_LEVEL is WARNING here (conftest): Prefect's progress lines are not failures.
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "build", "--config", str(config)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"gadms build: error: weights '{tmp_path / 'garbage.pt'}': refused: "
                                        "not a weights-only PyTorch checkpoint: not a PyTorch file (unpickler: "
                                        "Unsupported operand 0)"]
    assert _unchanged(before, tmp_path)


@pytest.mark.slow
def test_a_failed_build_run_has_the_error_line_as_its_state_message(tmp_path):
    from prefect.client.orchestration import get_client

    from flows.build_webperson import build_webperson
    from storage.errors import GadmsError

    config = _build_inputs(tmp_path, url_column="link")  # found missing by the gather-inputs task
    line = f"gadms build: error: {tmp_path / 'urls.csv'}: no column 'link' (columns: url, caption)"
    before = _snapshot(tmp_path)
    state = build_webperson(str(config), return_state=True)
    assert state.is_failed() and state.message == line
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(state.state_details.flow_run_id).state.message == line
    with pytest.raises(GadmsError, match="no column 'link'"):
        build_webperson(str(config))
    assert _unchanged(before, tmp_path)


# Devices, captions, templates, train and search inputs. Each setup writes the probe's input under {tmp}/in.
def _caption_inputs(tmp: Path) -> None:
    import io

    import pyarrow as pa
    from PIL import Image

    folder = tmp / "in"
    folder.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (32, 64)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    schema = pa.schema([("sample_id", pa.string()), ("image", pa.binary())])
    pq.write_table(pa.Table.from_pylist([{"sample_id": 7, "image": jpeg}]), folder / "int_id.parquet")
    for name, rows in (("null_image", [{"sample_id": "a", "image": jpeg}, {"sample_id": "b", "image": None}]),
                       ("null_id", [{"sample_id": None, "image": jpeg}]),
                       ("duplicate_id", [{"sample_id": "a", "image": jpeg}, {"sample_id": "a", "image": jpeg}]),
                       ("ok", [{"sample_id": "a", "image": jpeg}])):
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"{name}.parquet")
    (folder / "latin1.txt").write_bytes("a man in a café\n".encode("latin-1"))
    (folder / "captions.txt").write_text("a man in a red coat\n")
    (folder / "empty.jsonl").write_text("")
    (folder / "bank").mkdir()
    (folder / "train.yaml").write_text(f"output_dir: {tmp / 'in' / 'model'}\ndata: {{kind: benchmark, path: {tmp}, "
                                       "benchmark: rstpreid}\n")


def _train_config(tmp: Path, line: str) -> None:
    _caption_inputs(tmp)
    with open(tmp / "in" / "train.yaml", "a") as handle:
        handle.write(line + "\n")


def _not_weights(tmp: Path) -> None:
    """A JPEG named as weights (photo.pt) and as a checkpoint (photo.jpg), a YAML as a checkpoint; detect's input."""
    from tests.storage_fixtures import jpeg

    _downloads(tmp)
    (tmp / "in" / "photo.pt").write_bytes(jpeg((200, 30, 30)))
    (tmp / "in" / "photo.jpg").write_bytes(jpeg((200, 30, 30)))
    (tmp / "in" / "train.yaml").write_text("output_dir: model\n")


CROPS = ["caption", "--backend", "alt-text", "--out", "{tmp}/out", "--crops"]
SEARCH = ["search", "--checkpoint", "{tmp}/none.pt", "--gallery", "{tmp}"]
EVAL = ["eval", "--checkpoint", "{tmp}/none.pt", "--dataset", "rstpreid", "--root", "{tmp}"]
TRAIN = ["train", "--config", "{tmp}/in/train.yaml"]
CUDA99 = "'cuda:99': "  # then "no GPU is available" or "this machine has N GPU(s) ...", by the machine
INPUT_CASES = [
    (_downloads, ["detect", "--downloads", "{tmp}/in", "--out", "{tmp}/out", "--weights", "x.pt", "--device", "cuda:99"],
     f"detect.device {CUDA99}"),
    (_downloads, ["detect", "--downloads", "{tmp}/in", "--out", "{tmp}/out", "--weights", "x.pt", "--device", "tpu"],
     "command line: field 'detect.device'"),
    (_caption_inputs, [*EVAL, "--device", "cuda:99"], f"--device {CUDA99}"),
    (_caption_inputs, [*EVAL, "--device", "tpu"], "--device 'tpu': not a device (expected cpu, cuda or cuda:N)"),
    (_caption_inputs, [*SEARCH, "a man", "--device", "cuda:99"], f"--device {CUDA99}"),
    (_caption_inputs, [*SEARCH, "a man", "--device", "tpu"], "--device 'tpu': not a device (expected cpu, cuda or cuda:N)"),
    (lambda tmp: _train_config(tmp, "device: tpu"), TRAIN, "{tmp}/in/train.yaml: field 'device': "),
    (lambda tmp: _train_config(tmp, "device: cuda:99"), TRAIN, "{tmp}/in/train.yaml: field 'device': "),
    (lambda tmp: _train_config(tmp, "batch_size: 0"), TRAIN, "{tmp}/in/train.yaml: field 'batch_size': "),
    (lambda tmp: _train_config(tmp, "num_workers: -1"), TRAIN, "{tmp}/in/train.yaml: field 'num_workers': "),
    (lambda tmp: _train_config(tmp, "num_workers: 1000000000"), TRAIN, "{tmp}/in/train.yaml: field 'num_workers': "),
    (lambda tmp: _train_config(tmp, "model: {image_size: [100000, 100000]}"), TRAIN,
     "{tmp}/in/train.yaml: field 'model.image_size': Value error, each side must lie in 16..4096, got [100000, 100000]"),
    (_caption_inputs, [*CROPS, "{tmp}/in/int_id.parquet"], "{tmp}/in/int_id.parquet: column 'sample_id' is int64, expected string"),
    (_caption_inputs, [*CROPS, "{tmp}/in/null_id.parquet"], "{tmp}/in/null_id.parquet: row 0: sample_id is NULL"),
    (_caption_inputs, [*CROPS, "{tmp}/in/duplicate_id.parquet"], "{tmp}/in/duplicate_id.parquet: sample_id 'a' appears 2 times"),
    (_caption_inputs, [*CROPS, "{tmp}/in/null_image.parquet"], "{tmp}/in/null_image.parquet: row 1: image is NULL"),
    (_caption_inputs, [*CROPS, "{tmp}/in/ok.parquet", "--limit", "-1"], "--limit must lie in 1..1000000000, got -1"),
    (_caption_inputs, ["templates", "build", "--captions", "{tmp}/in/latin1.txt", "--out", "{tmp}/bank.jsonl", "--clusters", "2"],
     "{tmp}/in/latin1.txt: not UTF-8 text (byte 14: invalid continuation byte)"),
    (_caption_inputs, ["templates", "build", "--captions", "{tmp}/in/captions.txt", "--out", "{tmp}/bank.jsonl", "--clusters", "-2"],
     "--clusters must lie in 1..100000, got -2"),
    (_caption_inputs, ["templates", "build", "--captions", "{tmp}/in/captions.txt", "--out", "{tmp}/bank.jsonl", "--clusters", "2",
                       "--per-cluster-random", "-1"], "--per-cluster-random must lie in 0..1000, got -1"),
    (_caption_inputs, ["templates", "build", "--captions", "{tmp}/in/captions.txt", "--out", "{tmp}/in/bank", "--clusters", "2"],
     "{tmp}/in/bank: template bank (--out) is a folder, not a file"),
    (_caption_inputs, ["templates", "validate", "--file", "{tmp}/in/empty.jsonl"], "{tmp}/in/empty.jsonl: no templates in the bank"),
    (_caption_inputs, ["templates", "show", "--limit", "-3"], "--limit must lie in 0..1000000000, got -3"),
    (_caption_inputs, [*SEARCH, ""], 'the query is empty: describe the person, e.g. "a woman in a red coat"'),
    (_caption_inputs, [*SEARCH, "a man", "--sheet", "{tmp}/in/bank"], "{tmp}/in/bank: contact sheet (--sheet) is a folder, not a file"),
    (_caption_inputs, [*SEARCH, "a man", "--sheet", "{tmp}/in/captions.txt/sheet.png"],
     "{tmp}/in/captions.txt: contact sheet's folder is a file, not a folder"),
    (_caption_inputs, ["synthweb", "train-detector", "--out", "{tmp}/in/captions.txt"],
     "{tmp}/in/captions.txt: detector work folder is a file, not a folder"),
    # A local build checks this machine's devices before it crawls anything.
    (lambda tmp: _build_inputs(tmp, device="cuda:99"), ["build", "--config", "{tmp}/build.yaml"],
     f"detect.device {CUDA99}"),
    (_caption_inputs, ["synthweb", "train-detector", "--out", "{tmp}/td", "--device", "tpu"],
     "train-detector options: field 'device': Value error, must be cpu, cuda, cuda:N or GPU indices as ultralytics "
     "takes them (0, or 0,1)"),
    (_caption_inputs, ["synthweb", "train-detector", "--out", "{tmp}/td", "--device", "cuda:99"], f"--device {CUDA99}"),
    (_caption_inputs, ["synthweb", "train-detector", "--out", "{tmp}/td", "--workers", "1000000000"],
     "train-detector options: field 'workers': Input should be less than or equal to 256"),
    (_caption_inputs, ["synthweb", "train-detector", "--out", "{tmp}/td", "--train-images", "1000000000"],
     "train-detector options: field 'train_images': Input should be less than or equal to 1000000"),
    # Files that are no checkpoint: what the unpickler found, never torch's advice to load with weights_only=False.
    (_not_weights, ["detect", "--downloads", "{tmp}/in", "--out", "{tmp}/out", "--weights", "{tmp}/in/photo.pt"],
     "weights '{tmp}/in/photo.pt': refused: not a weights-only PyTorch checkpoint: not a PyTorch file (unpickler: "
     "Unsupported operand 255)"),
    (_not_weights, ["eval", "--checkpoint", "{tmp}/in/train.yaml", "--dataset", "rstpreid", "--root", "{tmp}"],
     "{tmp}/in/train.yaml: not a loadable checkpoint: not a PyTorch file (unpickler: Unsupported operand 111)"),
    (_not_weights, ["search", "--checkpoint", "{tmp}/in/photo.jpg", "--gallery", "{tmp}", "a man"],
     "{tmp}/in/photo.jpg: not a loadable checkpoint: not a PyTorch file (unpickler: Unsupported operand 255)"),
]


@pytest.mark.parametrize("setup, argv, message", INPUT_CASES,
                         ids=[" ".join(c[1][:2]) + f" #{i}" for i, c in enumerate(INPUT_CASES)])
def test_bad_devices_captions_templates_and_queries_are_one_line_errors(setup, argv, message, tmp_path, capsys):
    setup(tmp_path)
    status, err = _probe(tmp_path, argv, capsys)
    assert status == 2 and "\n" not in err, err
    assert err.startswith(f"gadms {argv[0]}: error: {message}"), err
    assert "weights_only" not in err  # torch's advice to load a refused file unsafely is never passed on


def _not_sqlite_cache(tmp: Path) -> list[str]:
    cache = tmp / "cache" / "caption_requests.sqlite"
    cache.parent.mkdir()
    cache.write_bytes(b"not a database" * 100)
    return ["--backend", "openai", "--endpoint", "http://127.0.0.1:9/v1", "--cache-dir", str(cache.parent)]


def _not_a_model(tmp: Path) -> list[str]:
    (tmp / "model").mkdir()
    (tmp / "model" / "weights.txt").write_text("not a model")
    (tmp / "caption.yaml").write_text(f"backend: transformers\ntransformers_model_dir: {tmp / 'model'}\ndevice: cpu\n")
    return ["--config", str(tmp / "caption.yaml")]


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    from test_caption_transformers import build_tiny_qwen2_5_vl

    folder = tmp_path_factory.mktemp("tiny-qwen2.5-vl")
    build_tiny_qwen2_5_vl(folder)
    return folder


def _vlm_with_weights(tmp: Path, tiny_vlm: Path, name: str, content: bytes) -> list[str]:
    """The tiny VLM's folder with its weights replaced by `content` in file `name`."""
    import shutil

    shutil.copytree(tiny_vlm, tmp / "model")
    (tmp / "model" / "model.safetensors").unlink()
    (tmp / "model" / name).write_bytes(content)
    (tmp / "caption.yaml").write_text(f"backend: transformers\ntransformers_model_dir: {tmp / 'model'}\ndevice: cpu\n")
    return ["--config", str(tmp / "caption.yaml")]


class _CreatesAFile:
    """Unpickled, it would create `path`: the payload a crafted weights file carries."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _device_not_here(tmp: Path, device: str) -> list[str]:
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text("{}")  # the device is checked before the model loads
    (tmp / "caption.yaml").write_text(f"backend: transformers\ntransformers_model_dir: {tmp / 'model'}\n"
                                      f"device: '{device}'\n")
    return ["--config", str(tmp / "caption.yaml")]


def _garbage_weights(tmp: Path, tiny_vlm: Path) -> list[str]:
    return _vlm_with_weights(tmp, tiny_vlm, "model.safetensors", b"\x00not safetensors" * 64)


def _truncated_weights(tmp: Path, tiny_vlm: Path) -> list[str]:
    return _vlm_with_weights(tmp, tiny_vlm, "model.safetensors", (tiny_vlm / "model.safetensors").read_bytes()[:4096])


def _code_carrying_weights(tmp: Path, tiny_vlm: Path) -> list[str]:
    import pickle

    return _vlm_with_weights(tmp, tiny_vlm, "pytorch_model.bin", pickle.dumps(_CreatesAFile(tmp / "payload-ran")))


# Found when the captioner starts, before any crop is captioned; after the progress bar, so the last line counts.
CAPTIONER_CASES = [
    (_not_sqlite_cache, "{tmp}/cache/caption_requests.sqlite: not a caption request cache (file is not a database); "
                        "delete it to start a new one, or pass another --cache-dir"),
    (_not_a_model, "transformers_model_dir {tmp}/model: no config.json there"),
    (lambda tmp: _device_not_here(tmp, "tpu"), "caption.device 'tpu': not a device (expected cpu, cuda or cuda:N)"),
    (lambda tmp: _device_not_here(tmp, "cuda:99"), f"caption.device {CUDA99}"),
    (_garbage_weights, "transformers_model_dir {tmp}/model: cannot load it: Error while deserializing header: "),
    (_truncated_weights, "transformers_model_dir {tmp}/model: cannot load it: Error while deserializing header: "),
    (_code_carrying_weights, "transformers_model_dir {tmp}/model: refused its weights: a pickle holding more than "
                             "tensors (loading it could run code)"),
]


@pytest.mark.parametrize("setup, message", CAPTIONER_CASES,
                         ids=["cache", "model", "device-tpu", "device-cuda99", "garbage-weights", "truncated-weights",
                              "code-carrying-weights"])
def test_a_captioner_that_cannot_start_is_one_line(setup, message, tmp_path, capsys, request):
    _caption_inputs(tmp_path)
    needs_vlm = "tiny_vlm" in setup.__code__.co_varnames[:setup.__code__.co_argcount]
    options = setup(tmp_path, request.getfixturevalue("tiny_vlm")) if needs_vlm else setup(tmp_path)
    before = _snapshot(tmp_path)
    assert main(["caption", "--crops", str(tmp_path / "in" / "ok.parquet"), "--out", str(tmp_path / "out"), *options]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1].replace(str(tmp_path), "{tmp}")
    assert last_line.startswith(f"gadms caption: error: {message}"), last_line
    assert "weights_only" not in last_line
    assert _unchanged(before, tmp_path)
    assert not (tmp_path / "payload-ran").exists()


def test_a_corrupt_image_read_in_a_dataloader_worker_is_one_line(tmp_path):
    """Decoded in a worker process, the error comes back as the one line it was raised with, not its traceback.
    With ultralytics imported, as in the demo's process: its Image.open patch raises ModuleNotFoundError."""
    import torch

    from storage.compat import ensure_torchvision_ops
    from gadms_model.data.sources import DataSourceError, decode_image

    ensure_torchvision_ops()
    import ultralytics  # noqa: F401  (patches PIL.Image.open for the rest of the process)

    class CorruptImages(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return decode_image(b"not a jpeg", f"{tmp_path}/shard.parquet row {index}")

    with pytest.raises(DataSourceError) as raised:
        next(iter(torch.utils.data.DataLoader(CorruptImages(), num_workers=1)))
    assert "\n" not in str(raised.value) and str(raised.value).startswith(f"{tmp_path}/shard.parquet row 0")


@pytest.fixture(scope="module")
def benchmark_and_checkpoint(tmp_path_factory) -> tuple[Path, str]:
    from curation.synthweb.benchmark import write_synthetic_benchmark
    from gadms_model.model import ModelConfig
    from gadms_model.training import TrainConfig, train

    root = tmp_path_factory.mktemp("benchmark")
    write_synthetic_benchmark(root, 4, 3, 4, 2, seed=2, train_captions="clean")
    config = TrainConfig.model_validate({
        "output_dir": str(tmp_path_factory.mktemp("run")), "progress": False,
        "data": {"kind": "benchmark", "path": str(root), "benchmark": "rstpreid"},
        "model": ModelConfig.tiny(mode="irra").model_dump(mode="json"), "epochs": 1, "batch_size": 4, "num_workers": 0,
    })
    return root, train(config).checkpoint_path


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_corrupt_benchmark_image_read_by_cli_workers_is_one_line(split, benchmark_and_checkpoint, tmp_path, capsys):
    """`gadms train` / `gadms eval` with two data-loader workers: the worker's error reaches the user as one line
    naming the image file, with exit status 2."""
    import shutil

    from gadms_model.model import ModelConfig

    root = tmp_path / "benchmark"
    shutil.copytree(benchmark_and_checkpoint[0], root)
    records = json.loads((root / "RSTPReid" / "data_captions.json").read_text())
    image = root / "RSTPReid" / "imgs" / next(r["img_path"] for r in records if r["split"] == split)
    image.write_bytes(b"\x89PNG but no image")
    if split == "train":
        config = {"output_dir": str(tmp_path / "run"), "data": {"kind": "benchmark", "path": str(root),
                  "benchmark": "rstpreid"}, "model": ModelConfig.tiny(mode="irra").model_dump(mode="json"),
                  "epochs": 1, "batch_size": 4, "num_workers": 2, "progress": False}
        (tmp_path / "train.yaml").write_text(json.dumps(config))
        argv = ["train", "--config", str(tmp_path / "train.yaml")]
    else:
        argv = ["eval", "--checkpoint", benchmark_and_checkpoint[1], "--dataset", "rstpreid", "--root", str(root),
                "--num-workers", "2"]
    before = _snapshot(root)
    assert main(argv) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1].split("\r")[-1]
    assert last_line.startswith(f"gadms {argv[0]}: error: {image}: image cannot be decoded: "), last_line
    assert _snapshot(root) == before


def test_an_image_folder_gallery_with_a_file_that_is_no_image_is_one_line(benchmark_and_checkpoint, tmp_path, capsys):
    """The line names the file and says the same on every run (Pillow's own message names an object address)."""
    from tests.storage_fixtures import jpeg

    (tmp_path / "gallery").mkdir()
    (tmp_path / "gallery" / "a.jpg").write_bytes(jpeg((200, 30, 30)))
    (tmp_path / "gallery" / "b.jpg").write_bytes(b"GIF? no, nothing Pillow knows")
    argv = ["search", "--checkpoint", benchmark_and_checkpoint[1], "--gallery", str(tmp_path / "gallery"), "a man",
            "--index", str(tmp_path / "index.pt"), "--sheet", str(tmp_path / "sheet.png")]
    before = _snapshot(tmp_path)
    assert main(argv) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1].split("\r")[-1]
    assert last_line == (f"gadms search: error: {tmp_path / 'gallery' / 'b.jpg'}: image cannot be decoded: "
                         "UnidentifiedImageError: not an image format Pillow reads")
    assert _snapshot(tmp_path) == before


def _run_without_write_override(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`gadms argv` in a new process that file permissions bind: as root (CI, containers) the process drops the
    capabilities that let root write anywhere, so a read-only folder is read-only to it too."""
    command = [sys.executable, "-m", "flows.cli", *argv]
    if os.geteuid() == 0:
        drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
        if shutil.which("setpriv") is None or subprocess.run([*drop, "true"], capture_output=True).returncode:
            pytest.skip("root that cannot drop its capabilities (no setpriv or no CAP_SETPCAP): nothing is read-only")
        command = [*drop, *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def _unwritable_inputs(tmp: Path) -> None:
    _caption_inputs(tmp)
    import pyarrow as pa

    from curation.synthweb.benchmark import write_synthetic_benchmark

    (tmp / "in" / "downloads").mkdir()
    row = {"url": "https://a.example/1.jpg", "data": (tmp / "in" / "ok.parquet").read_bytes()}
    pq.write_table(pa.Table.from_pylist([row]), tmp / "in" / "downloads" / "part-0.parquet")
    write_synthetic_benchmark(tmp / "in" / "benchmark", 2, 1, 2, 1, seed=0, train_captions="clean")
    (tmp / "in" / "urls.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    build_root(tmp / "in" / "root")
    (tmp / "ro").mkdir()
    (tmp / "in" / "ro_train.yaml").write_text(
        f"output_dir: {tmp / 'ro' / 'model'}\ndata: {{kind: benchmark, path: {tmp / 'in' / 'benchmark'}, "
        "benchmark: rstpreid}\n")


# A folder the user may not write, as each writing command meets it: (argv, the error after "gadms <cmd>: error: ").
UNWRITABLE_CASES = [
    (["crawl", "--urls", "{tmp}/in/urls.txt", "--out", "{tmp}/ro/out"],
     "{tmp}/ro/out: cannot write the crawl output folder: Permission denied"),
    (["detect", "--downloads", "{tmp}/in/downloads", "--out", "{tmp}/ro/out", "--backend", "hog"],
     "{tmp}/ro/out/dedup: cannot create the dedup index directory: Permission denied"),
    (["caption", "--crops", "{tmp}/in/ok.parquet", "--out", "{tmp}/ro/out", "--backend", "alt-text"],
     "{tmp}/ro/out: cannot write there: Permission denied"),
    (["templates", "build", "--captions", "{tmp}/in/captions.txt", "--out", "{tmp}/ro/bank.jsonl", "--clusters", "1"],
     "{tmp}/ro/bank.jsonl.cache: cannot write there: Permission denied"),
    (["synthweb", "render", "--out", "{tmp}/ro/site", "--images", "2"],
     "{tmp}/ro/site: cannot write there: Permission denied"),
    (["export", "--root", "{tmp}/in/root", "--out", "{tmp}/ro/export"],
     "{tmp}/ro/export: cannot write there: Permission denied"),
    (["train", "--config", "{tmp}/in/ro_train.yaml"], "{tmp}/ro/model: cannot write there: Permission denied"),
    (["demo", "--out", "{tmp}/ro/demo"], "{tmp}/ro/demo: cannot write there: Permission denied"),
    # Checked before the checkpoint is loaded and the gallery embedded, not when the sheet is written at the end.
    (["search", "--checkpoint", "{tmp}/none.pt", "--gallery", "{tmp}/in/root", "a man",
      "--sheet", "{tmp}/ro/sheet.png"],
     "{tmp}/ro: cannot write the contact sheet's folder: Permission denied"),
]


@pytest.mark.parametrize("argv, message", UNWRITABLE_CASES, ids=[" ".join(c[0][:2]) for c in UNWRITABLE_CASES])
def test_a_folder_the_user_cannot_write_is_one_line(argv, message, tmp_path):
    _unwritable_inputs(tmp_path)
    (tmp_path / "ro").chmod(0o555)
    before = _snapshot(tmp_path)
    try:
        done = _run_without_write_override([a.replace("{tmp}", str(tmp_path)) for a in argv], tmp_path)
    finally:
        (tmp_path / "ro").chmod(0o755)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert lines[-1].split("\r")[-1].replace(str(tmp_path), "{tmp}") == f"gadms {argv[0]}: error: {message}"
    assert "Traceback" not in done.stderr
    assert _snapshot(tmp_path) == before
