"""The study's durable result store: one SQLite file, one row per point.

A point's key is a digest of everything that determines its result (model, checkpoint
content, dataset, the fingerprints of the data evaluated and calibrated on, policy,
evaluation size, seed, psum version; docs/study.md). Each result is written in its own
transaction, so a run killed at any moment (even ``kill -9``) leaves every finished
point stored and nothing half-written; a rerun finds them and computes only what is
missing. ``INSERT OR IGNORE`` keeps a key unique.

A store also remembers what it was made on (:meth:`Store.claim`: the data fingerprints
of each model run); a study on other data is refused rather than mixed in. One study
at a time writes into a folder (:func:`study_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

__all__ = ["Store", "point_key", "study_lock", "StudyLocked", "StoreMismatch"]


class StudyLocked(ValueError):
    """Another study is writing into the same folder."""


class StoreMismatch(ValueError):
    """The folder's store holds results made on other data than this study's."""


@contextlib.contextmanager
def study_lock(folder: str | os.PathLike):
    """Hold an exclusive lock on ``folder/results.lock`` for the duration (``flock``: it
    goes away with the process, even after ``kill -9``); raises :class:`StudyLocked` at
    once if another process holds it."""
    path = Path(folder) / "results.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise StudyLocked(f"another psum study ({holder}) is writing into {folder}; wait for it to "
                              "finish or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)


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
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")

    def claim(self, name: str, value: str, where: str | os.PathLike = "") -> None:
        """Record that this store holds results made with ``name = value`` (a data
        fingerprint); raise :class:`StoreMismatch` if it already holds another value."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (name, value))
            stored = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0]
        if stored != value:
            raise StoreMismatch(f"{where or self.path} holds results made on other data ({name}: fingerprint "
                                f"{stored[:12]}, now {value[:12]}); use another --out, or remove the folder "
                                "to start afresh")

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
