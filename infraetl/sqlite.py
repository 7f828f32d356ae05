"""SQLite plumbing the spool and the store share: opening, and one transaction at a time."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from .exceptions import StoreError


def open_db(path: Path, schema: str, *, synchronous: str, what: str) -> sqlite3.Connection:
    """Open (and create) a WAL database in autocommit mode; errors become StoreError."""
    try:
        private_dir(path.parent)
        # Created 0600 before SQLite opens it (its WAL and shared-memory files take its mode):
        # the state is nobody else's business, whatever the umask. A file an older release
        # left readable by others is made private too.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for name in (str(path), f"{path}-wal", f"{path}-shm"):
            try:
                if os.stat(name).st_mode & 0o077:
                    os.chmod(name, 0o600)
            except FileNotFoundError:
                pass
        db = sqlite3.connect(str(path), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.executescript(schema)
    except (sqlite3.Error, OSError) as e:
        raise StoreError(f"cannot open {what} {path}: {e}") from None
    return db


class RunRowPruner:
    """Deletes the rows of finished runs (``runs``: ``state``, ``finished_at``) past both the
    ``kept`` newest by ``age_column`` and ``kept_s`` seconds old, the oldest finished first, at
    most ``chunk`` a call and one call in ``every_s`` seconds (the store's and the spool's).

    A finished-runs index on ``finished_at`` finds them; ``also`` adds a condition (a row the
    caller still needs).
    """

    def __init__(self, age_column: str, also: str = "") -> None:
        self._sql = ("DELETE FROM runs WHERE rowid IN (SELECT rowid FROM runs WHERE state!='running' AND "
                     f"finished_at < ? AND {age_column} < (SELECT {age_column} FROM runs ORDER BY "
                     f"{age_column} DESC LIMIT 1 OFFSET ?) {also} ORDER BY finished_at LIMIT ?)")
        self._last = float("-inf")

    def __call__(self, db: sqlite3.Connection, *, kept: int, kept_s: float, chunk: int, every_s: float) -> None:
        now = time.monotonic()
        if now - self._last < every_s:
            return
        self._last = now
        db.execute(self._sql, (time.time() - kept_s, kept, chunk))


def private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) as ``0700`` if it does not exist; leave it as it is if it does."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)


class Tx:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, with SQLite's errors as StoreError.

    ``on_rollback`` runs whenever the transaction does not commit, so a cache of what the
    transaction did can be dropped with it; ``on_commit`` runs after a COMMIT.
    """

    def __init__(self, db: sqlite3.Connection, on_rollback: Callable[[], None] = lambda: None,
                 on_commit: Callable[[], None] = lambda: None) -> None:
        self._db = db
        self._on_rollback = on_rollback
        self._on_commit = on_commit

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(f"state database unavailable: {e}") from None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._on_rollback()
                self._rollback()  # a failed COMMIT may or may not have rolled back
                raise StoreError(f"state database write failed: {e}") from None
            self._on_commit()
            return
        self._on_rollback()
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"state database write failed: {exc}") from None

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
