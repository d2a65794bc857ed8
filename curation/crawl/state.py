"""Resumable per-chunk state: what each finished URL became, in append-only segment files.

    <state_dir>/chunk.json            fingerprint of the chunk's URL list (a rerun must pass the same list)
    <state_dir>/seg-<writer>-<n>.arrow  outcomes (downloaded bytes or reject reason) by row index

Segments are written whole under a temporary name and renamed (storage.fs.atomic_write), so a killed run
leaves only complete segments: a rerun skips the rows in them and fetches the rest. The rows of the segment
that was being filled are fetched again; nothing is counted twice.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from storage.errors import GadmsError
from storage.fs import atomic_write, filesystem, join
from storage.records import UrlRecord

OUTCOME_SCHEMA = pa.schema(
    [
        pa.field("index", pa.int64(), nullable=False),
        pa.field("reason", pa.string()),  # null when downloaded
        pa.field("detail", pa.string()),
        pa.field("data", pa.large_binary()),
        pa.field("sha256", pa.string()),
        pa.field("mime", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("fetched_at", pa.timestamp("us", tz="UTC")),
        pa.field("http_status", pa.int16()),
        pa.field("x_robots_tag", pa.string()),
    ]
)
# Segments written before the fetch provenance was kept lack these; they load with the columns NULL.
_ADDED_OUTCOME_COLUMNS = ("fetched_at", "http_status", "x_robots_tag")


@dataclass
class Outcome:
    """What one input row (by index in the chunk) became; one row of a segment."""

    index: int
    reason: str | None = None  # None: downloaded
    detail: str = ""
    data: bytes | None = None
    sha256: str | None = None
    mime: str | None = None
    width: int | None = None
    height: int | None = None
    fetched_at: datetime | None = None
    http_status: int | None = None
    x_robots_tag: str | None = None


def chunk_fingerprint(urls: list[UrlRecord]) -> str:
    digest = hashlib.sha256()
    for record in urls:
        digest.update(record.url.encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def open_chunk_state(state_dir: str, urls: list[UrlRecord]) -> None:
    """Create the state folder for this chunk, or check that an existing one belongs to the same URL list."""
    fs, path = filesystem(state_dir)
    meta_path = join(state_dir, "chunk.json")
    meta = filesystem(meta_path)[1]
    expected = {"urls": len(urls), "fingerprint": chunk_fingerprint(urls)}
    if fs.exists(meta):
        try:
            with fs.open(meta, "r") as f:
                found = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            found = f"{exc}"
        if not isinstance(found, dict):
            raise GadmsError(f"{meta_path}: damaged crawl state ({found}); delete {state_dir} to restart this chunk")
        if found != expected:
            raise GadmsError(
                f"{state_dir}: holds the state of another URL list ({found.get('urls')} URLs, fingerprint "
                f"{str(found.get('fingerprint'))[:12]}); use a fresh state folder for this chunk"
            )
        return
    fs.makedirs(path, exist_ok=True)
    with atomic_write(meta_path, "w") as f:
        json.dump(expected, f)


def load_segments(state_dir: str) -> pa.Table:
    """All saved outcomes as one table (OUTCOME_SCHEMA), rows in no particular order. Local segments are
    memory-mapped, so image bytes are not copied until they are written out."""
    fs, path = filesystem(state_dir)
    tables = [pa.Table.from_batches([], schema=OUTCOME_SCHEMA)]  # Schema.empty_table() imports pandas: 0.5 s
    for segment in sorted(fs.glob(f"{path.rstrip('/')}/seg-*.arrow")):
        try:
            if isinstance(fs, LocalFileSystem):
                table = pa.ipc.open_file(pa.memory_map(segment)).read_all()
            else:
                with fs.open(segment, "rb") as f:
                    table = pa.ipc.open_file(f).read_all()
        except (pa.ArrowInvalid, OSError) as exc:  # segments are renamed into place whole: someone damaged it
            raise GadmsError(f"{segment}: damaged crawl state ({exc}); delete {state_dir} to restart this chunk") from None
        table = _with_added_columns(table)
        if not table.schema.equals(OUTCOME_SCHEMA):
            raise GadmsError(f"{segment}: damaged crawl state (not an outcome segment); delete {state_dir} to restart "
                             "this chunk")
        tables.append(table)
    return pa.concat_tables(tables)


def _with_added_columns(table: pa.Table) -> pa.Table:
    for name in _ADDED_OUTCOME_COLUMNS:
        if name not in table.column_names:
            kind = OUTCOME_SCHEMA.field(name).type
            table = table.append_column(pa.field(name, kind), pa.nulls(table.num_rows, kind))
    return table


def saved_rows(segments: pa.Table) -> dict[int, int]:
    """Row index → position of its first outcome in `segments`."""
    positions: dict[int, int] = {}
    for position, index in enumerate(segments.column("index").to_pylist()):
        positions.setdefault(index, position)
    return positions


def binary_column(values: list[bytes | None], rows_per_chunk: int = 256) -> pa.ChunkedArray:
    """Image bytes (None: null) as an Arrow column, each piece of `rows_per_chunk` rows made from one joined buffer:
    `pa.array(list_of_bytes)` grows its buffer as it goes and copies it over and over, 4× the cost of a join (and
    ~10× for one array of hundreds of MB). large_binary: a chunk's images may pass 2 GiB."""
    pieces = []
    for start in range(0, len(values), rows_per_chunk):
        piece = values[start : start + rows_per_chunk]
        offsets = [0, *itertools.accumulate(len(v) if v is not None else 0 for v in piece)]
        validity = None
        if None in piece:
            validity = pa.array([v is not None for v in piece], pa.bool_()).buffers()[1]
        pieces.append(pa.LargeBinaryArray.from_buffers(
            pa.large_binary(), len(piece),
            [validity, pa.array(offsets, pa.int64()).buffers()[1], pa.py_buffer(b"".join(v for v in piece if v))],
            null_count=-1 if validity is not None else 0,
        ))
    return pa.chunked_array(pieces, pa.large_binary())


class SegmentWriter:
    """Buffers outcomes and writes them as a segment every `flush_rows` rows or `flush_s` seconds.

    The segments are written by a thread of the writer's own, so the event loop that fetches never waits for the
    disk (building the table, the write, its fsync): that wait was ~10 % of a loop's time on a loaded machine. At
    most one buffer waits for the thread, so a slow disk slows the fetching instead of filling memory. `close()`
    writes what is left and ends the thread; an error of a write is raised by the next `flush()` or `close()`.
    """

    def __init__(self, state_dir: str, writer_id: str, flush_rows: int, flush_s: float):
        self.state_dir = state_dir
        self.prefix = f"seg-{writer_id}-{uuid.uuid4().hex[:8]}"
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.buffer: list[Outcome] = []
        self.segments = 0
        self.last_flush = time.monotonic()
        self._pending: queue.Queue[list[Outcome] | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def add(self, outcome: Outcome) -> None:
        self.buffer.append(outcome)
        if len(self.buffer) >= self.flush_rows or time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Hand the buffered outcomes to the writing thread."""
        self.last_flush = time.monotonic()
        self._raise_error()
        if not self.buffer:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_pending, name=f"{self.prefix}-writer", daemon=True)
            self._thread.start()
        self._pending.put(self.buffer)
        self.buffer = []

    def close(self, raise_errors: bool = True) -> None:
        """Write what is buffered, wait for every segment to be in place and end the thread."""
        try:
            self.flush()
        finally:
            if self._thread is not None:
                self._pending.put(None)
                self._thread.join()
                self._thread = None
        if raise_errors:
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write_pending(self) -> None:
        while (outcomes := self._pending.get()) is not None:
            if self._error is None:  # after a failed write the rest are dropped: they are fetched again on resume
                try:
                    self._write(outcomes)
                except BaseException as exc:
                    self._error = exc

    def _write(self, outcomes: list[Outcome]) -> None:
        columns = {name: [getattr(o, name) for o in outcomes] for name in OUTCOME_SCHEMA.names}
        columns["data"] = binary_column(columns["data"])
        table = pa.Table.from_pydict(columns, schema=OUTCOME_SCHEMA)
        with atomic_write(join(self.state_dir, f"{self.prefix}-{self.segments:06d}.arrow"), native=True) as f:
            with pa.ipc.new_file(f, OUTCOME_SCHEMA) as ipc:
                ipc.write_table(table)
        self.segments += 1
