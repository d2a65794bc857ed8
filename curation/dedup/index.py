"""The global, persistent dedup index: every kept crop of every shard, run and worker of one output root.

Storage: one DuckDB file `<root>/dedup/index.duckdb` (beside the catalog, not inside it, so the catalog can be
rebuilt freely) with one row per kept crop: `kept(seq, sample_id, shard_id, phash UBIGINT, crop_sha256,
source_sha256)`, and `meta(key, value)` holding a `generation` counter that changes whenever rows are deleted.
A process keeps the hashes in memory (a `MultiIndexHash` plus exact-match dicts) and loads only rows with a
`seq` above the last one it saw; a changed generation makes it reload everything.

Where the serialisation point is, and why: `deduplicate` holds an exclusive `flock` on `<root>/dedup/index.lock`
for "load what other workers kept → check this batch → insert this batch's kept rows → commit", and nothing else.
- Correctness needs check-and-insert to be atomic: two workers checking the same new duplicate at the same
  time would both find nothing and both keep it. Under the lock, the second worker loads the first one's rows
  before it checks, so exactly one copy is kept wherever the workers run (threads, processes, Ray tasks on the
  host). A row is either committed with its whole batch or not at all (one DuckDB transaction).
- It is the cheapest place: decoding and detection (seconds per chunk) run fully in parallel outside the lock;
  inside it is an incremental load and a vectorised MIH search (milliseconds per chunk).
- DuckDB itself admits a single read-write process per file, so the connection is opened inside the lock and
  closed before release; no process holds the file between batches.
- `flock` needs a local filesystem (or one with working POSIX locks); a remote (s3://) root is refused.
  A multi-machine build either shares such a filesystem or routes dedup through a single writer task.

Idempotent per shard: `deduplicate(crops, shard_id)` first deletes the rows a previous (killed or repeated)
run of the same shard inserted, so a rerun never rejects its own samples as duplicates of themselves.

Exact duplicates: the same `sample_id` (same source sha256 and box) or the same crop sha256 as a kept crop.
Near duplicates: pHash within Hamming distance `radius` of a kept crop, or the pHash of the crop's mirror image
within it (mirrored copies are common on the web, and a mirror's own pHash is far from the original's). Both
name the kept sample in `detail`.

Benchmark guard: `benchmark(dataset, file, phash)` holds the val and test images of evaluation benchmarks
(curation.dedup.benchmark seeds it). A crop (or its mirror image) within `radius` of one is rejected as
`benchmark_overlap` with `<dataset>:<image path>` in `detail`, before any other check, and never enters the index.
"""
from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa

from curation.dedup.mih import MultiIndexHash, as_hashes, nearest_matches, resolve_in_order, within_batch_pairs
from curation.dedup.phash import mirrored_phash64
from storage.errors import GadmsError
from storage.fs import is_local
from storage.records import PersonCrop, Reject

INDEX_FILE = "index.duckdb"
LOCK_FILE = "index.lock"
EXACT_RANK = -1  # an exact match outranks any pHash distance when choosing whom a duplicate points to

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kept (
    seq BIGINT NOT NULL,
    sample_id VARCHAR NOT NULL,
    shard_id VARCHAR NOT NULL,
    phash UBIGINT NOT NULL,
    crop_sha256 VARCHAR NOT NULL,
    source_sha256 VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS benchmark (dataset VARCHAR NOT NULL, file VARCHAR NOT NULL, phash UBIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS benchmark_sources (dataset VARCHAR PRIMARY KEY, annotation_sha256 VARCHAR NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('generation', 0);
"""


def in_source_order(crops: list[PersonCrop]) -> list[PersonCrop]:
    """The crops of a chunk ordered by source URL, then sample id: the order dedup sees them in, whichever path ran
    the stages. Downloads arrive in the order hosts answer, and which copy of a duplicate pair a chunk keeps (and
    its shard's row order) must not depend on that."""
    return sorted(crops, key=lambda crop: (crop.source_url, crop.sample_id))


class DedupIndex:
    """Global exact + near-duplicate filter over all kept crops; see the module docstring."""

    def __init__(self, directory: Path, radius: int):
        self.directory = directory
        self.radius = radius
        self._thread_lock = threading.Lock()  # flock excludes processes; this, threads sharing this object
        self._reset(generation=-1)

    @classmethod
    def open(cls, path: str | os.PathLike, radius: int = 6) -> "DedupIndex":
        """Open (creating if needed) the index in directory `path`, e.g. `OutputLayout(root).dedup_dir`."""
        if not is_local(str(path)):
            raise GadmsError(f"{path}: the dedup index needs a local directory (it relies on POSIX file locks)")
        if not 0 <= radius <= 16:
            raise GadmsError(f"dedup radius must be between 0 and 16 bits, got {radius}")
        directory = Path(path)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GadmsError(f"{directory}: cannot create the dedup index directory: {exc.strerror}") from None
        index = cls(directory, radius)
        with index._locked() as con:
            index._sync(con)
        return index

    def __len__(self) -> int:
        """Kept crops as of this process's last look at the index."""
        return len(self._sample_ids)

    def benchmark_source(self, dataset: str) -> str | None:
        """The sha256 of the annotation file `dataset` was last seeded from, or None."""
        with self._locked() as con:
            rows = con.execute("SELECT annotation_sha256 FROM benchmark_sources WHERE dataset = ?",
                               [dataset]).fetchall()
        return rows[0][0] if rows else None

    def seed_benchmark(self, dataset: str, annotation_sha256: str, files: list[str], phashes: list[int]) -> None:
        """Replace the benchmark images of `dataset` with `files` (named `<dataset>:<path>`) and their pHashes."""
        rows = pa.table({"dataset": [dataset] * len(files), "file": files,
                         "phash": pa.array(phashes, pa.uint64())})
        with self._locked() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute("DELETE FROM benchmark WHERE dataset = ?", [dataset])
                con.register("new_rows", rows)
                con.execute("INSERT INTO benchmark SELECT * FROM new_rows")
                con.unregister("new_rows")
                con.execute("INSERT OR REPLACE INTO benchmark_sources VALUES (?, ?)", [dataset, annotation_sha256])
                con.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            self._sync(con)

    @property
    def benchmark_images(self) -> int:
        return len(self._benchmark_files)

    def deduplicate(self, crops: list[PersonCrop], shard_id: str) -> tuple[list[PersonCrop], list[Reject]]:
        """Keep the crops that duplicate nothing kept before (any shard) or earlier in `crops`; record them."""
        mirrored = as_hashes([mirrored_phash64(c.image) for c in crops])  # decoding stays outside the lock
        with self._locked() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                self._forget_shard(con, shard_id)
                self._sync(con)
                kept, rejects = self._decide(crops, mirrored)
                self._insert(con, kept, shard_id)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                self._reset(generation=-1)  # memory may hold rows that were never committed
                raise
        return kept, rejects

    def _decide(self, crops: list[PersonCrop], mirrored: np.ndarray) -> tuple[list[PersonCrop], list[Reject]]:
        hashes = as_hashes([c.phash for c in crops])
        benchmark_near, benchmark_distance = _nearest_of_either(self._benchmark_mih, hashes, mirrored)
        stored_near, stored_distance = _nearest_of_either(self._mih, hashes, mirrored)
        stored_exact = [self._exact.get(c.sample_id, self._exact.get(c.crop_sha256)) for c in crops]
        blocked = ((benchmark_near >= 0) | (stored_near >= 0)
                   | np.array([m is not None for m in stored_exact], dtype=bool))

        later, earlier, rank = within_batch_pairs(hashes, self.radius)
        # A later crop whose mirror image is near an earlier crop (a crop and its own mirror are not a pair).
        mirror_later, mirror_earlier, mirror_rank = MultiIndexHash(self.radius, hashes).search(mirrored)
        mirror_only = mirror_earlier < mirror_later
        exact_later, exact_earlier = _exact_pairs(crops)
        later = np.concatenate([later, mirror_later[mirror_only], exact_later])
        earlier = np.concatenate([earlier, mirror_earlier[mirror_only], exact_earlier])
        rank = np.concatenate([rank.astype(np.int64), mirror_rank[mirror_only].astype(np.int64),
                               np.full(len(exact_later), EXACT_RANK)])
        batch_match = resolve_in_order(blocked, later, earlier, rank)

        kept, rejects = [], []
        for k, crop in enumerate(crops):
            if benchmark_near[k] >= 0:
                file = self._benchmark_files[int(benchmark_near[k])]
                rejects.append(_reject(crop, "benchmark_overlap", file, int(benchmark_distance[k])))
            elif stored_exact[k] is not None:
                rejects.append(_reject(crop, "exact_duplicate", stored_exact[k], 0))
            elif stored_near[k] >= 0:
                match = int(stored_near[k])
                rejects.append(_reject(crop, "near_duplicate", self._sample_ids[match], int(stored_distance[k])))
            elif batch_match[k] >= 0:
                other = crops[batch_match[k]]
                exact = other.sample_id == crop.sample_id or other.crop_sha256 == crop.crop_sha256
                distance = min(_distance(crop.phash, other.phash), _distance(mirrored[k], other.phash))
                rejects.append(_reject(crop, "exact_duplicate" if exact else "near_duplicate", other.sample_id, distance))
            else:
                kept.append(crop)
        return kept, rejects

    def _insert(self, con: duckdb.DuckDBPyConnection, kept: list[PersonCrop], shard_id: str) -> None:
        if not kept:
            return
        first = self._last_seq + 1
        rows = pa.table(
            {
                "seq": pa.array(range(first, first + len(kept)), pa.int64()),
                "sample_id": [c.sample_id for c in kept],
                "shard_id": [shard_id] * len(kept),
                "phash": pa.array([c.phash for c in kept], pa.uint64()),
                "crop_sha256": [c.crop_sha256 for c in kept],
                "source_sha256": [c.source_sha256 for c in kept],
            }
        )
        con.register("new_rows", rows)
        con.execute("INSERT INTO kept SELECT * FROM new_rows")
        con.unregister("new_rows")
        self._remember(rows)

    def _forget_shard(self, con: duckdb.DuckDBPyConnection, shard_id: str) -> None:
        """Delete what an earlier run of this shard inserted; other processes see the new generation and reload."""
        if _scalar(con, "SELECT count(*) FROM kept WHERE shard_id = ?", [shard_id]):
            con.execute("DELETE FROM kept WHERE shard_id = ?", [shard_id])
            con.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")

    def _sync(self, con: duckdb.DuckDBPyConnection) -> None:
        generation = _scalar(con, "SELECT value FROM meta WHERE key = 'generation'")
        if generation != self._generation:
            self._reset(generation)
            benchmark = con.sql("SELECT file, phash FROM benchmark ORDER BY dataset, file").to_arrow_table()
            self._benchmark_mih.add(benchmark.column("phash").to_numpy())
            self._benchmark_files = benchmark.column("file").to_pylist()
        rows = con.sql(
            "SELECT seq, sample_id, phash, crop_sha256 FROM kept WHERE seq > ? ORDER BY seq", params=[self._last_seq]
        ).to_arrow_table()
        self._remember(rows)

    def _remember(self, rows: pa.Table) -> None:
        if not rows.num_rows:
            return
        sample_ids = rows.column("sample_id").to_pylist()
        phashes = rows.column("phash").to_numpy()
        self._mih.add(phashes)
        self._sample_ids += sample_ids
        for sample_id, crop_sha in zip(sample_ids, rows.column("crop_sha256").to_pylist()):
            self._exact.setdefault(sample_id, sample_id)
            self._exact.setdefault(crop_sha, sample_id)
        self._last_seq = int(rows.column("seq")[-1].as_py())

    def _reset(self, generation: int) -> None:
        self._generation = generation
        self._last_seq = -1
        self._mih = MultiIndexHash(self.radius)
        self._sample_ids: list[str] = []
        self._exact: dict[str, str] = {}  # sample_id or crop sha256 → kept sample_id
        self._benchmark_mih = MultiIndexHash(self.radius)
        self._benchmark_files: list[str] = []

    @contextmanager
    def _locked(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._thread_lock, open(self.directory / LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                path = self.directory / INDEX_FILE
                try:
                    con = duckdb.connect(str(path))
                    con.execute(_SCHEMA)
                except duckdb.Error as exc:
                    raise GadmsError(f"{path}: cannot open the dedup index: {str(exc).splitlines()[0]}") from None
                try:
                    yield con
                finally:
                    con.close()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _nearest_of_either(index: MultiIndexHash, hashes: np.ndarray,
                       mirrored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nearest_matches of each crop's pHash or, when strictly closer, of its mirror image's."""
    near, distance = nearest_matches(index, hashes)
    mirror_near, mirror_distance = nearest_matches(index, mirrored)
    closer = (mirror_near >= 0) & ((near < 0) | (mirror_distance < distance))
    return np.where(closer, mirror_near, near), np.where(closer, mirror_distance, distance)


def _scalar(con: duckdb.DuckDBPyConnection, query: str, params: list | None = None):
    return con.execute(query, params or []).fetchall()[0][0]


def _exact_pairs(crops: list[PersonCrop]) -> tuple[np.ndarray, np.ndarray]:
    """(later, first earlier) positions of crops with the same sample_id or crop sha256 within the batch."""
    first_seen: dict[str, int] = {}
    later, earlier = [], []
    for k, crop in enumerate(crops):
        for key in (crop.sample_id, crop.crop_sha256):
            first = first_seen.setdefault(key, k)
            if first != k:
                later.append(k)
                earlier.append(first)
    return np.array(later, dtype=np.int64), np.array(earlier, dtype=np.int64)


def _distance(a: int, b: int) -> int:
    return (int(a) ^ int(b)).bit_count()


def _reject(crop: PersonCrop, reason: str, matched: str, distance: int) -> Reject:
    """A dedup reject naming what the crop duplicates: a kept sample id, or a benchmark image."""
    return Reject(
        stage="dedup",
        reason=reason,
        url=crop.source_url,
        sample_id=crop.sample_id,
        detail=matched,
        extra={"distance": distance},
        bbox=crop.bbox,
    )
