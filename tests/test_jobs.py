"""The stage-job runner (storage.jobs): unit ids, the done check, resume, clean-up of failed units, the run record."""
from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from storage.jobs import (StageRun, Unit, digest_id, part_id, pending, run_unit, run_units_overlapped, shard_unit,
                          state_dir, whole_parquet)
from storage.records import Reject
from tests.storage_fixtures import build_root


def _unit(tmp_path: Path, unit_id: str) -> Unit:
    return Unit(unit_id, (str(tmp_path / "a" / f"{unit_id}.parquet"), str(tmp_path / "b" / f"{unit_id}.parquet")),
                state_dir(str(tmp_path / "work"), "stage", unit_id))


def _write_outputs(run: StageRun, unit: Unit) -> str:
    run.write(pa.table({"x": [1, 2]}), unit.outputs[0])
    run.write_rejects([Reject(url="http://a.example/1.jpg", stage="detect", reason="no_person")], unit.outputs[1],
                      unit.id)
    return unit.id


def test_unit_ids():
    assert [part_id(0), part_id(12)] == ["part-00000", "part-00012"]
    assert digest_id("x") == "shard-" + hashlib.sha256(b"x").hexdigest()[:16] == "shard-2d711642b726b044"
    assert state_dir("/w", "crawl", "part-00003") == "/w/crawl/part-00003"


def test_a_truncated_or_missing_output_means_the_unit_is_not_done(tmp_path):
    run = StageRun.start(str(tmp_path), "detect", "r1")
    unit = _unit(tmp_path, "u0")
    assert not unit.done()  # nothing written
    _write_outputs(run, unit)
    assert unit.done() and whole_parquet(unit.outputs[0])
    data = Path(unit.outputs[1]).read_bytes()
    Path(unit.outputs[1]).write_bytes(data[:-8])  # the footer's last bytes gone
    assert not whole_parquet(unit.outputs[1]) and not unit.done()
    Path(unit.outputs[1]).unlink()
    assert not unit.done()


def test_resume_runs_only_the_units_not_done(tmp_path):
    run = StageRun.start(str(tmp_path), "detect", "r1")
    units = [_unit(tmp_path, f"u{i}") for i in range(3)]
    for unit in (units[0], units[2]):  # finished by an earlier run
        _write_outputs(run, unit)
    assert [u.id for u in pending(units)] == ["u1"]
    results = [run_unit(u, lambda u: _write_outputs(run, u), on_done=lambda u: f"{u.id} skipped") for u in units]
    assert results == ["u0 skipped", "u1", "u2 skipped"]
    assert run_unit(units[1], lambda u: pytest.fail("a done unit ran")) is None
    assert pending(units) == []


def test_a_failed_unit_leaves_no_output_and_keeps_its_state(tmp_path):
    run = StageRun.start(str(tmp_path), "detect", "r1")
    unit = _unit(tmp_path, "u0")
    Path(unit.state_dir).mkdir(parents=True)
    (Path(unit.state_dir) / "progress").write_text("half")

    def fails_after_the_first_output(unit: Unit) -> None:
        run.write(pa.table({"x": [1]}), unit.outputs[0])
        raise RuntimeError("killed mid-unit")

    with pytest.raises(RuntimeError, match="killed mid-unit"):
        run_unit(unit, fails_after_the_first_output)
    assert [Path(p).exists() for p in unit.outputs] == [False, False]
    assert (Path(unit.state_dir) / "progress").read_text() == "half"  # the next run resumes from it
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == []  # no temporary file either

    assert run_unit(unit, lambda u: _write_outputs(run, u)) == "u0"
    assert unit.done() and not Path(unit.state_dir).exists()  # a finished unit leaves no state
    rejects = pq.read_table(unit.outputs[1]).to_pylist()
    assert [(r["url"], r["stage"], r["reason"], r["shard_id"], r["run_id"]) for r in rejects] == [
        ("http://a.example/1.jpg", "detect", "no_person", "u0", "r1")]


def test_a_unit_that_keeps_its_state_keeps_it_when_done(tmp_path):
    """The build's chunks: a rebuild of a chunk whose manifest entry was deleted replays its crawl state."""
    run = StageRun.start(str(tmp_path), "build-webperson", "r1")
    base = _unit(tmp_path, "u0")
    unit = Unit(base.id, base.outputs, base.state_dir, keep_state=True)
    Path(unit.state_dir).mkdir(parents=True)
    (Path(unit.state_dir) / "seg").write_text("outcomes")
    assert run_unit(unit, lambda u: _write_outputs(run, u)) == "u0"
    assert unit.done() and (Path(unit.state_dir) / "seg").read_text() == "outcomes"


def test_the_run_record(tmp_path):
    run = StageRun.start(str(tmp_path), "detect")
    assert re.fullmatch(r"detect-\d{8}T\d{6}-[0-9a-f]{6}", run.run_id)
    record = run.save_record({"backend": "hog"}, {"counts": {"kept": 3}})
    saved = json.loads((tmp_path / "runs" / f"{run.run_id}.json").read_text())
    assert saved == record
    assert sorted(saved) == ["config", "finished_at", "flow", "output_root", "run_id", "started_at", "status", "summary"]
    assert (saved["run_id"], saved["flow"], saved["status"], saved["output_root"], saved["config"],
            saved["summary"]) == (run.run_id, "detect", "complete", str(tmp_path), {"backend": "hog"},
                                  {"counts": {"kept": 3}})
    assert datetime.fromisoformat(saved["started_at"]) == run.started_at
    assert datetime.fromisoformat(saved["finished_at"]) >= run.started_at


def test_a_build_shard_is_done_when_its_manifest_says_so(tmp_path):
    layout = build_root(tmp_path)
    unit = shard_unit(layout, "shard-00001")
    assert [Path(p).name for p in unit.outputs] == ["shard-00001.parquet"] * 4 + ["shard-00001.json"]
    assert unit.done()
    shard = Path(layout.shard_path("shard-00001"))
    shard.write_bytes(shard.read_bytes()[:-1])  # its size no longer the manifest's
    assert not unit.done()
    assert not shard_unit(layout, "shard-00009").done()


def test_the_crawl_cli_redoes_a_chunk_whose_output_is_cut_short(tmp_path, capsys):
    """One URL the crawl rejects without the network; the chunk's downloads file, truncated, is redone."""
    (tmp_path / "a.txt").write_text("notaurl-a\n")
    (tmp_path / "crawl.yaml").write_text("contact_url: https://example.org/contact\n")
    args = ["crawl", "--urls", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"),
            "--config", str(tmp_path / "crawl.yaml")]
    assert main([*args, "--run-id", "c1"]) == 0
    assert main([*args, "--run-id", "c2"]) == 0  # done: nothing crawled
    downloads = tmp_path / "out" / "downloads" / "part-00000.parquet"
    downloads.write_bytes(downloads.read_bytes()[:100])
    assert main([*args, "--run-id", "c3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (f"crawl: 0 downloaded, 1 rejected -> {tmp_path}/out/downloads, {tmp_path}/out/rejects; "
                       "rejected this run: invalid_url 1")
    counts = {run: json.loads((tmp_path / "out" / "runs" / f"{run}.json").read_text())["summary"]["counts"]
              for run in ("c1", "c2", "c3")}
    assert counts == {"c1": {"downloaded": 0, "rejected": 1, "rejected_this_run": {"invalid_url": 1}},
                      "c2": {"downloaded": 0, "rejected": 1, "rejected_this_run": {}},
                      "c3": {"downloaded": 0, "rejected": 1, "rejected_this_run": {"invalid_url": 1}}}
    assert whole_parquet(str(downloads))
    assert [r["run_id"] for r in pq.read_table(tmp_path / "out" / "rejects").to_pylist()] == ["c3"]
    assert list((tmp_path / "out" / "work" / "crawl").iterdir()) == []


class _OverlappedStage:
    """Records what run_units_overlapped does, in order; each unit's work makes its state folder first."""

    def __init__(self, run: StageRun, fail_work: str | None = None, fail_write: str | None = None):
        self.run, self.fail_work, self.fail_write = run, fail_work, fail_write
        self.events: list[str] = []

    def work(self, unit: Unit, item: str, meanwhile) -> str:
        Path(unit.state_dir).mkdir(parents=True, exist_ok=True)
        self.events.append(f"work {unit.id}")
        meanwhile()
        if unit.id == self.fail_work:
            raise KeyboardInterrupt
        self.events.append(f"worked {unit.id}")
        return f"result of {item}"

    def write(self, unit: Unit, item: str, result: str) -> None:
        self.events.append(f"write {unit.id} ({result})")
        self.run.write(pa.table({"x": [1]}), unit.outputs[0])
        if unit.id == self.fail_write:
            raise OSError("disk full")
        _write_outputs(self.run, unit)

    def done(self, unit: Unit, item: str) -> None:
        self.events.append(f"done before {unit.id}")


def test_overlapped_units_write_each_while_the_next_works_then_remove_its_state(tmp_path):
    run = StageRun.start(str(tmp_path), "crawl", "r1")
    units = [_unit(tmp_path, f"u{i}") for i in range(4)]
    _write_outputs(run, units[1])  # done by an earlier run
    stage = _OverlappedStage(run)
    run_units_overlapped(((u, f"item {u.id}") for u in units), stage.work, stage.write, stage.done)
    assert stage.events == ["work u0", "worked u0", "done before u1", "work u2", "write u0 (result of item u0)",
                            "worked u2", "work u3", "write u2 (result of item u2)", "worked u3",
                            "write u3 (result of item u3)"]
    assert pending(units) == []
    assert not any(Path(u.state_dir).exists() for u in units)


def test_overlapped_units_interrupted_write_what_was_fetched_and_keep_the_state_of_the_rest(tmp_path):
    run = StageRun.start(str(tmp_path), "crawl", "r1")
    units = [_unit(tmp_path, f"u{i}") for i in range(3)]
    stage = _OverlappedStage(run, fail_work="u1")
    with pytest.raises(KeyboardInterrupt):
        run_units_overlapped(((u, u.id) for u in units), stage.work, stage.write, stage.done)
    assert stage.events == ["work u0", "worked u0", "work u1", "write u0 (result of u0)"]
    assert units[0].done() and not Path(units[0].state_dir).exists()  # written during u1's work, before the stop
    assert not units[1].done() and Path(units[1].state_dir).exists()  # resumes from its state
    assert not any(Path(p).exists() for p in units[1].outputs)


def test_overlapped_units_a_failed_write_removes_its_outputs_and_keeps_its_state(tmp_path):
    run = StageRun.start(str(tmp_path), "crawl", "r1")
    units = [_unit(tmp_path, f"u{i}") for i in range(3)]
    stage = _OverlappedStage(run, fail_write="u0")
    with pytest.raises(OSError, match="disk full"):
        run_units_overlapped(((u, u.id) for u in units), stage.work, stage.write, stage.done)
    assert stage.events == ["work u0", "worked u0", "work u1", "write u0 (result of u0)"]
    for unit in units[:2]:
        assert not any(Path(p).exists() for p in unit.outputs) and Path(unit.state_dir).exists()
