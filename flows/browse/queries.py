"""The catalog queries behind the pages. Values from the request are bound as parameters, never pasted into SQL.

The samples grid pages with a keyset cursor (shard_id, rows of that shard already shown): the views read shards
in shard id order, `shard_id >= ?` lets DuckDB skip earlier shards' row groups by their statistics, and the
OFFSET never reaches past one shard, so a page costs the same at row 5M as at row 0.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb

from storage.records import STAGES
from storage.stats import WORD_PATTERN

SAMPLE_COLUMNS = "sample_id, shard_id, caption1, caption2, template_id, caption_model, width, height"


@dataclass(frozen=True)
class SampleFilter:
    words: tuple[str, ...] = ()  # every word must be one of the captions' words
    template: str | None = None
    caption_model: str | None = None
    shard: str | None = None
    run: str | None = None

    @staticmethod
    def words_of(text: str) -> tuple[str, ...]:
        """The words of a search text, as the caption statistics count words."""
        return tuple(dict.fromkeys(re.findall(WORD_PATTERN, text.lower())))

    def sql(self) -> tuple[list[str], list]:
        """WHERE conditions and their parameters."""
        conditions, params = [], []
        if self.words:
            conditions.append(f"list_has_all(regexp_extract_all(lower(caption1 || ' ' || caption2), "
                              f"'{WORD_PATTERN}'), ?::VARCHAR[])")
            params.append(list(self.words))
        if self.template:
            conditions.append("list_contains(string_split(template_id, ','), ?)")
            params.append(self.template)
        for column, value in (("caption_model", self.caption_model), ("shard_id", self.shard), ("run_id", self.run)):
            if value:
                conditions.append(f"{column} = ?")
                params.append(value)
        return conditions, params


@dataclass(frozen=True)
class Cursor:
    shard: str | None = None  # first shard of the page (None: the first shard)
    skip: int = 0  # matching rows of that shard shown on earlier pages


def sample_page(con: duckdb.DuckDBPyConnection, where: SampleFilter, cursor: Cursor, size: int
                ) -> tuple[list[dict], Cursor | None]:
    """One page of samples in catalog order and the cursor of the next page (None on the last)."""
    conditions, params = where.sql()
    if cursor.shard:
        conditions.append("shard_id >= ?")
        params.append(cursor.shard)
    sql = f"SELECT {SAMPLE_COLUMNS} FROM samples {_where(conditions)} LIMIT ? OFFSET ?"
    rows = _dicts(con.execute(sql, params + [size + 1, cursor.skip]))
    if len(rows) <= size:
        return rows, None
    rows = rows[:size]
    last = rows[-1]["shard_id"]
    shown = sum(1 for r in rows if r["shard_id"] == last)
    return rows, Cursor(last, shown + (cursor.skip if last == cursor.shard else 0))


def sample(con: duckdb.DuckDBPyConnection, shard_id: str, sample_id: str) -> dict | None:
    """Every column of one sample but its image (None when there is none)."""
    rows = _dicts(con.execute("SELECT * EXCLUDE (image) FROM samples WHERE shard_id = ? AND sample_id = ?",
                              [shard_id, sample_id]))
    return rows[0] if rows else None


def crop_jpeg(con: duckdb.DuckDBPyConnection, shard_id: str, sample_id: str) -> bytes | None:
    row = con.execute("SELECT image FROM samples WHERE shard_id = ? AND sample_id = ?", [shard_id, sample_id]).fetchone()
    return row[0] if row else None


def samples_by_id(con: duckdb.DuckDBPyConnection, sample_ids: list[str]) -> dict[str, dict]:
    """sample_id → its grid columns, for search hits."""
    rows = _dicts(con.execute(f"SELECT {SAMPLE_COLUMNS} FROM samples WHERE list_contains(?::VARCHAR[], sample_id)",
                              [sample_ids]))
    return {r["sample_id"]: r for r in rows}


def near_duplicates(con: duckdb.DuckDBPyConnection, sample_id: str) -> list[dict]:
    """The crops dedup rejected as copies of this sample (their reject detail names the kept sample)."""
    return _dicts(con.execute(
        "SELECT reason, url, sample_id, shard_id FROM rejects WHERE stage = 'dedup' AND detail = ? ORDER BY shard_id",
        [sample_id]))


def near_duplicate_thumbnails(con: duckdb.DuckDBPyConnection, sample_id: str) -> list[dict]:
    return _dicts(con.execute(
        "SELECT shard_id, reject_row, reason FROM reject_thumbnails WHERE stage = 'dedup' AND detail = ? "
        "ORDER BY shard_id, reject_row", [sample_id]))


def crop_margin(con: duckdb.DuckDBPyConnection, run_id: str) -> float | None:
    """The detect stage's crop_margin recorded with the run that made a sample (None when not recorded)."""
    row = con.execute("SELECT json_extract(config, '$.detect.crop_margin')::DOUBLE FROM runs WHERE run_id = ?",
                      [run_id]).fetchone()
    return row[0] if row else None


def reject_reasons(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every (stage, reason) in pipeline stage order, with its count, a few measured values and thumbnails kept."""
    rows = _dicts(con.execute("""
        WITH counted AS (
            SELECT stage, reason, count(*) AS count,
                   list(detail ORDER BY detail) FILTER (WHERE detail IS NOT NULL)[1:3] AS details
            FROM rejects GROUP BY stage, reason),
        thumbs AS (SELECT stage, reason, count(*) AS thumbnails FROM reject_thumbnails GROUP BY stage, reason)
        SELECT counted.*, coalesce(thumbs.thumbnails, 0) AS thumbnails
        FROM counted LEFT JOIN thumbs USING (stage, reason)"""))
    return sorted(rows, key=lambda r: (_stage_order(r["stage"]), -r["count"], r["reason"]))


def reject_thumbnails(con: duckdb.DuckDBPyConnection, stage: str, reason: str, shard: str | None, limit: int
                      ) -> list[dict]:
    conditions, params = ["stage = ?", "reason = ?"], [stage, reason]
    if shard:
        conditions.append("shard_id = ?")
        params.append(shard)
    return _dicts(con.execute(
        f"SELECT shard_id, reject_row, detail, width, height FROM reject_thumbnails {_where(conditions)} "
        "ORDER BY shard_id, reject_row LIMIT ?", params + [limit]))


def reject_count(con: duckdb.DuckDBPyConnection, stage: str, reason: str) -> int:
    return con.execute("SELECT count(*) FROM rejects WHERE stage = ? AND reason = ?", [stage, reason]).fetchone()[0]


def thumbnail_jpeg(con: duckdb.DuckDBPyConnection, shard_id: str, reject_row: int) -> bytes | None:
    row = con.execute("SELECT image FROM reject_thumbnails WHERE shard_id = ? AND reject_row = ?",
                      [shard_id, reject_row]).fetchone()
    return row[0] if row else None


def thumbnail_cost(con: duckdb.DuckDBPyConnection) -> dict:
    """What the kept reject thumbnails cost: count, shards with any, JPEG bytes per such shard (mean, max)."""
    count, shards, mean, peak = con.execute("""
        SELECT coalesce(sum(n), 0), count(*), coalesce(avg(bytes), 0), coalesce(max(bytes), 0) FROM (
            SELECT shard_id, count(*) AS n, sum(octet_length(image)) AS bytes FROM reject_thumbnails GROUP BY shard_id)
    """).fetchone()
    return {"thumbnails": int(count), "shards": shards, "mean_bytes_per_shard": round(mean), "max_bytes_per_shard": peak}


def rejects_by_stage(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Rejects per stage, in pipeline order: the build funnel's losses."""
    rows = con.execute("SELECT stage, count(*) FROM rejects GROUP BY stage").fetchall()
    return [{"stage": stage, "count": n} for stage, n in sorted(rows, key=lambda r: _stage_order(r[0]))]


def runs(con: duckdb.DuckDBPyConnection) -> list[dict]:
    return _dicts(con.execute("""
        SELECT run_id, flow, status, started_at, finished_at,
               json_extract(summary, '$.urls')::BIGINT AS urls,
               json_extract(summary, '$.downloaded')::BIGINT AS downloaded,
               json_extract(summary, '$.persons')::BIGINT AS persons,
               json_extract(summary, '$.unique')::BIGINT AS "unique",
               json_extract(summary, '$.kept')::BIGINT AS kept
        FROM runs ORDER BY started_at, run_id"""))


def facets(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """The choices of the samples filter: shards, runs, caption models, templates (read once per server)."""
    def column(sql: str) -> list[str]:
        return [r[0] for r in con.execute(sql).fetchall()]

    return {
        "shards": column("SELECT shard_id FROM manifest WHERE status = 'complete' ORDER BY shard_id"),
        "runs": column("SELECT run_id FROM manifest UNION SELECT run_id FROM runs ORDER BY run_id"),
        "caption_models": column("SELECT DISTINCT caption_model FROM samples ORDER BY caption_model"),
        "templates": column("SELECT DISTINCT unnest(string_split(template_id, ',')) AS t FROM samples "
                            "WHERE template_id <> '' ORDER BY t"),
    }


def _stage_order(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def _where(conditions: list[str]) -> str:
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""


def _dicts(result: duckdb.DuckDBPyConnection) -> list[dict]:
    names = [d[0] for d in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]
