"""Ids taken from URLs, checked against what the build writes before any query sees them.

Every id is only ever a bound SQL parameter, never part of a file path; the checks make a malformed one a 400.
"""
from __future__ import annotations

import re

from starlette.exceptions import HTTPException

SAMPLE_ID = re.compile(r"[0-9a-f]{20}")  # storage.records.make_sample_id
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")  # shard, run, template and caption model ids
REASON = re.compile(r"[a-z0-9_]{1,64}")  # reject stages and reasons (snake_case)


def checked(pattern: re.Pattern, value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise HTTPException(400, f"not a valid {what}")
    return value


def optional(pattern: re.Pattern, value: str | None, what: str) -> str | None:
    """An optional query parameter: empty means not given."""
    return checked(pattern, value, what) if value else None


def count(value: str | None, what: str, default: int, low: int, high: int) -> int:
    """An integer query parameter in low..high; empty means `default`."""
    if not value:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise HTTPException(400, f"{what} must be an integer in {low}..{high}")
    return int(value)
