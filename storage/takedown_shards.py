"""`gadms takedown`: remove the samples a blocklist matches from the complete shards of an output root.

Each affected shard is rewritten in three steps, so a kill at any point leaves every shard either old or new:
1. stage: the new shard (the rows that stay) and the new rejects file (the old one plus a `takedown` row per
   removed sample: reason = the entry's kind, detail = the entry) are written beside the originals under
   dot-prefixed names that no reader lists, fsynced;
2. journal: `<root>/takedown/pending/<shard_id>.json` holds the new manifest entry (new rows, bytes, sha256);
   written atomically, it is the commit point;
3. commit: each staged file is renamed onto its original, the manifest entry is written, the journal deleted.
A kill before the journal leaves the old shard and its entry (the staged files are overwritten by the rerun);
after it, the next `gadms takedown` (or build) completes the journal first. The list itself is kept under
`<root>/takedown/` before any shard is touched, so a rebuild applies it even when the takedown was killed.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from storage.fs import atomic_write, exists, filesystem, join, replace
from storage.layout import OutputLayout
from storage.records import Reject
from storage.shards import (
    complete_shards, json_files, read_parquet, read_shard, rejects_table, write_manifest_entry, write_parquet_atomic,
    utc_now, write_shard,
)
from storage.takedown import MATCH_COLUMNS, TakedownList, applied_lists_dir

STAGE = "takedown"


@dataclass
class TakedownReport:
    shards_checked: int = 0
    shards_rewritten: int = 0
    journals_completed: int = 0
    removed: dict[str, int] = field(default_factory=dict)  # entry kind → samples removed

    def as_dict(self) -> dict:
        return {"shards_checked": self.shards_checked, "shards_rewritten": self.shards_rewritten,
                "journals_completed": self.journals_completed, "removed": dict(sorted(self.removed.items())),
                "removed_total": sum(self.removed.values())}


def pending_dir(root: str) -> str:
    return join(applied_lists_dir(root), "pending")


def _staged(path: str) -> str:
    folder, name = path.rsplit("/", 1) if "/" in path else ("", path)
    return join(folder, f".{name}.takedown") if folder else f".{name}.takedown"


def complete_pending_rewrites(root: str) -> int:
    """Finish every rewrite whose journal was written (step 3 above); return how many."""
    journals = json_files(pending_dir(root))
    for journal_path in journals:
        fs, p = filesystem(journal_path)
        with fs.open(p, "r") as f:
            journal = json.load(f)
        commit_rewrite(OutputLayout(root), journal, journal_path)
    return len(journals)


def commit_rewrite(layout: OutputLayout, journal: dict, journal_path: str) -> None:
    """Step 3: move the staged files into place (a file already moved by a killed run is skipped), then the
    manifest entry, then drop the journal. Rerunnable at every point."""
    shard_id = journal["manifest"]["shard_id"]
    for target in (layout.rejects_path(shard_id), layout.shard_path(shard_id)):
        if exists(_staged(target)):
            replace(_staged(target), target)
    write_manifest_entry(layout.manifest_path(shard_id), journal["manifest"])
    fs, p = filesystem(journal_path)
    fs.rm(p)


def remove_taken_down(root: str, takedown: TakedownList, radius: int, run_id: str) -> TakedownReport:
    """Rewrite every complete shard of `root` holding a sample `takedown` matches (see the module docstring)."""
    layout = OutputLayout(root)
    report = TakedownReport(journals_completed=complete_pending_rewrites(root))
    for entry in complete_shards(layout):
        report.shards_checked += 1
        path = layout.shard_path(entry["shard_id"])
        matches = takedown.table_matches(read_shard(path, columns=MATCH_COLUMNS), radius)
        if not any(m is not None for m in matches):
            continue
        removed = _rewrite_shard(layout, entry, matches, run_id)
        report.shards_rewritten += 1
        for kind, n in removed.items():
            report.removed[kind] = report.removed.get(kind, 0) + n
    return report


def _rewrite_shard(layout: OutputLayout, entry: dict, matches: list, run_id: str) -> dict[str, int]:
    shard_id = entry["shard_id"]
    shard = read_shard(layout.shard_path(shard_id))
    keep = pa.array([m is None for m in matches], pa.bool_())
    gone = shard.filter(pc.invert(keep)).select(["sample_id", "source_url", "bbox"]).to_pylist()
    reasons = [m for m in matches if m is not None]
    removed = [Reject(STAGE, match.kind, url=row["source_url"], sample_id=row["sample_id"], detail=str(match),
                      bbox=tuple(row["bbox"])) for row, match in zip(gone, reasons)]
    old_rejects = read_parquet(layout.rejects_path(shard_id)) if exists(layout.rejects_path(shard_id)) else None
    new_rejects = rejects_table(removed, shard_id, run_id)
    if old_rejects is not None:
        new_rejects = pa.concat_tables([old_rejects.cast(new_rejects.schema), new_rejects])
    staged_shard, staged_rejects = _staged(layout.shard_path(shard_id)), _staged(layout.rejects_path(shard_id))
    written = write_shard(shard.filter(keep), staged_shard)
    write_parquet_atomic(new_rejects, staged_rejects)
    manifest = {**entry, **written, "run_id": run_id, "rejects": new_rejects.num_rows,
                "created_at": utc_now().isoformat()}
    journal = {"manifest": manifest}  # the staged files' names follow from the shard id (`_staged`)
    journal_path = join(pending_dir(layout.root), f"{shard_id}.json")
    with atomic_write(journal_path, "w") as f:
        f.write(json.dumps(journal, sort_keys=True))
    commit_rewrite(layout, journal, journal_path)
    return dict(Counter(m.kind for m in reasons))
