"""`gadms stats` from per-shard counts prints exactly what the queries over every caption printed before.

The oracle is the previous implementation, kept here only as the reference: its views (read_parquet over every
shard with union_by_name) and its queries (five scans of the caption text, exact quantiles over every length),
run by plain DuckDB on the root's files.
"""
import hashlib
import json
import random
import re
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from storage.catalog import connect, memory_catalog, refresh
from storage.layout import OutputLayout
from storage.stats import COLOUR_WORDS, GARMENT_WORDS, caption_stats, format_stats, quantile_cont
from storage.shards import commit_shard, supersede_rejects
from tests.storage_fixtures import captions_for, crop, rejects

_CAPTIONS = """
    WITH captions AS (
        SELECT caption1 AS caption FROM samples WHERE caption1 <> ''
        UNION ALL
        SELECT caption2 FROM samples WHERE caption2 <> ''
    )"""
_WORDS = _CAPTIONS + " SELECT word FROM (SELECT unnest(regexp_extract_all(lower(caption), '[a-z]+(?:-[a-z]+)*')) AS word FROM captions)"
_LENGTHS = _CAPTIONS + " SELECT len(regexp_extract_all(caption, '\\S+')) AS words FROM captions"
_TEMPLATES = ("SELECT unnest(string_split(template_id, ',')) AS template FROM samples "
              "WHERE template_id IS NOT NULL AND template_id <> ''")


def oracle_stats(root: Path, top: int, histogram_bin: int = 5) -> dict:
    """storage.stats.caption_stats as it was: every number from scans of the samples and rejects."""
    con = duckdb.connect()
    con.execute(f"CREATE VIEW samples AS SELECT * FROM read_parquet('{root}/shards/*.parquet', union_by_name = true)")
    con.execute(f"CREATE VIEW rejects AS SELECT * FROM read_parquet('{root}/rejects/*.parquet', union_by_name = true)")
    con.execute(f"CREATE VIEW manifest AS SELECT * FROM read_json('{root}/manifest/*.json')")
    rows = lambda sql, params=None: con.execute(sql, params or []).fetchall()  # noqa: E731
    samples, = con.execute("SELECT count(*) FROM samples").fetchone()
    shards, = con.execute("SELECT count(*) FROM manifest WHERE status = 'complete'").fetchone()
    captions, = con.execute("SELECT coalesce(sum((caption1 <> '')::INT + (caption2 <> '')::INT), 0) FROM samples").fetchone()
    count, lo, hi, mean, median, p10, p90 = con.execute(
        f"""SELECT count(*), min(words), max(words), avg(words), quantile_cont(words, 0.5),
                   quantile_cont(words, 0.1), quantile_cont(words, 0.9) FROM ({_LENGTHS})""").fetchone()
    histogram = rows(f"SELECT (words // ?) * ? AS lo, count(*) FROM ({_LENGTHS}) GROUP BY lo ORDER BY lo",
                     [histogram_bin, histogram_bin])
    vocabulary, words_total = con.execute(f"SELECT count(DISTINCT word), count(*) FROM ({_WORDS})").fetchone()

    def top_words(vocab):
        return [{"word": w, "count": n} for w, n in rows(
            f"""SELECT word, count(*) AS n FROM ({_WORDS}) WHERE list_contains(?::VARCHAR[], word)
                GROUP BY word ORDER BY n DESC, word LIMIT ?""", [list(vocab), top])]

    templates = rows(f"SELECT template, count(*) AS n FROM ({_TEMPLATES}) GROUP BY template "
                     "ORDER BY n DESC, template LIMIT ?", [top])
    templates_used, = con.execute(f"SELECT count(DISTINCT template) FROM ({_TEMPLATES})").fetchone()
    reject_rows = rows("SELECT stage, reason, count(*) AS n FROM rejects GROUP BY stage, reason "
                       "ORDER BY stage, n DESC, reason")
    domains = rows("""SELECT regexp_extract(source_url, '^[A-Za-z][A-Za-z0-9+.-]*://([^/:?#]+)', 1) AS domain,
                             count(*) AS n FROM samples GROUP BY domain ORDER BY n DESC, domain LIMIT ?""", [top])
    backends = rows("""SELECT caption_backend, caption_model, count(*) AS n FROM samples
                       GROUP BY caption_backend, caption_model ORDER BY n DESC, caption_backend, caption_model""")
    stages: dict = {}
    for stage, reason, n in reject_rows:
        stages.setdefault(stage, {})[reason] = n
    return {
        "samples": samples, "shards": shards, "captions": captions,
        "captions_per_sample": round(captions / samples, 4) if samples else 0.0,
        "caption_length_words": {
            "count": count, "min": lo, "max": hi, "mean": round(mean, 4) if mean is not None else None,
            "median": median, "p10": p10, "p90": p90,
            "histogram": [{"from": int(b), "to": int(b) + histogram_bin - 1, "count": n} for b, n in histogram],
        },
        "vocabulary_size": vocabulary, "words_total": words_total,
        "top_colour_words": top_words(COLOUR_WORDS), "top_garment_words": top_words(GARMENT_WORDS),
        "templates_used": templates_used,
        "top_templates": [{"template_id": t, "count": n} for t, n in templates],
        "caption_backends": [{"backend": b, "model": m, "count": n} for b, m, n in backends],
        "rejects_by_stage": stages, "rejects_total": sum(n for _, _, n in reject_rows),
        "takedown_rejects": sum(n for stage, reason, n in reject_rows if stage == "takedown" or reason == "takedown"),
        "benchmark_overlap_rejects": sum(n for _, reason, n in reject_rows if reason == "benchmark_overlap"),
        "top_source_domains": [{"domain": d, "count": n} for d, n in domains],
    }


WORDS = ["red", "Black", "grey", "navy", "coat", "T-Shirt", "jeans", "boots", "bag", "woman", "man", "with",
         "long-haired", "and", "a", "in", "été", "naïve", "x--y", "-dash", "42", "blue,", "(shorts)", "ÀB"]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", "\u00a0", "\v", " \r\n "]


def random_caption(rng: random.Random) -> str:
    n = rng.choice([0, 1, 3, 7, 12, 20, 33, 60]) + rng.randrange(3)
    text = "".join(rng.choice(WORDS) + rng.choice(SEPARATORS) for _ in range(n))
    return rng.choice(["", " ", "\t"]) + text


def build_varied_root(root: Path, shards: int = 5, legacy: tuple[int, ...] = (), seed: int = 9) -> None:
    """Shards of random captions (odd whitespace, unicode, hyphens, empty caption2), templates, domains and
    rejects; the shards in `legacy` made to look as written before per-shard statistics and recorded schema
    versions existed (no statistics file, no schema_version or row_groups in the manifest, a rejects file without
    bbox)."""
    rng = random.Random(seed)
    layout = OutputLayout(str(root))
    number = 0
    for s in range(shards):
        crops, captions = [], []
        for _ in range(rng.randrange(1, 40)):
            c = crop(number, rng.choice(["a.example", "b.example:8080", "C.example", "a.example"]))
            number += 1
            template = rng.choice(["t001", "t002", "t002,t003", "t010", "", None])
            captions.append(captions_for(c, random_caption(rng) or "x", random_caption(rng), template))
            crops.append(c)
        reasons = [rng.choice([("crawl", "http_404"), ("crawl", "timeout"), ("detect", "no_person"),
                               ("dedup", "near_duplicate")]) for _ in range(rng.randrange(0, 9))]
        reasons += [("takedown", "url"), ("crawl", "takedown"), ("filter", "benchmark_overlap")][: s % 4]
        shard_id = f"shard-{s:05d}"
        commit_shard(layout, shard_id, "run-1", crops, captions, rejects(*reasons))
        if s in legacy:
            Path(layout.shard_stats_path(shard_id)).unlink()
            entry = json.loads(Path(layout.manifest_path(shard_id)).read_text())
            del entry["schema_version"], entry["row_groups"]
            Path(layout.manifest_path(shard_id)).write_text(json.dumps(entry))
            table = pq.read_table(layout.rejects_path(shard_id))
            pq.write_table(table.drop_columns(["bbox"]), layout.rejects_path(shard_id))


@pytest.mark.parametrize("legacy", [(), (1, 3), (0, 1, 2, 3, 4)], ids=["new", "mixed", "all-legacy"])
def test_stats_equal_the_previous_queries_exactly(tmp_path, capsys, legacy):
    root = tmp_path / "root"
    build_varied_root(root, legacy=legacy)
    catalog = refresh(str(root))
    expected = oracle_stats(root, top=50)
    assert any(expected["caption_length_words"][q] % 1 for q in ("median", "p10", "p90"))  # interpolated
    con = connect(catalog)
    try:
        # Counted from the statistics files where they exist, from the shards themselves where not.
        view, = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'shard_stats'").fetchone()
        shard = lambda folder: sorted(set(re.findall(rf"/{folder}/(shard-\d+)\.parquet", view)))  # noqa: E731
        assert shard("shard_stats") == [f"shard-{s:05d}" for s in range(5) if s not in legacy]
        assert shard("shards") == [f"shard-{s:05d}" for s in legacy]
        assert caption_stats(con, top=50) == expected
        assert caption_stats(con, top=3) == oracle_stats(root, top=3)
    finally:
        con.close()
    assert main(["stats", "--catalog", catalog]) == 0
    assert capsys.readouterr().out == format_stats(expected) + "\n"
    # The in-memory catalog (dataset card) counts from the same query over its tables.
    memory = memory_catalog(str(root), ["source_url", "caption1", "caption2", "caption_model", "caption_backend",
                                        "template_id"])
    assert caption_stats(memory, top=50) == expected


def test_stats_of_an_empty_root_equal_the_previous_queries(tmp_path):
    root = tmp_path / "root"
    (root / "manifest").mkdir(parents=True)
    con = connect(refresh(str(root)))
    stats = caption_stats(con)
    assert stats["samples"] == 0 and stats["caption_length_words"] == {
        "count": 0, "min": None, "max": None, "mean": None, "median": None, "p10": None, "p90": None, "histogram": []}
    assert stats["words_total"] == 0 and stats["top_colour_words"] == [] and stats["rejects_total"] == 0


def test_each_shard_has_its_statistics_file_with_its_own_counts(tmp_path):
    root = tmp_path / "root"
    build_varied_root(root, shards=2)
    layout = OutputLayout(str(root))
    for shard_id in ("shard-00000", "shard-00001"):
        stats = pq.read_table(layout.shard_stats_path(shard_id)).to_pylist()
        samples = pq.read_table(layout.shard_path(shard_id))
        assert [r["count"] for r in stats if r["statistic"] == "samples"] == [samples.num_rows]
        rejected = pq.read_table(layout.rejects_path(shard_id)).num_rows
        assert sum(r["count"] for r in stats if r["statistic"] == "reject") == rejected


@pytest.mark.parametrize("seed", range(20))
def test_quantile_from_a_histogram_is_duckdbs_quantile_cont(seed):
    rng = random.Random(seed)
    values = [rng.choice([0, 1, 2, 5, 9, 30, 31, 200]) + rng.randrange(4) for _ in range(rng.randrange(1, 300))]
    histogram = sorted({v: values.count(v) for v in values}.items())
    for q in (0.0, 0.1, 0.25, 0.5, 0.9, 0.99, 1.0):
        expected, = duckdb.execute("SELECT quantile_cont(v, ?) FROM (SELECT unnest(?::BIGINT[]) AS v)",
                                   [q, values]).fetchone()
        assert quantile_cont(histogram, q) == expected


def test_a_shard_rewritten_without_its_statistics_is_counted_from_the_shard(tmp_path):
    # As a rewrite that drops rows (a takedown) leaves it when it updates the manifest entry but not shard_stats/.
    root = tmp_path / "root"
    build_varied_root(root, shards=3)
    layout = OutputLayout(str(root))
    path = Path(layout.shard_path("shard-00001"))
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path, row_group_size=256)
    data = path.read_bytes()
    manifest = Path(layout.manifest_path("shard-00001"))
    entry = json.loads(manifest.read_text())
    entry.update(rows=table.num_rows - 1, row_groups=[table.num_rows - 1], bytes=len(data),
                 sha256=hashlib.sha256(data).hexdigest())
    manifest.write_text(json.dumps(entry))
    con = connect(refresh(str(root)))
    try:
        stats = caption_stats(con, top=50)
    finally:
        con.close()
    assert stats == oracle_stats(root, top=50)
    assert stats["samples"] == sum(pq.read_metadata(p).num_rows for p in (root / "shards").glob("*.parquet"))


def test_superseded_rejects_are_counted_from_the_rejects_file(tmp_path):
    # `gadms build --retry-failed` drops a shard's superseded reject rows and lowers its manifest count; the shard's
    # statistics file, counted before, no longer matches that count.
    root = tmp_path / "root"
    build_varied_root(root, shards=3)
    layout = OutputLayout(str(root))
    rejected = pq.read_table(layout.rejects_path("shard-00002")).to_pylist()
    assert rejected
    dropped = supersede_rejects(layout, "shard-00002", {(rejected[0]["stage"], rejected[0]["url"], rejected[0]["reason"])})
    assert dropped == 1
    con = connect(refresh(str(root)))
    try:
        stats = caption_stats(con, top=50)
    finally:
        con.close()
    assert stats == oracle_stats(root, top=50)
    assert stats["rejects_total"] == sum(pq.read_metadata(p).num_rows for p in (root / "rejects").glob("*.parquet"))
