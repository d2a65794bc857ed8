"""Caption and curation statistics over a catalog, as users of a captioned person dataset ask for them.

Every number is summed from per-shard counts (STATISTICS_SQL; the catalog's shard_stats view), so `gadms stats`
reads a few rows per shard, not the captions; values that come from outside (word lists, limits) are bound as
parameters, never pasted into SQL.
"""
from __future__ import annotations

import math

import duckdb
import pyarrow as pa

from storage.schema import SHARD_STATS_SCHEMA

# Attribute vocabularies counted by `top attribute words`. Single words, lower case.
COLOUR_WORDS = (
    "black", "white", "grey", "gray", "red", "blue", "green", "yellow", "orange", "pink", "purple", "brown",
    "beige", "navy", "khaki", "dark", "light", "silver", "gold", "maroon", "cyan", "violet", "tan", "cream",
)
GARMENT_WORDS = (
    "shirt", "t-shirt", "tshirt", "blouse", "jacket", "coat", "hoodie", "sweater", "top", "vest", "dress",
    "skirt", "pants", "trousers", "jeans", "shorts", "leggings", "suit", "shoes", "sneakers", "boots",
    "sandals", "heels", "hat", "cap", "backpack", "bag", "glasses", "sunglasses", "scarf", "belt", "socks",
)

# Words are maximal runs of letters (and inner hyphens), lower-cased.
WORD_PATTERN = "[a-z]+(?:-[a-z]+)*"
SOURCE_DOMAIN_PATTERN = "^[A-Za-z][A-Za-z0-9+.-]*://([^/:?#]+)"

# The counts every statistic below is computed from, over relations of samples and rejects: one row per
# (statistic, key, key2) with its count. They add up across shards, so storage.shards.commit_shard writes each
# shard's rows beside it (SHARD_STATS_SCHEMA) and the catalog's shard_stats view sums the files; a shard written
# before those files existed is counted by this same query over its Parquet files.
#   samples, captions                 (no key): samples, non-empty captions
#   caption_length  key = words       a caption's length in whitespace-separated words (decimal)
#   word            key = word        words of the captions (WORD_PATTERN over the lower-cased caption)
#   template        key = template id (a two-template sample's comma-joined ids count once each)
#   source_domain   key = host of source_url
#   caption_backend key = backend, key2 = model
#   reject          key = stage, key2 = reason
STATISTICS_SQL = """
    WITH captions AS (
        SELECT caption1 AS caption FROM {samples} WHERE caption1 <> ''
        UNION ALL
        SELECT caption2 FROM {samples} WHERE caption2 <> ''
    )
    SELECT 'samples' AS statistic, NULL::VARCHAR AS key, NULL::VARCHAR AS key2, count(*) AS count FROM {samples}
    UNION ALL SELECT 'captions', NULL, NULL, count(*) FROM captions
    UNION ALL SELECT 'caption_length', len(regexp_extract_all(caption, '\\S+'))::VARCHAR AS words, NULL, count(*)
        FROM captions GROUP BY words
    UNION ALL SELECT 'word', word, NULL, count(*) FROM (
        SELECT unnest(regexp_extract_all(lower(caption), '{word}')) AS word FROM captions) GROUP BY word
    UNION ALL SELECT 'template', template, NULL, count(*) FROM (
        SELECT unnest(string_split(template_id, ',')) AS template FROM {samples}
        WHERE template_id IS NOT NULL AND template_id <> '') GROUP BY template
    UNION ALL SELECT 'source_domain', regexp_extract(source_url, '{domain}', 1) AS domain, NULL, count(*)
        FROM {samples} GROUP BY domain
    UNION ALL SELECT 'caption_backend', caption_backend, caption_model, count(*) FROM {samples}
        GROUP BY caption_backend, caption_model
    UNION ALL SELECT 'reject', stage, reason, count(*) FROM {rejects} GROUP BY stage, reason
"""


def statistics_sql(samples: str, rejects: str) -> str:
    """STATISTICS_SQL over the given relations (SQL table expressions; never user input)."""
    return STATISTICS_SQL.format(samples=samples, rejects=rejects, word=WORD_PATTERN, domain=SOURCE_DOMAIN_PATTERN)


def shard_statistics(samples: pa.Table, rejects: pa.Table) -> pa.Table:
    """The statistics rows (SHARD_STATS_SCHEMA) of one shard's samples and rejects tables."""
    con = duckdb.connect()
    try:
        con.register("shard_samples", samples)
        con.register("shard_rejects", rejects)
        table = con.sql(statistics_sql("shard_samples", "shard_rejects")
                        + " ORDER BY statistic, key, key2").to_arrow_table()
    finally:
        con.close()
    return table.cast(SHARD_STATS_SCHEMA)


def _merged_statistics(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A private in-memory DuckDB holding the catalog's statistics summed over shards as table `merged`: one
    scan of the per-shard rows, whose size is the number of distinct keys (words, domains, ...), not of samples."""
    merged = con.sql("SELECT statistic, key, key2, sum(count)::BIGINT AS count FROM shard_stats "
                     "GROUP BY statistic, key, key2").to_arrow_table()
    private = duckdb.connect()
    private.register("merged", merged)
    return private


def _length_histogram(merged: duckdb.DuckDBPyConnection) -> list[tuple[int, int]]:
    """(words, captions of that length), ascending."""
    rows = merged.execute("SELECT key::BIGINT AS words, count FROM merged WHERE statistic = 'caption_length' "
                          "ORDER BY words").fetchall()
    return [(int(w), int(n)) for w, n in rows]


def _binned(lengths: list[tuple[int, int]], bin_words: int) -> list[dict]:
    bins: dict[int, int] = {}
    for words, n in lengths:
        bins[(words // bin_words) * bin_words] = bins.get((words // bin_words) * bin_words, 0) + n
    return [{"from": lo, "to": lo + bin_words - 1, "count": n} for lo, n in sorted(bins.items())]


def quantile_cont(lengths: list[tuple[int, int]], q: float) -> float | None:
    """DuckDB's quantile_cont of the values a (value, count) histogram holds, exactly as DuckDB interpolates
    (position (n - 1) * q between the values at its floor and ceiling), without expanding the values."""
    total = sum(n for _, n in lengths)
    if not total:
        return None
    position = (total - 1) * q
    below, above = math.floor(position), math.ceil(position)

    def value_at(rank: int) -> float:
        seen = 0
        for value, n in lengths:
            seen += n
            if rank < seen:
                return float(value)
        raise AssertionError("rank beyond the histogram")

    lo = value_at(below)
    if above == below:
        return lo
    return lo + (value_at(above) - lo) * (position - below)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[tuple]:
    return con.execute(sql, params or []).fetchall()


def caption_length_histogram(con: duckdb.DuckDBPyConnection, bin_words: int = 5) -> list[dict]:
    """Caption lengths in words (both captions of every sample), in bins of `bin_words`."""
    merged = _merged_statistics(con)
    try:
        return _binned(_length_histogram(merged), bin_words)
    finally:
        merged.close()


def caption_stats(con: duckdb.DuckDBPyConnection, top: int = 10, histogram_bin: int = 5) -> dict:
    """All statistics as one JSON-ready dict, from the catalog's shard_stats (summed once, see STATISTICS_SQL)."""
    (shards,), = con.execute("SELECT count(*) FROM manifest WHERE status = 'complete'").fetchall()
    merged = _merged_statistics(con)
    try:
        return _caption_stats(merged, shards, top, histogram_bin)
    finally:
        merged.close()


def _caption_stats(merged: duckdb.DuckDBPyConnection, shards: int, top: int, histogram_bin: int) -> dict:
    def total(statistic: str) -> int:
        n, = merged.execute("SELECT coalesce(sum(count), 0) FROM merged WHERE statistic = ?", [statistic]).fetchone()
        return int(n)

    def top_keys(statistic: str, vocab: tuple[str, ...] | None = None) -> list[tuple[str, int]]:
        where = "statistic = ?" + (" AND list_contains(?::VARCHAR[], key)" if vocab is not None else "")
        params = [statistic] + ([list(vocab)] if vocab is not None else []) + [top]
        return _rows(merged, f"SELECT key, count FROM merged WHERE {where} ORDER BY count DESC, key LIMIT ?", params)

    samples, captions = total("samples"), total("captions")
    lengths = _length_histogram(merged)
    count = sum(n for _, n in lengths)
    vocabulary, = merged.execute("SELECT count(*) FROM merged WHERE statistic = 'word'").fetchone()
    templates_used, = merged.execute("SELECT count(*) FROM merged WHERE statistic = 'template'").fetchone()
    rejects = _rows(merged, "SELECT key, key2, count FROM merged WHERE statistic = 'reject' "
                            "ORDER BY key, count DESC, key2")
    backends = _rows(merged, "SELECT key, key2, count FROM merged WHERE statistic = 'caption_backend' "
                             "ORDER BY count DESC, key, key2")
    reject_stages: dict[str, dict[str, int]] = {}
    for stage, reason, n in rejects:
        reject_stages.setdefault(stage, {})[reason] = n
    # Removed by `gadms takedown` (stage takedown) or never fetched / kept under a takedown list (reason takedown).
    takedown = sum(n for stage, reason, n in rejects if stage == "takedown" or reason == "takedown")
    benchmark_overlap = sum(n for _, reason, n in rejects if reason == "benchmark_overlap")
    mean = sum(w * n for w, n in lengths) / count if count else None
    return {
        "samples": samples,
        "shards": shards,
        "captions": captions,
        "captions_per_sample": round(captions / samples, 4) if samples else 0.0,
        "caption_length_words": {
            "count": count,
            "min": lengths[0][0] if lengths else None,
            "max": lengths[-1][0] if lengths else None,
            "mean": round(mean, 4) if mean is not None else None,
            "median": quantile_cont(lengths, 0.5),
            "p10": quantile_cont(lengths, 0.1),
            "p90": quantile_cont(lengths, 0.9),
            "histogram": _binned(lengths, histogram_bin),
        },
        "vocabulary_size": vocabulary,
        "words_total": total("word"),
        "top_colour_words": [{"word": w, "count": n} for w, n in top_keys("word", COLOUR_WORDS)],
        "top_garment_words": [{"word": w, "count": n} for w, n in top_keys("word", GARMENT_WORDS)],
        "templates_used": templates_used,
        "top_templates": [{"template_id": t, "count": n} for t, n in top_keys("template")],
        "caption_backends": [{"backend": b, "model": m, "count": n} for b, m, n in backends],
        "rejects_by_stage": reject_stages,
        "rejects_total": sum(n for _, _, n in rejects),
        "takedown_rejects": takedown,
        "benchmark_overlap_rejects": benchmark_overlap,
        "top_source_domains": [{"domain": d, "count": n} for d, n in top_keys("source_domain")],
    }


def format_stats(stats: dict) -> str:
    """The human-readable report of `gadms stats`."""
    length = stats["caption_length_words"]
    lines = [
        f"samples              {stats['samples']}",
        f"shards               {stats['shards']}",
        f"captions             {stats['captions']} ({stats['captions_per_sample']} per sample)",
        f"vocabulary           {stats['vocabulary_size']} distinct words of {stats['words_total']}",
        f"caption length       min {length['min']}  p10 {length['p10']}  median {length['median']}  "
        f"mean {length['mean']}  p90 {length['p90']}  max {length['max']} (words)",
    ]
    if length["histogram"]:
        peak = max(b["count"] for b in length["histogram"])
        lines.append("length histogram")
        for b in length["histogram"]:
            bar = "#" * max(1, round(40 * b["count"] / peak))
            lines.append(f"  {b['from']:>3}-{b['to']:<3} {b['count']:>8}  {bar}")
    for title, key in (("top colours", "top_colour_words"), ("top garments", "top_garment_words")):
        words = ", ".join(f"{w['word']} {w['count']}" for w in stats[key]) or "-"
        lines.append(f"{title:<20} {words}")
    templates = ", ".join(f"{t['template_id']} {t['count']}" for t in stats["top_templates"]) or "-"
    lines.append(f"templates used       {stats['templates_used']} (top: {templates})")
    for b in stats["caption_backends"]:
        lines.append(f"captioner            {b['backend']} / {b['model']}: {b['count']}")
    lines.append(f"rejects              {stats['rejects_total']}")
    lines.append(f"  takedown {stats['takedown_rejects']}, benchmark_overlap {stats['benchmark_overlap_rejects']}")
    for stage, reasons in stats["rejects_by_stage"].items():
        lines.append(f"  {stage:<10} " + ", ".join(f"{r} {n}" for r, n in reasons.items()))
    lines.append("top source domains   " + (", ".join(f"{d['domain']} {d['count']}" for d in stats["top_source_domains"]) or "-"))
    return "\n".join(lines)
