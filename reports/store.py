"""The study's durable result store: one SQLite file, one row per point.

A point's key is a digest of everything that determines its result (model, checkpoint
content, dataset, policy, evaluation size, seed, psum version). Each result is written
in its own transaction, so a run killed at any moment (even ``kill -9``) leaves every
finished point stored and nothing half-written; a rerun finds them and computes only
what is missing. ``INSERT OR IGNORE`` keeps a key unique.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

__all__ = ["Store", "point_key"]


def point_key(fields: dict) -> str:
    """Stable digest of a point's defining fields (JSON with sorted keys)."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS points (key TEXT PRIMARY KEY, kind TEXT, fields TEXT, "
                         "result TEXT, created REAL)")

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT result FROM points WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, kind: str, fields: dict, result: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO points VALUES (?, ?, ?, ?, ?)",
                             (key, kind, json.dumps(fields, sort_keys=True, default=str), json.dumps(result),
                              time.time()))

    def all(self, kind: str | None = None) -> list[tuple[dict, dict]]:
        query = "SELECT fields, result FROM points" + (" WHERE kind = ?" if kind else "") + " ORDER BY created"
        with self._lock:
            rows = self._db.execute(query, (kind,) if kind else ()).fetchall()
        return [(json.loads(f), json.loads(r)) for f, r in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM points").fetchone()[0]

    def close(self) -> None:
        self._db.close()
