"""The one JSON Lines reader: blank lines skipped, a bad line is a one-line error naming `<file>:<line>`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from storage.errors import GadmsError


def iter_jsonl(lines: Iterable[str], source: str, objects: bool = True) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line; with `objects`, every value must be a JSON object."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GadmsError(f"{source}:{number}: not valid JSON: {exc.msg}") from None
        if objects and not isinstance(value, dict):
            raise GadmsError(f"{source}:{number}: expected a JSON object, got {type(value).__name__}")
        yield number, value


def read_jsonl(path: str | Path, objects: bool = True) -> list[tuple[int, Any]]:
    """Every (line number, value) of a local UTF-8 JSON Lines file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GadmsError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise GadmsError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise GadmsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return list(iter_jsonl(text.splitlines(), str(path), objects))
