"""On-disk cache of finished model requests, so a rerun never asks the same question twice.

A key is the SHA-256 of everything that decides an answer: backend, model, prompt version, the exact prompt
text (which contains the template), the template id, the image's SHA-256 and the sampling parameters. Only
answers that passed validation are stored. SQLite (one file under cache_dir, WAL journal) lets several worker
processes of one machine share the cache safely.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from storage.errors import GadmsError


def request_key(**parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class RequestCache:
    FILE_NAME = "caption_requests.sqlite"

    def __init__(self, cache_dir: str | Path):
        if "://" in str(cache_dir) and not str(cache_dir).startswith("file://"):
            raise GadmsError(f"caption cache_dir {cache_dir}: must be a local folder (the cache is a SQLite file)")
        path = Path(str(cache_dir).removeprefix("file://"))
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / self.FILE_NAME
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")  # the first read of the file: a non-SQLite file fails here
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise GadmsError(f"{self.path}: not a caption request cache ({exc}); delete it to start a new one, "
                             "or pass another --cache-dir") from None
        self.hits = 0
        self.stores = 0

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        if row is not None:
            self.hits += 1
            return row[0]
        return None

    def put(self, key: str, answer: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO answers (key, answer) VALUES (?, ?)", (key, answer))
        self.stores += 1

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()
