"""The consumer's durable state: runs, applied batches and mergeable aggregates.

Applying a batch is one SQLite transaction that records (run, seq) and the
batch's partial aggregates; a (run, seq) seen before changes nothing. When a
run has all the batches its END named, one more transaction merges the
partials into the run's row, merges the run into the cumulative row, and
drops the run's batch rows (so the database stays bounded however many
users pass: a run's row and the cumulative row are what remain). However many
runs pass, too: only the :data:`RUN_FIGURES_KEPT` latest complete runs keep
their merged figures (~110 KB each, in ``run_figures``), and a finished run's
row (state, counts, times) goes once it is past both the :data:`RUNS_KEPT`
newest and :data:`RUN_ROWS_KEPT_S` old. Within a
run too: while batches arrive in order, every :data:`CHECKPOINT_EVERY`
batches the run's aggregate so far is written once and the partials it
covers are dropped. A consumer killed at any moment restarts into the same
figures.

Durability is a group commit. Transactions commit with ``synchronous=NORMAL``
(written to the WAL, not yet fsync-ed) and :meth:`Store.sync` fsyncs the WAL
once for every transaction since the last call; the consumer calls it before
it sends the ACKs of those transactions. An ACK still promises that its batch
survives a power cut, but a backlog of several batches pays for one fsync
instead of one each. A transaction lost to a power cut before its sync was
never ACKed, so the producer re-sends it. (With NORMAL, SQLite itself still
syncs the WAL before each checkpoint and the database after it.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit import AuditSummary
from .exceptions import StoreError
from .figures import figures_json, read_figures
from .sqlite import RunRowPruner, Tx, open_db
from .stream_stats import StatsSummary

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id       TEXT PRIMARY KEY,
    producer     TEXT NOT NULL DEFAULT '',
    source       TEXT NOT NULL DEFAULT '',
    requested    INTEGER,
    meta         TEXT NOT NULL DEFAULT '{}',
    state        TEXT NOT NULL DEFAULT 'running',   -- running | complete | failed | cancelled
    reason       TEXT,
    started_at   REAL NOT NULL,
    finished_at  REAL,
    expected     INTEGER,          -- data batches named by END (NULL until END)
    applied      INTEGER NOT NULL DEFAULT 0,   -- data batches applied
    delivered    INTEGER NOT NULL DEFAULT 0,   -- users received (before consumer validation)
    kept         INTEGER NOT NULL DEFAULT 0,   -- users that passed validation
    quarantined  INTEGER NOT NULL DEFAULT 0,   -- producer + consumer rejections (not --nat's filter)
    stats        BLOB,             -- the latest complete run's figures (where older releases read
    audit        BLOB              -- them); all kept runs' are in run_figures
);
CREATE TABLE IF NOT EXISTS batches (
    run_id     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    users      INTEGER NOT NULL,
    stats      BLOB,               -- partial; NULL once in a checkpoint (rows go when the run completes)
    audit      BLOB,
    applied_at REAL NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id  TEXT PRIMARY KEY,
    upto    INTEGER NOT NULL,       -- batches 1..upto, merged in order; their partials are dropped
    stats   BLOB NOT NULL,
    audit   BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, filler BLOB);
CREATE TABLE IF NOT EXISTS cumulative (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    runs   INTEGER NOT NULL,
    stats  BLOB NOT NULL,
    audit  BLOB NOT NULL
);
"""

#: Partials merged between two calls of the store's ``alive`` hook (~80 ms of work).
ALIVE_EVERY = 64
#: In-order batches between two checkpoints of a run's aggregate (256,000 users at 500 a batch):
#: a run holds at most this many partials (~26 KB each), however long it is, and an END after a
#: restart merges at most this many.
CHECKPOINT_EVERY = 512
#: Runs whose aggregate so far is kept in memory (the most recently updated ones).
LIVE_RUNS = 8
#: Runs the dashboard lists (newest first).
RUNS_SHOWN = 50
#: Complete runs that keep their merged figures (the dashboard shows the latest's). Every run
#: kept its ~110 KB of figures in its own row: 100,000 runs made an 11 GB database, and the
#: dashboard's re-render took 370 ms (a review). Set to NULL, they left the rows' pages mostly
#: empty for good (~1–3 KB a run): they have a table of their own, whose rows are deleted.
RUN_FIGURES_KEPT = RUNS_SHOWN
#: A finished run's row goes once it is past the RUNS_KEPT newest runs *and* RUN_ROWS_KEPT_S
#: old (~0.2 KB a row: ~2 MB kept). A re-send of a batch of a run whose row is gone would
#: start it again, so both are far beyond any re-send: a producer re-sends within seconds.
RUNS_KEPT = 10_000
RUN_ROWS_KEPT_S = 30 * 86_400
#: Rows pruned in one transaction (a store of an older release may hold many).
PRUNE_CHUNK = 500
#: Free space a start gives back (VACUUM) when it is also over half the file.
VACUUM_OVER = 16 << 20
#: Seconds between two prunings of old run rows (each at a completion, at most PRUNE_CHUNK rows).
PRUNE_EVERY_S = 600.0
#: Each figure set's figures as JSON, beside it ("run <id>", or "cumulative"), with a digest of
#: the summaries they were computed from: a copy whose summaries changed under it (masked by an
#: older release, rolled back to) is not taken, and is deleted at the next start.
FIGURES_DOCS = ("CREATE TABLE IF NOT EXISTS figures_docs (key TEXT PRIMARY KEY, digest BLOB NOT NULL, "
                "doc TEXT NOT NULL)")
CUMULATIVE_KEY = "cumulative"


def _run_key(run_id: str) -> str:
    return "run " + run_id


def _digest(stats: bytes, audit: bytes) -> bytes:
    h = hashlib.blake2b(len(stats).to_bytes(8, "big"), digest_size=16)
    h.update(stats)
    h.update(audit)
    return h.digest()

RUN_FIGURES = ("CREATE TABLE IF NOT EXISTS run_figures (run_id TEXT PRIMARY KEY, stats BLOB NOT NULL, "
               "audit BLOB NOT NULL)")

RUN_COLUMNS = ("run_id", "producer", "source", "requested", "meta", "state", "reason", "started_at",
               "finished_at", "expected", "applied", "delivered", "kept", "quarantined")


@dataclass
class Applied:
    """What applying a batch did."""

    duplicate: bool
    run_complete: bool
    #: Why the run failed, if it has (its END is then ACKed "failed" with this reason).
    failed: str | None = None


#: Bytes of room the state's file system must have for the store to count as writable: a few
#: batches' commits (a 500-user batch's partials and WAL frames are ~0.3 MB).
ROOM_NEEDED = 4 << 20


class Store:
    """SQLite state of one consumer (used from its main thread only)."""

    def __init__(self, path: Path, *, alive: Callable[[], None] = lambda: None) -> None:
        self.path = path
        #: Called every :data:`ALIVE_EVERY` partials of a long merge (the consumer pings its
        #: watchdog): an END after a restart may merge 20,000 partials, ~25 s at 1.2 ms each.
        self._alive = alive
        self._db = open_db(path, SCHEMA, synchronous="NORMAL", what="the state database")
        # An ACK promises the batch survives a power cut: see sync().
        self._wal: Path | None = Path(f"{path}-wal")
        self._synced = True
        if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            # No WAL on this file system: every commit syncs itself, sync() has nothing to do.
            self._db.execute("PRAGMA synchronous=FULL")
            self._wal = None
        # run id -> (k, merged aggregates of batches 1..k), a cache of the committed partials.
        self._live: dict[str, tuple[int, StatsSummary, AuditSummary]] = {}
        self._prune_rows = RunRowPruner("started_at")
        self._upgrade()

    def _upgrade(self) -> None:
        """Bring a store of an older release (or one an older release wrote to after a roll-back)
        to this layout: the runs' index by age; the figures of its RUN_FIGURES_KEPT latest runs
        in run_figures; no figures left in the runs' rows but the latest run's (where an older
        release reads them: a roll-back still starts); and the space they held given back
        (VACUUM copies only what is live: ~1 s for a few thousand runs). Each step is judged
        from the data, so a start killed or refused part-way (a full disk) is finished by the
        next one; meanwhile the store works, reading the figures where they are."""
        try:
            self._db.execute("CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at)")
            self._db.execute("CREATE INDEX IF NOT EXISTS runs_finished ON runs (finished_at) WHERE state!='running'")
            # The runs whose rows hold figures: the latest, and those of an older release.
            self._db.execute("CREATE INDEX IF NOT EXISTS runs_with_figures ON runs (finished_at) "
                             "WHERE stats IS NOT NULL")
            with self._tx():
                self._db.execute(RUN_FIGURES)
                self._db.execute("DROP TABLE IF EXISTS figures_json")  # this round's first cut
            self._drop_stale_docs()
            # A run an older release closed kept its batch rows for good (a review): no batch of
            # a run that is over applies again.
            with self._tx():
                for table in ("batches", "checkpoints"):
                    self._db.execute(f"DELETE FROM {table} WHERE run_id IN "  # noqa: S608
                                     "(SELECT run_id FROM runs WHERE state!='running')")
            latest = self.last_complete_run()
            if self._one("SELECT 1 FROM runs WHERE stats IS NOT NULL AND run_id IS NOT ? ORDER BY finished_at "
                         "LIMIT 1", (latest,)):
                with self._tx():
                    self._db.execute(
                        "INSERT OR IGNORE INTO run_figures (run_id, stats, audit) SELECT run_id, stats, audit "
                        "FROM runs WHERE state='complete' AND stats IS NOT NULL ORDER BY finished_at DESC "
                        "LIMIT ?", (RUN_FIGURES_KEPT,))
                    self._prune_figures()
                latest = self.last_complete_run()
                top = self._one("SELECT MAX(rowid) FROM runs")[0] or 0
                for low in range(0, top, PRUNE_CHUNK):
                    with self._tx():
                        self._db.execute("UPDATE runs SET stats=NULL, audit=NULL WHERE rowid > ? AND rowid <= ? "
                                         "AND stats IS NOT NULL AND run_id IS NOT ?", (low, low + PRUNE_CHUNK, latest))
                    self._alive()
            free, pages, size = (self._one(f"PRAGMA {p}")[0] for p in ("freelist_count", "page_count", "page_size"))
            if free * 2 > pages and free * size > VACUUM_OVER:  # (a run's dropped partials are reused)
                self._db.execute("VACUUM")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (sqlite3.Error, StoreError) as e:
            logger.warning("cannot upgrade the state database now (retried at the next start): %s", e)

    def _prune_figures(self) -> None:
        """Keep the figures of the RUN_FIGURES_KEPT latest complete runs only."""
        self._db.execute(
            "DELETE FROM run_figures WHERE run_id NOT IN (SELECT f.run_id FROM run_figures f "
            "LEFT JOIN runs r USING (run_id) ORDER BY r.finished_at DESC LIMIT ?)", (RUN_FIGURES_KEPT,))
        if self._has_table("figures_docs"):
            self._db.execute("DELETE FROM figures_docs WHERE key != ? AND substr(key, 5) NOT IN "
                             "(SELECT run_id FROM run_figures)", (CUMULATIVE_KEY,))

    def _prune(self, run_id: str) -> None:
        """After ``run_id`` completed: its figures are the only ones left in a run's row, only
        the RUN_FIGURES_KEPT latest in run_figures, and the rows of the finished runs past both
        RUNS_KEPT and RUN_ROWS_KEPT_S go, the oldest first (at most PRUNE_CHUNK). In the
        caller's transaction."""
        self._db.execute("UPDATE runs SET stats=NULL, audit=NULL WHERE run_id IN (SELECT run_id FROM run_figures "
                         "WHERE run_id != ?) AND stats IS NOT NULL", (run_id,))
        self._prune_figures()
        # The oldest finished first, by an index (walking the rows by age cost ~20 ms a
        # completion at two runs a minute, a review).
        self._prune_rows(self._db, kept=RUNS_KEPT, kept_s=RUN_ROWS_KEPT_S, chunk=PRUNE_CHUNK, every_s=PRUNE_EVERY_S)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _tx(self) -> Tx:
        return Tx(self._db, on_rollback=self._rolled_back, on_commit=self._committed)

    def _rolled_back(self) -> None:
        self._live.clear()
        self._marked_revealed = False

    def _committed(self) -> None:
        self._synced = self._wal is None

    def sync(self) -> None:
        """Make every transaction committed so far survive a power cut (one fsync of the WAL).

        Raises StoreError if the disk refuses: then nothing since the last sync may be ACKed.
        """
        if self._synced or self._wal is None:
            return
        try:
            try:
                fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                # Not expected while the database is open; a checkpoint syncs the WAL too.
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            else:
                try:
                    os.fsync(fd)  # flushes the file, whichever descriptor wrote it
                finally:
                    os.close(fd)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"state database sync failed: {getattr(e, 'strerror', None) or e}") from None
        self._synced = True

    # -- plaintext passwords (--reveal-passwords) --
    # Every stored audit derives from partials, so a mark written with the first plaintext
    # partial says whether any row may hold plaintext labels, without reading them all.
    _MARKS = "CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY)"
    _marked_revealed = False

    def _mark_revealed(self) -> None:
        self._db.execute(self._MARKS)
        # Two marks: an older release, rolled back to, masks what it knows of and deletes the
        # first; the second still says run_figures may hold plaintext (a review).
        self._db.execute("INSERT OR IGNORE INTO marks (name) VALUES ('revealed'), ('revealed_figures')")
        self._marked_revealed = True  # for this process (a rollback clears it: see _tx)

    def mask_revealed(self) -> int:
        """Mask the plaintext labels of every stored audit (the operator turned
        ``--reveal-passwords`` off); return how many summaries held some. One transaction."""
        if not self._has_table("marks") or not self._one(
                "SELECT 1 FROM marks WHERE name IN ('revealed', 'revealed_figures')"):
            return 0
        masked = 0
        with self._tx():
            tables = [("runs", "run_id"), ("batches", "rowid"), ("checkpoints", "run_id"), ("cumulative", "id")]
            if self._has_table("run_figures"):
                tables.append(("run_figures", "run_id"))
            for table, key in tables:
                rows = self._db.execute(f"SELECT {key}, audit FROM {table} WHERE audit IS NOT NULL").fetchall()  # noqa: S608
                for i, (k, blob) in enumerate(rows, 1):
                    if i % ALIVE_EVERY == 0:
                        self._alive()
                    audit = AuditSummary.from_bytes(blob)
                    if audit.mask():
                        self._db.execute(f"UPDATE {table} SET audit=? WHERE {key}=?", (audit.to_bytes(), k))  # noqa: S608
                        masked += 1
            if self._has_table("figures_docs"):  # they hold the plaintext too: read from the summaries
                self._db.execute("DELETE FROM figures_docs")
            self._db.execute("DELETE FROM marks WHERE name IN ('revealed', 'revealed_figures')")
        self._marked_revealed = False
        try:
            # The WAL still holds the pages as they were: write them home and empty it.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            raise StoreError(f"state database write failed: {e}") from None
        return masked

    # -- secrets --
    # The table is made by the first write, not at open: a consumer upgraded on a full disk
    # still starts (and runs degraded, as on any full disk) instead of failing on a CREATE.
    _SECRETS = "CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, sealed BLOB NOT NULL)"

    def secret(self, name: str) -> bytes | None:
        """The sealed secret ``name`` (a Fernet token), or None."""
        row = self._one("SELECT sealed FROM secrets WHERE name=?", (name,)) if self._has_table("secrets") else None
        return None if row is None else bytes(row[0])

    def _has_table(self, name: str) -> bool:
        """Whether a table made on first use (``marks``, ``secrets``) exists yet."""
        return self._one("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)) is not None

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        """The first row of a read, or None; SQLite's errors as StoreError."""
        try:
            return self._db.execute(sql, args).fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"state database unavailable: {e}") from None

    def set_secret(self, name: str, sealed: bytes) -> None:
        """Store the sealed secret ``name`` (in place of any earlier one)."""
        with self._tx():
            self._db.execute(self._SECRETS)
            self._db.execute("INSERT OR REPLACE INTO secrets (name, sealed) VALUES (?, ?)", (name, sealed))

    # -- writes --
    def begin_run(self, run_id: str, *, producer: str, source: str, requested: int | None,
                  meta: dict[str, Any]) -> bool:
        """Create or complete the row of a run that a BEGIN announced; True if this is the run's
        first BEGIN and the run is complete already (the BEGIN came last: lost, or refused for
        its stamp, and sent again), so that what it names is not shown yet."""
        with self._tx():
            self._ensure_run(run_id, producer)
            # Merged: an END re-sent ahead of a lost BEGIN may have noted its count already.
            before = self._meta(run_id)
            state = self._db.execute("SELECT state FROM runs WHERE run_id=?", (run_id,)).fetchone()[0]
            meta = {**before, **meta}
            self._db.execute(
                "UPDATE runs SET source=?, requested=?, meta=? WHERE run_id=?",
                (source, requested, json.dumps(meta), run_id),
            )
        # A BEGIN notes the run's seed (None too): a run without one has had no BEGIN.
        return state == "complete" and "seed" not in before

    def _meta(self, run_id: str) -> dict[str, Any]:
        row = self._db.execute("SELECT meta FROM runs WHERE run_id=?", (run_id,)).fetchone()
        try:
            meta = json.loads(row[0]) if row else {}
        except ValueError:
            meta = {}
        return meta if isinstance(meta, dict) else {}

    def _ensure_run(self, run_id: str, producer: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO runs (run_id, producer, started_at) VALUES (?, ?, ?)",
            (run_id, producer, time.time()),
        )

    def apply_batch(self, run_id: str, seq: int, *, producer: str, delivered: int, kept: int,
                    quarantined: int, stats: StatsSummary, audit: AuditSummary,
                    encoded: tuple[bytes, bytes] | None = None) -> Applied:
        """Record one data batch and its partials, once; say whether the run is now complete.

        ``encoded`` is ``stats`` and ``audit`` as stored (``to_bytes``), when already made."""
        stats_b, audit_b = encoded or (stats.to_bytes(canonical=False), audit.to_bytes())
        with self._tx():
            self._ensure_run(run_id, producer)
            state = self._db.execute("SELECT state FROM runs WHERE run_id=?", (run_id,)).fetchone()[0]
            cur = self._db.execute(
                "INSERT OR IGNORE INTO batches (run_id, seq, users, stats, audit, applied_at) "
                "SELECT ?, ?, ?, ?, ?, ? WHERE ? = 'running'",
                (run_id, seq, kept, stats_b, audit_b, time.time(), state),
            )
            if cur.rowcount == 0:
                return Applied(duplicate=True, run_complete=False)
            if audit.revealed and not self._marked_revealed:
                self._mark_revealed()
            self._db.execute(
                "UPDATE runs SET applied=applied+1, delivered=delivered+?, kept=kept+?, "
                "quarantined=quarantined+? WHERE run_id=?",
                (delivered, kept, quarantined, run_id),
            )
            self._merge_live(run_id, seq, stats, audit)
            return self._complete_if_ready(run_id)

    def _merge_live(self, run_id: str, seq: int, stats: StatsSummary, audit: AuditSummary) -> None:
        """Fold a batch into the run's in-memory aggregate, so END need not merge every partial.

        The aggregate is kept only while batches arrive as 1, 2, 3, ...: top-k sketches depend
        on the order of merges, and the figures must not depend on re-sends or restarts. Any
        other arrival drops it, and END merges from the database in seq order, the very same
        left fold; ``Tx`` drops it too if the transaction does not commit. Once every batch
        before the one in hand is on disk again (after a restart, or a re-sent batch filling a
        gap) it is rebuilt from there. Every :data:`CHECKPOINT_EVERY` batches it is written
        to disk and the partials it covers are dropped.
        """
        live = self._live.pop(run_id, None)
        if live is None and seq > 1:
            live = self._resume_live(run_id, seq)
        if seq == 1 and live is None:
            live = (1, StatsSummary.empty().merge(stats), audit)
        elif live is not None and seq == live[0] + 1:
            live = (seq, live[1].merge(stats), live[2].merge(audit))
        else:
            return
        self._live[run_id] = live
        while len(self._live) > LIVE_RUNS:
            # The run updated longest ago (a run whose producer never came back, or one of too
            # many at once): should it go on, its aggregate is rebuilt from disk, as after a restart.
            del self._live[next(iter(self._live))]
        if seq % CHECKPOINT_EVERY == 0:
            # The aggregate of batches 1..seq goes to disk and their partials are dropped, in
            # this batch's transaction: the run's partials stay bounded however long it is.
            upto = self._checkpoint_upto(run_id)
            self._db.execute("INSERT OR REPLACE INTO checkpoints (run_id, upto, stats, audit) "
                             "VALUES (?, ?, ?, ?)", (run_id, seq, live[1].to_bytes(canonical=False),
                                                     live[2].to_bytes()))
            self._db.execute("UPDATE batches SET stats=NULL, audit=NULL WHERE run_id=? AND seq>? AND seq<=?",
                             (run_id, upto, seq))

    def _checkpoint_upto(self, run_id: str) -> int:
        cp = self._db.execute("SELECT upto FROM checkpoints WHERE run_id=?", (run_id,)).fetchone()
        return int(cp[0]) if cp is not None else 0

    def _resume_live(self, run_id: str, seq: int) -> tuple[int, StatsSummary, AuditSummary] | None:
        """The aggregate of batches 1..seq-1 rebuilt from disk (after a restart, or once a batch
        that came out of order has been filled in), if exactly those are there besides ``seq``:
        the last checkpoint and the partials after it. Tried only within two checkpoint
        intervals of the last checkpoint, so that a run whose order never heals pays one
        bounded look a batch, not one that grows with the run."""
        upto = self._checkpoint_upto(run_id)
        if seq - upto > 2 * CHECKPOINT_EVERY:
            return None
        (count,) = self._db.execute(
            "SELECT COUNT(*) FROM batches WHERE run_id=? AND seq>? AND seq<=? AND stats IS NOT NULL",
            (run_id, upto, seq)).fetchone()
        if count != seq - upto:
            return None  # a batch before this one is still missing: END merges from disk
        stats, audit = self._merge_from_db(run_id, below=seq)
        return seq - 1, stats, audit

    def end_run(self, run_id: str, *, producer: str, batches: int, requested: int | None,
                delivered: int | None = None) -> Applied:
        """Record the END of a run (``batches`` data batches holding ``delivered`` users in all);
        ``run_complete`` if this END completed it, ``duplicate`` if it was complete already,
        ``failed`` the reason if the run failed (now or before)."""
        with self._tx():
            self._ensure_run(run_id, producer)
            state, reason = self._db.execute("SELECT state, reason FROM runs WHERE run_id=?",
                                             (run_id,)).fetchone()
            if state != "running":
                return Applied(duplicate=state == "complete", run_complete=False,
                               failed=(reason or state) if state in ("failed", "cancelled") else None)
            if type(delivered) is int:
                self._db.execute("UPDATE runs SET meta=? WHERE run_id=?",
                                 (json.dumps({**self._meta(run_id), "end_delivered": delivered}), run_id))
            self._db.execute(
                "UPDATE runs SET expected=?, requested=COALESCE(requested, ?) WHERE run_id=?",
                (batches, requested, run_id),
            )
            return self._complete_if_ready(run_id)

    def missing(self, run_id: str, limit: int = 64) -> list[int]:
        """The first ``limit`` batches of a run's END that this store does not hold.

        The gaps are found by SQLite (a window over the held batches, in key order), so an END
        re-sent every few seconds costs little even for a run of millions of batches."""
        row = self._db.execute("SELECT expected FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None or row[0] is None:
            return []
        expected = row[0]
        gaps = self._db.execute(
            "SELECT prev + 1, seq - 1 FROM (SELECT seq, LAG(seq, 1, 0) OVER (ORDER BY seq) AS prev "
            "FROM batches WHERE run_id=? AND seq BETWEEN 1 AND ?) WHERE seq - prev > 1 LIMIT ?",
            (run_id, expected, limit)).fetchall()
        last = self._db.execute("SELECT MAX(seq) FROM batches WHERE run_id=? AND seq BETWEEN 1 AND ?",
                                (run_id, expected)).fetchone()[0] or 0
        if last < expected:
            gaps.append((last + 1, expected))
        out: list[int] = []
        for first, end in gaps:
            out.extend(range(first, end + 1)[:limit - len(out)])
        return out

    def fail_run(self, run_id: str, *, producer: str, reason: str, state: str = "failed") -> None:
        """Mark a run failed (or ``cancelled`` by its operator); its batches never reach the
        cumulative figures."""
        with self._tx():
            self._ensure_run(run_id, producer)
            self._fail(run_id, reason, state)

    def _fail(self, run_id: str, reason: str, state: str = "failed") -> None:
        assert state in ("failed", "cancelled")
        self._db.execute(
            # Not before it started, whatever the clock did (an NTP step back showed "-40.2 s").
            "UPDATE runs SET state=?, reason=?, finished_at=MAX(?, started_at) WHERE run_id=? AND state='running'",
            (state, reason, time.time(), run_id),
        )
        self._drop_batches(run_id)
        self._live.pop(run_id, None)

    def _complete_if_ready(self, run_id: str) -> Applied:
        """Complete the run if every batch of its END is here (``run_complete``); if they do not
        add up to its END, fail it (``failed``: none of it counts); else nothing yet."""
        not_yet = Applied(duplicate=False, run_complete=False)
        expected, applied, delivered = self._db.execute(
            "SELECT expected, applied, delivered FROM runs WHERE run_id=?", (run_id,)
        ).fetchone()
        if expected is None or applied < expected:
            return not_yet
        # Batches 1..expected, every one: a batch numbered outside them (a producer's bug) must
        # not stand in for one still on its way, which would then be taken for a duplicate.
        held = self._db.execute("SELECT COUNT(*) FROM batches WHERE run_id=? AND seq BETWEEN 1 AND ?",
                                (run_id, expected)).fetchone()[0]
        if held < expected:
            return not_yet
        # Every batch is here; do they make the run the END speaks of? Batches numbered past it,
        # or users in them other than it counts, mean the producer cut the run into batches
        # two ways (say, restarted with another --batch-size before it kept the run's own):
        # whatever way the figures were summed, some users would be missing or counted twice.
        end_delivered = self._meta(run_id).get("end_delivered")
        why = None
        if applied > expected:
            why = (f"the producer sent {applied} batches where its END counts {expected}: the run "
                   "was cut into batches two ways")
        elif type(end_delivered) is int and end_delivered != delivered:
            why = (f"the run's batches hold {delivered} users where its END counts {end_delivered}: "
                   "the run was cut into batches two ways")
        if why is not None:
            self._fail(run_id, why)
            return Applied(duplicate=False, run_complete=False, failed=why)
        live = self._live.pop(run_id, None)
        stats, audit = live[1:] if live is not None and live[0] == expected else self._merge_from_db(run_id)
        stats_blob, audit_blob = stats.to_bytes(), audit.to_bytes()
        # The figures go in the run's row too, until the next run completes: where an older
        # release looks for the latest run's (a roll-back still starts). The stamp is later than
        # the run completed before it, whatever the clock did: "latest" is by it, here and in
        # an older release (a clock stepped back showed the wrong last run). Both from reviews.
        last = self._one("SELECT MAX(finished_at) FROM runs WHERE stats IS NOT NULL")[0]
        started = self._one("SELECT started_at FROM runs WHERE run_id=?", (run_id,))[0]
        # Nor before the run started: an NTP step back mid-run showed a duration of "-40.2 s" (a review).
        finished = max(time.time(), started if last is None else max(started, last + 1e-3))
        self._db.execute("UPDATE runs SET state='complete', finished_at=?, stats=?, audit=? WHERE run_id=?",
                         (finished, stats_blob, audit_blob, run_id))
        self._db.execute(RUN_FIGURES)  # made at open, unless the disk was full then
        self._db.execute("INSERT OR REPLACE INTO run_figures (run_id, stats, audit) VALUES (?, ?, ?)",
                         (run_id, stats_blob, audit_blob))
        self._db.execute(FIGURES_DOCS)
        self._db.execute("INSERT OR REPLACE INTO figures_docs (key, digest, doc) VALUES (?, ?, ?)",
                         (_run_key(run_id), _digest(stats_blob, audit_blob), figures_json(stats, audit)))
        cum = self._db.execute("SELECT runs, stats, audit FROM cumulative WHERE id=1").fetchone()
        if cum is None:
            cum_runs, cum_stats, cum_audit = 0, stats, audit  # already serialised for the run row
        else:
            cum_runs = cum[0]
            cum_stats = StatsSummary.from_bytes(cum[1]).merge(stats)
            cum_audit = AuditSummary.from_bytes(cum[2]).merge(audit)
        cum_stats_blob, cum_audit_blob = cum_stats.to_bytes(), cum_audit.to_bytes()
        self._db.execute(
            "INSERT OR REPLACE INTO cumulative (id, runs, stats, audit) VALUES (1, ?, ?, ?)",
            (cum_runs + 1, cum_stats_blob, cum_audit_blob),
        )
        self._db.execute("INSERT OR REPLACE INTO figures_docs (key, digest, doc) VALUES (?, ?, ?)",
                         (CUMULATIVE_KEY, _digest(cum_stats_blob, cum_audit_blob), figures_json(cum_stats, cum_audit)))
        self._prune(run_id)
        self._drop_batches(run_id)
        return Applied(duplicate=False, run_complete=True)

    def _drop_batches(self, run_id: str) -> None:
        """A run is over: no batch of it can apply again (apply_batch takes batches of running
        runs only), so its batch rows and checkpoint go and the database stays bounded."""
        self._db.execute("DELETE FROM batches WHERE run_id=?", (run_id,))
        self._db.execute("DELETE FROM checkpoints WHERE run_id=?", (run_id,))

    def _merge_from_db(self, run_id: str, below: int | None = None) -> tuple[StatsSummary, AuditSummary]:
        """The left fold of the run's batches (those before ``below``) in seq order: its last
        checkpoint, then the partials after it (the very fold the in-memory aggregate makes)."""
        stats, audit = StatsSummary.empty(), None
        cp = self._db.execute("SELECT upto, stats, audit FROM checkpoints WHERE run_id=?", (run_id,)).fetchone()
        upto = 0
        if cp is not None:
            upto, stats, audit = cp[0], StatsSummary.from_bytes(cp[1]), AuditSummary.from_bytes(cp[2])
        for i, (s_blob, a_blob) in enumerate(self._db.execute(
            "SELECT stats, audit FROM batches WHERE run_id=? AND seq>? AND seq<? AND stats IS NOT NULL "
            "ORDER BY seq", (run_id, upto, below if below is not None else 1 << 62)
        ), 1):
            if i % ALIVE_EVERY == 0:
                self._alive()
            stats = stats.merge(StatsSummary.from_bytes(s_blob))
            # Start from the first partial, not from empty(): an empty summary is never
            # "revealed", and merging into it would mask an opted-in plaintext audit.
            part = AuditSummary.from_bytes(a_blob)
            audit = part if audit is None else audit.merge(part)
        return stats, audit if audit is not None else AuditSummary.empty()

    # -- reads --
    def applied(self, run_id: str, seq: int) -> bool:
        """Whether batch (run, seq) was applied already (or its run is over): a cheap look
        before doing its work.

        Only a shortcut for re-sends: :meth:`apply_batch` still decides, in its transaction.
        A read that fails says False, so the batch takes the normal path and its errors.
        """
        try:
            return self._db.execute(
                "SELECT 1 FROM batches WHERE run_id=? AND seq=? "
                "UNION ALL SELECT 1 FROM runs WHERE run_id=? AND state!='running' LIMIT 1",
                (run_id, seq, run_id)).fetchone() is not None
        except sqlite3.Error:
            return False

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run row as a dict, or None."""
        rows = list(self._rows("WHERE run_id=?", (run_id,)))
        return rows[0] if rows else None

    def runs(self, limit: int = RUNS_SHOWN) -> list[dict[str, Any]]:
        """Newest runs first."""
        return list(self._rows("ORDER BY started_at DESC LIMIT ?", (limit,)))

    def _rows(self, where: str, args: tuple[Any, ...]) -> Iterator[dict[str, Any]]:
        for r in self._db.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs {where}", args):
            row = dict(zip(RUN_COLUMNS, r, strict=True))
            row["meta"] = json.loads(row["meta"])
            fin = row["finished_at"]
            row["duration_s"] = round(max(0.0, fin - row["started_at"]), 3) if fin else None
            yield row

    def _summary_blobs(self, run_id: str) -> tuple[bytes, bytes] | None:
        row = None
        if self._has_table("run_figures"):
            row = self._db.execute("SELECT stats, audit FROM run_figures WHERE run_id=?", (run_id,)).fetchone()
        if row is None:  # an older release's store, not upgraded yet (a full disk)
            row = self._db.execute("SELECT stats, audit FROM runs WHERE run_id=? AND state='complete' "
                                   "AND stats IS NOT NULL", (run_id,)).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def run_summaries(self, run_id: str) -> tuple[StatsSummary, AuditSummary] | None:
        """The merged aggregates of a complete run (one of the RUN_FIGURES_KEPT latest)."""
        blobs = self._summary_blobs(run_id)
        return None if blobs is None else (StatsSummary.from_bytes(blobs[0]), AuditSummary.from_bytes(blobs[1]))

    def _figures_of(self, key: str, blobs: tuple[bytes, bytes]) -> dict[str, Any]:
        """The figures of the summaries ``blobs``: the copy kept under ``key`` if it is theirs,
        else computed from them."""
        if self._has_table("figures_docs"):
            row = self._db.execute("SELECT digest, doc FROM figures_docs WHERE key=?", (key,)).fetchone()
            if row is not None and bytes(row[0]) == _digest(*blobs):
                return read_figures(row[1])
        return read_figures(figures_json(StatsSummary.from_bytes(blobs[0]), AuditSummary.from_bytes(blobs[1])))

    def run_figures(self, run_id: str) -> dict[str, Any] | None:
        """``{"stats": figures, "audit": figures}`` of a complete run (one of the RUN_FIGURES_KEPT
        latest)."""
        blobs = self._summary_blobs(run_id)
        return None if blobs is None else self._figures_of(_run_key(run_id), blobs)

    def cumulative_figures(self) -> tuple[int, dict[str, Any]]:
        """(complete runs, ``{"stats": figures, "audit": figures}``) over every complete run."""
        row = self._one("SELECT runs, stats, audit FROM cumulative WHERE id=1")
        if row is None:
            return 0, read_figures(figures_json(StatsSummary.empty(), AuditSummary.empty()))
        return row[0], self._figures_of(CUMULATIVE_KEY, (bytes(row[1]), bytes(row[2])))

    def _drop_stale_docs(self) -> None:
        """Delete the figure copies whose summaries changed under them (an older release masked
        them): they may hold plaintext passwords the summaries no longer do."""
        if not self._has_table("figures_docs"):
            return
        stale = []
        for key, digest in self._db.execute("SELECT key, digest FROM figures_docs").fetchall():
            if key == CUMULATIVE_KEY:
                row = self._one("SELECT stats, audit FROM cumulative WHERE id=1")
                blobs = None if row is None else (bytes(row[0]), bytes(row[1]))
            else:
                blobs = self._summary_blobs(key[4:])
            if blobs is None or _digest(*blobs) != bytes(digest):
                stale.append(key)
        if stale:
            with self._tx():
                self._db.executemany("DELETE FROM figures_docs WHERE key=?", [(k,) for k in stale])

    def cumulative(self) -> tuple[int, StatsSummary, AuditSummary]:
        """(complete runs, merged stats, merged audit) over every complete run."""
        row = self._db.execute("SELECT runs, stats, audit FROM cumulative WHERE id=1").fetchone()
        if row is None:
            return 0, StatsSummary.empty(), AuditSummary.empty()
        return row[0], StatsSummary.from_bytes(row[1]), AuditSummary.from_bytes(row[2])

    def last_complete_run(self) -> str | None:
        """Id of the most recently completed run (of those with figures)."""
        row = None
        if self._has_table("run_figures"):
            row = self._db.execute("SELECT f.run_id FROM run_figures f LEFT JOIN runs r USING (run_id) "
                                   "ORDER BY r.finished_at DESC LIMIT 1").fetchone()
        # An older release's store not upgraded yet (a full disk), or one it completed runs in
        # after a roll-back: their figures are in the runs' rows.
        old = self._db.execute("SELECT run_id, finished_at FROM runs WHERE state='complete' AND stats IS NOT NULL "
                               "ORDER BY finished_at DESC LIMIT 1").fetchone()
        if old is not None and (row is None or old[1] > self._finished_at(row[0])):
            return str(old[0])
        return row[0] if row else None

    def _finished_at(self, run_id: str) -> float:
        got = self._db.execute("SELECT finished_at FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return float(got[0]) if got and got[0] is not None else 0.0

    def has_room(self) -> None:
        """Raise StoreError unless the state's file system is writable with :data:`ROOM_NEEDED`
        bytes free (``statvfs``: nothing is written, no file made).

        A write into the database cannot tell: once the consumer has worked, its WAL and pages
        have room inside them, and a full disk took such a write (a review). Nor may the check
        need a file of its own: a state disk out of inodes, where SQLite still commits into its
        files, then stopped the consumer (a second review)."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError as e:
            raise StoreError(f"state directory unavailable: {e.strerror or e}") from None
        if st.f_flag & os.ST_RDONLY:
            raise StoreError("state directory is on a read-only file system")
        free = st.f_bavail * st.f_frsize
        if free < ROOM_NEEDED:
            raise StoreError(f"state disk full: {free / (1 << 20):.1f} MB free, "
                             f"{ROOM_NEEDED >> 20} MB needed to commit batches")

    def writable(self) -> None:
        """Raise StoreError if a write cannot commit now (disk full, read-only)."""
        self.has_room()
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO probe (id, filler) VALUES (1, randomblob(64))")
