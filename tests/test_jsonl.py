"""The one JSON Lines reader: values with their line numbers, and one-line errors naming file and line."""
from __future__ import annotations

import pytest

from storage.errors import GadmsError
from storage.jsonl import iter_jsonl, read_jsonl


def test_values_keep_their_line_numbers_and_blank_lines_are_skipped(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"k": 1}\n\n  \n{"k": 2}\n')
    assert read_jsonl(tmp_path / "a.jsonl") == [(1, {"k": 1}), (4, {"k": 2})]
    assert list(iter_jsonl(['"a"', "", "[1]"], "mem", objects=False)) == [(1, "a"), (3, [1])]


@pytest.mark.parametrize("content, message", [
    (b'{"k": 1}\nnot json\n', ":2: not valid JSON: Expecting value"),
    (b'{"k": 1}\n[1, 2]\n', ":2: expected a JSON object, got list"),
    (b'{"k": "caf\xe9"}\n', ": not UTF-8 text (byte 10: invalid continuation byte)"),
])
def test_a_bad_file_is_one_line_naming_where(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(GadmsError) as raised:
        read_jsonl(path)
    assert str(raised.value) == f"{path}{message}"
    with pytest.raises(GadmsError, match=f"^{tmp_path / 'none.jsonl'}: no such file$"):
        read_jsonl(tmp_path / "none.jsonl")
