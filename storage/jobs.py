"""The one way a stage runs: its units, their done check and state, atomic outputs, rejects and the run record.

A stage's work is cut into units: a crawl chunk (`part_id`), a detect input file (named after it), a build shard
(`digest_id` of its rows). A unit writes its output files atomically (storage.fs.atomic_write), its marker last,
and is done when they are all there and whole: a Parquet file cut short has no footer, so it is redone, not
"already done" (img2dataset's "a shard is done when its stats file exists"; datatrove's completion markers).

`run_unit(unit, process)` is the whole protocol, the same for every stage CLI and for each task of the build
flow: a done unit is skipped; otherwise `process(unit)` runs, with the unit's resumable state in its state
folder. When it returns, the state folder is removed (unless the unit keeps it); when it raises, the state folder
stays (the next run resumes from it) and the outputs it had written are removed, so a failed unit leaves no
partial output. `run_units_overlapped` is the same protocol for a stream of units whose work waits on worker
processes: each unit's outputs are written while the next unit is worked on (`gadms crawl`'s chunks).

`StageRun` is what one run of a stage shares: its run id, the rejects it writes (stamped with that id) and the run
record `runs/<run_id>.json` it saves at the end.

    run = StageRun.start(out, "detect", run_id)
    for unit in units:
        run_unit(unit, process)        # process writes unit.outputs: run.write(...), run.write_rejects(...)
    run.save_record(config, summary)
"""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterable, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from storage.catalog import write_run_record
from storage.fs import filesystem, join
from storage.layout import OutputLayout
from storage.records import Reject
from storage.shards import rejects_table, shard_is_complete, utc_now, write_parquet_atomic

T = TypeVar("T")
X = TypeVar("X")


def part_id(number: int) -> str:
    """The id of the `number`-th unit of a stream cut in order (the crawl CLI's chunks): part-00000, ..."""
    return f"part-{number:05d}"


def digest_id(identity: str, prefix: str = "shard") -> str:
    """A unit id from what the unit holds (e.g. a build chunk's file, row range and fingerprint): the same rows give
    the same id in every run, other rows another id."""
    return f"{prefix}-" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def state_dir(work_dir: str, stage: str, unit_id: str) -> str:
    """Where a unit in progress keeps its resumable state: <work_dir>/<stage>/<unit_id>."""
    return join(work_dir, stage, unit_id)


def whole_parquet(path: str) -> bool:
    """True when `path` is a Parquet file with a readable footer (written whole, not cut short)."""
    fs, p = filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            pq.read_metadata(f)
    except (FileNotFoundError, pa.ArrowInvalid, OSError):
        return False
    return True


def outputs_whole(unit: "Unit") -> bool:
    return all(whole_parquet(path) for path in unit.outputs)


@dataclass(frozen=True)
class Unit:
    """One unit of a stage's work. `outputs`: the files it writes, in writing order (the last is the marker);
    `state_dir`: its resumable state while in progress (None: it has none); `keep_state`: the state stays when the
    unit is done too (the build's crawl state, which a rebuild of the chunk replays instead of fetching again);
    `is_done`: the done check, by default every output is whole Parquet (the build's: its manifest entry says
    complete and the shard has that size)."""

    id: str
    outputs: tuple[str, ...]
    state_dir: str | None = None
    keep_state: bool = False
    is_done: Callable[["Unit"], bool] = field(default=outputs_whole, compare=False)

    def done(self) -> bool:
        return self.is_done(self)


def shard_unit(layout: OutputLayout, shard_id: str, state: str | None = None, keep_state: bool = False) -> Unit:
    """A build shard as a unit: its rejects, reject thumbnails, shard, statistics and (last, the marker) manifest
    entry (storage.shards.commit_tables); done when that entry says complete and the shard file has the size it
    records (storage.shards.shard_is_complete)."""
    outputs = (layout.rejects_path(shard_id), layout.reject_thumbnails_path(shard_id), layout.shard_path(shard_id),
               layout.shard_stats_path(shard_id), layout.manifest_path(shard_id))
    return Unit(shard_id, outputs, state, keep_state, is_done=_shard_complete)


def _shard_complete(unit: Unit) -> bool:
    return shard_is_complete(unit.outputs[-1], unit.outputs[2])


def run_unit(unit: Unit, process: Callable[[Unit], T], on_done: Callable[[Unit], T] | None = None) -> T | None:
    """Run `process(unit)` unless the unit is done (then `on_done(unit)`, or None); see the module docstring."""
    if unit.done():
        return on_done(unit) if on_done is not None else None
    try:
        result = process(unit)
    except BaseException:
        _remove_outputs(unit)
        raise
    _remove_state(unit)
    return result


def run_units_overlapped(units: Iterable[tuple[Unit, X]], work: Callable[[Unit, X, Callable[[], None]], T],
                         write: Callable[[Unit, X, T], None], on_done: Callable[[Unit, X], None]) -> None:
    """run_unit over a stream of units whose work leaves this process waiting (a crawl chunk is fetched by worker
    processes), with each unit's outputs written during the next unit's work. `work(unit, item, meanwhile)`
    returns what `write(unit, item, result)` writes to the unit's outputs, and calls `meanwhile()` once while it
    waits: that writes the previous unit's outputs. `on_done(unit, item)` is called for units done before.

    No thread: work that forks worker processes may (a fork beside a writing thread could inherit its locks
    held). The protocol is run_unit's: a unit's state folder is removed only when its outputs are all written; a
    failed unit removes its outputs, keeps its state and is raised, after the previous unit is written."""
    previous: list[tuple[Unit, X, T]] = []

    def write_previous() -> None:
        if previous:
            unit, item, result = previous.pop()
            try:
                write(unit, item, result)
            except BaseException:
                _remove_outputs(unit)
                raise
            _remove_state(unit)

    for unit, item in units:
        if unit.done():
            on_done(unit, item)
            continue
        try:
            result = work(unit, item, write_previous)
        except BaseException:
            _remove_outputs(unit)
            write_previous()
            raise
        write_previous()  # when `work` had no time to wait
        previous.append((unit, item, result))
    write_previous()


def _remove_outputs(unit: Unit) -> None:
    for path in unit.outputs:
        _remove(path)


def _remove_state(unit: Unit) -> None:
    """A done unit's state folder, unless the unit keeps it."""
    if unit.state_dir is not None and not unit.keep_state:
        _remove(unit.state_dir)


def pending(units: Iterable[Unit]) -> list[Unit]:
    """The units not done yet, in order."""
    return [unit for unit in units if not unit.done()]


def _remove(path: str) -> None:
    fs, p = filesystem(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def new_run_id(stage: str, started: datetime | None = None) -> str:
    """<stage>-<UTC time>-<6 hex digits>, e.g. detect-20260101T120000-1a2b3c."""
    return f"{stage}-{(started or utc_now()):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class StageRun:
    """One run of a stage over an output folder (picklable: the build passes it to its tasks)."""

    out: str
    stage: str  # the run record's `flow`: crawl, detect, caption, build-webperson
    run_id: str
    started_at: datetime

    @classmethod
    def start(cls, out: str, stage: str, run_id: str | None = None) -> "StageRun":
        started = utc_now()
        return cls(str(out), stage, run_id or new_run_id(stage, started), started)

    def write(self, table: pa.Table, path: str) -> dict:
        """Write one output table atomically (storage.shards.write_parquet_atomic)."""
        return write_parquet_atomic(table, path)

    def write_rejects(self, rejects: Iterable[Reject], path: str, unit_id: str | None,
                      created_at: datetime | None = None) -> int:
        """Write a unit's rejects (storage.schema.REJECT_SCHEMA, shard_id `unit_id`, this run's id); their count."""
        table = rejects_table(rejects, unit_id, self.run_id, created_at)
        self.write(table, path)
        return table.num_rows

    def record(self, config: dict, summary: dict, status: str = "complete") -> dict:
        return {"run_id": self.run_id, "flow": self.stage, "status": status, "output_root": self.out,
                "started_at": self.started_at.isoformat(), "finished_at": utc_now().isoformat(),
                "config": config, "summary": summary}

    def save_record(self, config: dict, summary: dict, status: str = "complete") -> dict:
        """Save the run record as <out>/runs/<run_id>.json (storage.catalog.write_run_record); return it."""
        record = self.record(config, summary, status)
        write_run_record(self.out, record)
        return record
