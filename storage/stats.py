"""Caption and curation statistics over a catalog, as users of a captioned person dataset ask for them.

Every query reads the catalog's views; values that come from outside (word lists, limits) are bound as
parameters, never pasted into SQL.
"""
from __future__ import annotations

import duckdb

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
_WORDS_OF_CAPTIONS = f"""
    WITH captions AS (
        SELECT caption1 AS caption FROM samples WHERE caption1 <> ''
        UNION ALL
        SELECT caption2 FROM samples WHERE caption2 <> ''
    )
    SELECT word FROM (
        SELECT unnest(regexp_extract_all(lower(caption), '{WORD_PATTERN}')) AS word FROM captions
    )
"""

_CAPTION_LENGTHS = """
    WITH captions AS (
        SELECT caption1 AS caption FROM samples WHERE caption1 <> ''
        UNION ALL
        SELECT caption2 FROM samples WHERE caption2 <> ''
    )
    SELECT len(regexp_extract_all(caption, '\\S+')) AS words FROM captions
"""

# A sample whose two captions followed different templates stores both ids comma-joined ("t0058,t0010").
_TEMPLATES = """
    SELECT unnest(string_split(template_id, ',')) AS template FROM samples
    WHERE template_id IS NOT NULL AND template_id <> ''
"""


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[tuple]:
    return con.execute(sql, params or []).fetchall()


def caption_length_histogram(con: duckdb.DuckDBPyConnection, bin_words: int = 5) -> list[dict]:
    """Caption lengths in words (both captions of every sample), in bins of `bin_words`."""
    rows = _rows(
        con,
        f"""SELECT (words // ?) * ? AS lo, count(*) FROM ({_CAPTION_LENGTHS}) GROUP BY lo ORDER BY lo""",
        [bin_words, bin_words],
    )
    return [{"from": int(b), "to": int(b) + bin_words - 1, "count": n} for b, n in rows]


def caption_stats(con: duckdb.DuckDBPyConnection, top: int = 10, histogram_bin: int = 5) -> dict:
    """All statistics as one JSON-ready dict."""
    samples, = con.execute("SELECT count(*) FROM samples").fetchone()
    shards, = con.execute("SELECT count(*) FROM manifest WHERE status = 'complete'").fetchone()
    captions, = con.execute(
        "SELECT coalesce(sum((caption1 <> '')::INT + (caption2 <> '')::INT), 0) FROM samples"
    ).fetchone()
    length = con.execute(
        f"""SELECT count(*), min(words), max(words), avg(words), quantile_cont(words, 0.5),
                   quantile_cont(words, 0.1), quantile_cont(words, 0.9)
            FROM ({_CAPTION_LENGTHS})"""
    ).fetchone()
    vocabulary, words_total = con.execute(f"SELECT count(DISTINCT word), count(*) FROM ({_WORDS_OF_CAPTIONS})").fetchone()

    def top_words(vocab: tuple[str, ...]) -> list[dict]:
        rows = _rows(
            con,
            f"""SELECT word, count(*) AS n FROM ({_WORDS_OF_CAPTIONS})
                WHERE list_contains(?::VARCHAR[], word) GROUP BY word ORDER BY n DESC, word LIMIT ?""",
            [list(vocab), top],
        )
        return [{"word": w, "count": n} for w, n in rows]

    templates = _rows(con, f"SELECT template, count(*) AS n FROM ({_TEMPLATES}) GROUP BY template "
                           "ORDER BY n DESC, template LIMIT ?", [top])
    templates_used, = con.execute(f"SELECT count(DISTINCT template) FROM ({_TEMPLATES})").fetchone()
    rejects = _rows(
        con, "SELECT stage, reason, count(*) AS n FROM rejects GROUP BY stage, reason ORDER BY stage, n DESC, reason"
    )
    domains = _rows(
        con,
        """SELECT regexp_extract(source_url, '^[A-Za-z][A-Za-z0-9+.-]*://([^/:?#]+)', 1) AS domain, count(*) AS n
           FROM samples GROUP BY domain ORDER BY n DESC, domain LIMIT ?""",
        [top],
    )
    backends = _rows(
        con,
        """SELECT caption_backend, caption_model, count(*) AS n FROM samples
           GROUP BY caption_backend, caption_model ORDER BY n DESC, caption_backend, caption_model""",
    )
    reject_stages: dict[str, dict[str, int]] = {}
    for stage, reason, n in rejects:
        reject_stages.setdefault(stage, {})[reason] = n
    # Removed by `gadms takedown` (stage takedown) or never fetched / kept under a takedown list (reason takedown).
    takedown = sum(n for stage, reason, n in rejects if stage == "takedown" or reason == "takedown")
    benchmark_overlap = sum(n for _, reason, n in rejects if reason == "benchmark_overlap")
    count, lo, hi, mean, median, p10, p90 = length
    return {
        "samples": samples,
        "shards": shards,
        "captions": captions,
        "captions_per_sample": round(captions / samples, 4) if samples else 0.0,
        "caption_length_words": {
            "count": count,
            "min": lo,
            "max": hi,
            "mean": round(mean, 4) if mean is not None else None,
            "median": median,
            "p10": p10,
            "p90": p90,
            "histogram": caption_length_histogram(con, histogram_bin),
        },
        "vocabulary_size": vocabulary,
        "words_total": words_total,
        "top_colour_words": top_words(COLOUR_WORDS),
        "top_garment_words": top_words(GARMENT_WORDS),
        "templates_used": templates_used,
        "top_templates": [{"template_id": t, "count": n} for t, n in templates],
        "caption_backends": [{"backend": b, "model": m, "count": n} for b, m, n in backends],
        "rejects_by_stage": reject_stages,
        "rejects_total": sum(n for _, _, n in rejects),
        "takedown_rejects": takedown,
        "benchmark_overlap_rejects": benchmark_overlap,
        "top_source_domains": [{"domain": d, "count": n} for d, n in domains],
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
