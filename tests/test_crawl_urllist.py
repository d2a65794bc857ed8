"""URL lists in img2dataset's input formats, its folder rules, extra columns as source_meta, early column checks."""
from __future__ import annotations

import gzip
import json
import sys

import pandas
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.crawl import read_url_list
from curation.crawl.urllist import plan_ranges, read_range
from flows.cli import main
from storage.errors import GadmsError
from storage.records import UrlRecord

N = 5
URLS = [f"http://a.test/{i}.jpg" for i in range(N)]
CAPTIONS = [f"caption {i}" for i in range(N)]
EXPECTED = [UrlRecord(url, caption) for url, caption in zip(URLS, CAPTIONS)]


def write_list(path, fmt: str, extra: dict[str, list] | None = None) -> None:
    """A list the way img2dataset's tests/fixtures.py writes one: txt one URL per line; csv/tsv/parquet columns
    url, caption (and `extra`); json as pandas `to_json(orient="records")`; jsonl one record per line."""
    columns = {"url": URLS, "caption": CAPTIONS, **(extra or {})}
    records = [dict(zip(columns, values)) for values in zip(*columns.values())]
    opener = gzip.open if str(path).endswith(".gz") else open
    if fmt == "parquet":
        pq.write_table(pa.table(columns), path)
        return
    with opener(path, "wt", encoding="utf-8") as f:
        if fmt == "txt":
            f.write("".join(url + "\n" for url in URLS))
        elif fmt == "json":
            f.write(json.dumps(records))
        elif fmt == "jsonl":
            f.write("".join(json.dumps(r) + "\n" for r in records))
        else:
            sep = "\t" if fmt == "tsv" else ","
            f.write(sep.join(columns) + "\n" + "".join(sep.join(str(v) for v in r.values()) + "\n" for r in records))


@pytest.mark.parametrize("name", ["l.csv", "l.tsv", "l.json", "l.jsonl", "l.parquet", "l.csv.gz", "l.tsv.gz",
                                  "l.json.gz", "l.jsonl.gz"])
def test_every_format_reads_to_the_same_records(tmp_path, name):
    write_list(tmp_path / name, name.split(".")[1])
    assert list(read_url_list(tmp_path / name)) == EXPECTED


@pytest.mark.parametrize("name", ["l.txt", "l.csv", "l.tsv", "l.json", "l.jsonl", "l.parquet", "l.csv.gz",
                                  "l.txt.gz", "l.json.gz", "l.jsonl.gz"])
def test_ranges_read_back_the_whole_list_in_order(tmp_path, name):
    write_list(tmp_path / name, name.split(".")[1], extra={"k": list(range(N))})
    extra = () if name.startswith("l.txt") else ("k",)
    ranges = list(plan_ranges(tmp_path / name, 2, extra_columns=extra))
    assert [(r.start, r.stop) for r in ranges] == [(0, 2), (2, 4), (4, 5)]
    assert [record for r in ranges for record in read_range(r)] == list(read_url_list(tmp_path / name,
                                                                                    extra_columns=extra))
    assert [(r.start, r.stop) for r in plan_ranges(tmp_path / name, 2, max_rows=3)] == [(0, 2), (2, 3)]


def test_ranges_of_a_list_in_an_fsspec_store():
    import fsspec

    with fsspec.open("memory://ranges/a.jsonl", "w") as f:
        f.writelines(json.dumps({"url": url, "caption": caption}) + "\n" for url, caption in zip(URLS, CAPTIONS))
    ranges = list(plan_ranges("memory://ranges", 3))
    assert [r.path.startswith("memory://") and r.path.endswith("/ranges/a.jsonl") for r in ranges] == [True] * 2
    assert [record for r in ranges for record in read_range(r)] == EXPECTED


@pytest.mark.parametrize("name", ["l.jsonl", "l.parquet"])
def test_a_range_whose_rows_changed_since_planning_is_refused(tmp_path, monkeypatch, name):
    write_list(tmp_path / name, name.split(".")[1])
    planned = list(plan_ranges(tmp_path / name, 2))
    changed = [URLS[0], "http://a.test/changed.jpg", *URLS[2:]]  # a Parquet footer sees it: the column's max changes
    monkeypatch.setattr(sys.modules[__name__], "URLS", changed)
    write_list(tmp_path / name, name.split(".")[1])
    with pytest.raises(GadmsError, match=rf"{name}: rows 0-2 changed since this build planned them"):
        read_range(planned[0])


def test_plan_checks_a_parquet_url_column_before_reading_rows(tmp_path):
    pq.write_table(pa.table({"url": [1, 2]}), tmp_path / "int.parquet")
    with pytest.raises(GadmsError, match=r"int.parquet: url is int64, expected URL strings"):
        list(plan_ranges(tmp_path / "int.parquet", 2))


@pytest.mark.parametrize("name", ["l.txt", "l.txt.gz"])
def test_txt_is_one_url_per_line_without_captions(tmp_path, name):
    write_list(tmp_path / name, "txt")
    assert list(read_url_list(tmp_path / name)) == [UrlRecord(url) for url in URLS]
    assert list(read_url_list(tmp_path / name, url_column="link")) == [UrlRecord(url) for url in URLS]


@pytest.mark.parametrize("name", ["l.txt", "l.txt.gz", "l.csv", "l.csv.gz", "l.tsv", "l.tsv.gz", "l.json",
                                  "l.json.gz", "l.jsonl", "l.jsonl.gz", "l.parquet"])
def test_lists_written_by_pandas_as_img2dataset_fixtures_do(tmp_path, name):
    # img2dataset's tests/fixtures.py writes a DataFrame with columns caption, url (the first caption empty):
    # to_csv with its index column, to_json in pandas' default "columns" layout, jsonl as records, to_parquet.
    rows = [("" if i == 0 else f"caption {i}", f"http://localhost:1234/allowed/{i}.jpg") for i in range(5)]
    frame = pandas.DataFrame(rows, columns=["caption", "url"])
    path = tmp_path / name
    fmt, compression = name.split(".")[1], "gzip" if name.endswith(".gz") else None
    if fmt == "txt":
        with (gzip.open(path, "wt") if compression else open(path, "w")) as f:
            f.write("".join(url + "\n" for _, url in rows))
    elif fmt in ("csv", "tsv"):
        frame.to_csv(path, sep="\t" if fmt == "tsv" else ",", compression=compression)
    elif fmt == "json":
        frame.to_json(path, compression=compression)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True, compression=compression)
    else:
        frame.to_parquet(path)
    captions = [caption for caption, _ in rows] if fmt != "txt" else [""] * 5
    assert list(read_url_list(path)) == [UrlRecord(url, caption) for (_, url), caption in zip(rows, captions)]


EXTRA = {"key": [f"{i:09d}" for i in range(N)], "license": ["cc-by"] * N, "punsafe": [0.5 * i for i in range(N)]}


@pytest.mark.parametrize("fmt", ["parquet", "json", "jsonl"])
def test_extra_columns_arrive_in_source_meta(tmp_path, fmt):
    path = tmp_path / f"l.{fmt}"
    write_list(path, fmt, EXTRA)
    records = list(read_url_list(path, extra_columns=["license", "punsafe", "key"]))
    assert [r.source_meta for r in records] == [
        json.dumps({"license": "cc-by", "punsafe": 0.5 * i, "key": f"{i:09d}"}) for i in range(N)]
    assert [(r.url, r.alt_text) for r in records] == [(r.url, r.alt_text) for r in EXPECTED]
    # None asked for: the licence and NSFW columns are kept all the same (POLICY_COLUMNS), the key is not.
    assert [r.source_meta for r in read_url_list(path)] == [
        json.dumps({"license": "cc-by", "punsafe": 0.5 * i}) for i in range(N)]


def test_extra_columns_of_csv_are_its_strings(tmp_path):
    write_list(tmp_path / "l.csv", "csv", EXTRA)
    assert next(iter(read_url_list(tmp_path / "l.csv", extra_columns=["punsafe"]))).source_meta == (
        '{"punsafe": "0.0", "license": "cc-by"}')


def test_coyo_and_laion_parquet_load_as_they_are(tmp_path):
    coyo = pa.table({"id": [1, 2], "url": ["http://c/1.jpg", "http://c/2.jpg"], "text": ["a man", None],
                     "width": [640, 480], "clip_similarity_vitb32": [0.3, 0.2]})
    laion = pa.table({"URL": ["http://l/1.jpg"], "TEXT": ["a woman"], "WIDTH": [512.0], "similarity": [0.31]})
    pq.write_table(coyo, tmp_path / "coyo.parquet")
    pq.write_table(laion, tmp_path / "laion.parquet")
    assert list(read_url_list(tmp_path / "coyo.parquet")) == [
        UrlRecord("http://c/1.jpg", "a man"), UrlRecord("http://c/2.jpg", "")]
    assert list(read_url_list(tmp_path / "laion.parquet")) == [UrlRecord("http://l/1.jpg", "a woman")]
    assert list(read_url_list(tmp_path / "laion.parquet", "URL", "TEXT"))[0].alt_text == "a woman"
    assert next(iter(read_url_list(tmp_path / "coyo.parquet", extra_columns=["id", "width"]))).source_meta == (
        '{"id": 1, "width": 640}')


def test_url_list_from_fsspec_memory_and_page_url_column():
    import fsspec

    with fsspec.open("memory://lists/a.jsonl", "w") as f:
        f.write(json.dumps({"url": "http://x/1.jpg", "caption": "c", "page_url": "http://x/p.html"}) + "\n")
    assert list(read_url_list("memory://lists")) == [UrlRecord("http://x/1.jpg", "c", "http://x/p.html")]


def test_folder_reads_its_top_level_files_in_name_order(tmp_path):
    write_list(tmp_path / "b.parquet", "parquet")
    write_list(tmp_path / "a.parquet", "parquet")
    (tmp_path / "old").mkdir()
    write_list(tmp_path / "old" / "c.parquet", "parquet")  # a subfolder is not read
    (tmp_path / "README.md").write_text("not a list")
    assert list(read_url_list(tmp_path)) == EXPECTED + EXPECTED


def test_folder_columns_are_compared_by_name(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"url": URLS[0], "caption": CAPTIONS[0]}) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"caption": CAPTIONS[1], "url": URLS[1]}) + "\n")
    assert list(read_url_list(tmp_path)) == EXPECTED[:2]


def test_folder_of_mixed_formats_is_refused(tmp_path):
    write_list(tmp_path / "a.csv", "csv")
    write_list(tmp_path / "b.csv", "csv")
    write_list(tmp_path / "c.csv.gz", "csv")
    with pytest.raises(GadmsError, match=r"^\S+: mixes URL list formats \(\S+/a\.csv, \S+/c\.csv\.gz\); "
                                         r"keep one format per folder$"):
        read_url_list(tmp_path)


def test_folder_file_with_other_columns_is_refused(tmp_path):
    write_list(tmp_path / "a.parquet", "parquet")
    write_list(tmp_path / "b.parquet", "parquet", {"license": ["cc-by"] * N})
    records = read_url_list(tmp_path)
    with pytest.raises(GadmsError, match=r"^\S+/b\.parquet: columns differ from \S+/a\.parquet's: adds license$"):
        list(records)


def test_url_list_errors_name_the_file_and_field(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"url": "http://x/1.jpg"}\nnot json\n')
    with pytest.raises(GadmsError, match=r"bad.jsonl:2: not valid JSON: Expecting value$"):
        list(read_url_list(tmp_path / "bad.jsonl"))
    (tmp_path / "bad.json").write_text('{"url": "http://x/1.jpg"}')
    with pytest.raises(GadmsError, match=r"bad.json: expected a JSON array of objects, or an object of columns$"):
        read_url_list(tmp_path / "bad.json")
    (tmp_path / "cols.csv").write_text("link,caption\nhttp://x/1.jpg,c\n")
    with pytest.raises(GadmsError, match=r"cols.csv: no column 'url' \(columns: link, caption\)$"):
        read_url_list(tmp_path / "cols.csv")  # checked when called, before any row is asked for
    with pytest.raises(GadmsError, match=r"no column 'alt'"):
        read_url_list(tmp_path / "cols.csv", "link", "alt")
    with pytest.raises(GadmsError, match=r"cols.csv: no extra column 'license' \(columns: link, caption\)$"):
        read_url_list(tmp_path / "cols.csv", "link", extra_columns=["license"])
    with pytest.raises(GadmsError, match="URL list not found"):
        read_url_list(tmp_path / "absent.csv")
    (tmp_path / "list.xml").write_text("x")
    with pytest.raises(GadmsError, match="unknown URL list format"):
        read_url_list(tmp_path / "list.xml")


@pytest.mark.parametrize("flag, missing", [
    (["--url-column", "link"], "no column 'link'"), (["--caption-column", "alt"], "no column 'alt'"),
    (["--extra-columns", "punsafe", "license"], "no extra column 'license'")])
def test_cli_checks_columns_before_writing_anything(tmp_path, capsys, flag, missing):
    write_list(tmp_path / "l.csv", "csv", {"punsafe": [0.1] * N})
    out = tmp_path / "out"
    assert main(["crawl", "--urls", str(tmp_path / "l.csv"), "--out", str(out), *flag]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gadms crawl: error")]
    assert errors == [f"gadms crawl: error: {tmp_path / 'l.csv'}: {missing} (columns: url, caption, punsafe)"]
    assert not out.exists()
