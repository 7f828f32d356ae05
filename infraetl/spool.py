"""The producer's durable state: runs and every sealed frame until it is ACKed.

A frame is written here (and committed) before it is sent, and stays until
the consumer ACKs it, so a producer killed at any point re-sends after a
restart. Frames are stored sealed: nothing is in plaintext at rest. Once
ACKed, a frame's bytes are dropped; its row goes too once its run is over
(the run's row keeps the ACK counts), so the spool stays bounded across runs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exceptions import StoreError
from .schema import split_filtered
from .sqlite import RunRowPruner, Tx, open_db

#: A finished run's row goes once it is past the RUNS_KEPT newest runs and RUN_ROWS_KEPT_S old
#: (at most PRUNE_CHUNK at a time): ``status`` and the dashboard show far fewer, a start-run's
#: nonce is checked for minutes, not days.
RUNS_KEPT = 10_000
RUN_ROWS_KEPT_S = 30 * 86_400
PRUNE_CHUNK = 500
PRUNE_EVERY_S = 600.0  # at most once in this many seconds (by an index on finished_at)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,           -- JSON: users, nat, seed, source, batch_size
    state       TEXT NOT NULL,           -- running | complete | failed | cancelled
    produced    INTEGER NOT NULL DEFAULT 0,   -- good users spooled
    batches     INTEGER NOT NULL DEFAULT 0,   -- data batches spooled
    quarantine  TEXT NOT NULL DEFAULT '{}',   -- JSON reason -> count (producer side)
    ended       INTEGER NOT NULL DEFAULT 0,   -- END frame spooled (the source is done)
    reason      TEXT,
    url         TEXT,
    created_at  REAL NOT NULL,
    finished_at REAL,
    acked_batches INTEGER NOT NULL DEFAULT 0,   -- data batches the consumer ACKed
    acked_users   INTEGER NOT NULL DEFAULT 0,   -- their users
    nonce       TEXT,                -- the start-run request's nonce (taken once, restarts too)
    outcome     TEXT                 -- JSON: what the consumer counted (kept, quarantined) once complete
);
CREATE TABLE IF NOT EXISTS frames (
    run_id   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    users    INTEGER NOT NULL,
    frame    BLOB,                        -- NULL once ACKed
    acked    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX IF NOT EXISTS frames_unacked ON frames (acked, run_id, seq);
"""


@dataclass
class RunRow:
    """One run as the producer knows it."""

    run_id: str
    spec: dict[str, Any]
    state: str
    produced: int
    batches: int
    quarantine: dict[str, int]
    ended: bool
    reason: str | None
    url: str | None
    created_at: float
    finished_at: float | None
    acked_batches: int = 0
    acked_users: int = 0
    #: What the consumer counted of a complete run ({"kept": ..., "quarantined": ...}), if it said.
    outcome: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape ``infraetl-ctl status`` shows."""
        return {
            "run_id": self.run_id, "state": self.state, "source": self.spec.get("source"),
            "requested": self.spec.get("users"), "produced": self.produced,
            "sent": self.batches, "acked": self.acked_batches, "acked_users": self.acked_users,
            # The consumer's counts once it said them; nothing of a failed or cancelled run counts.
            "applied_users": self._counted("kept", self.acked_users),
            "quarantined": self._quarantined(),
            # Users the run's --nat left out (not faults).
            "filtered": sum(split_filtered(self.quarantine)[1].values()),
            "reason": self.reason, "url": self.url,
            "created_at": self.created_at, "finished_at": self.finished_at,
        }


    def _quarantined(self) -> int:
        quarantine, filtered = split_filtered(self.quarantine)
        counted = self._counted("quarantined", sum(quarantine.values()))
        outcome = self.outcome or {}
        if type(outcome.get("quarantined")) is int and not outcome.get("filtered_apart"):
            counted = max(0, counted - sum(filtered.values()))  # an older consumer counted them in
        return counted

    def _counted(self, what: str, otherwise: int) -> int:
        if self.state in ("failed", "cancelled"):
            return 0 if what == "kept" else otherwise
        got = (self.outcome or {}).get(what)
        return got if type(got) is int else otherwise


class Spool:
    """SQLite spool of one producer (used from one thread only)."""

    def __init__(self, path: Path) -> None:
        self._db = open_db(path, SCHEMA, synchronous="NORMAL", what="the spool")
        # Debian's SQLite zeroes every freed page (SECURE_DELETE), so an ACK that drops a
        # frame wrote its ~216 KB again. The frames are Fernet tokens, worthless without the
        # key; FAST zeroes only what costs no extra write (ACK 0.79 -> 0.12 ms of CPU a frame).
        self._db.execute("PRAGMA secure_delete=FAST")
        self._prune_rows = RunRowPruner("created_at", also="AND run_id NOT IN (SELECT run_id FROM frames)")
        self._upgrade()

    def _upgrade(self) -> None:
        """Add what a spool of an older release lacks, in place: the runs' ACK counts (counted
        from their frames), the start-run nonce (and its index), the consumer's counts, the
        index of the runs by age."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        with self._tx():
            if "acked_batches" not in have:
                self._db.execute("ALTER TABLE runs ADD COLUMN acked_batches INTEGER NOT NULL DEFAULT 0")
                self._db.execute("ALTER TABLE runs ADD COLUMN acked_users INTEGER NOT NULL DEFAULT 0")
            # A release before the counters ACKed into the frames only (so did one rolled back to,
            # then forward again: its runs showed 0 ACKed for good; a review). Counted from the
            # frames where they hold more; this release's own never do.
            self._db.execute(
                "WITH f AS (SELECT run_id, COUNT(*) AS n, SUM(users) AS u FROM frames "
                "WHERE kind='data' AND acked=1 GROUP BY run_id) "
                "UPDATE runs SET acked_batches=f.n, acked_users=f.u FROM f "
                "WHERE f.run_id=runs.run_id AND f.n > runs.acked_batches")
            self._db.execute("DELETE FROM frames WHERE acked=1 AND run_id IN "
                             "(SELECT run_id FROM runs WHERE state!='running')")
        for column in ("nonce", "outcome"):
            if column not in have:
                with self._tx():
                    self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")
        # `status` lists the newest runs on every poll, and a start the running ones: without an
        # index each read every run.
        for name, sql in (("runs_nonce", "CREATE INDEX IF NOT EXISTS runs_nonce ON runs (nonce)"),
                          ("runs_created", "CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at)"),
                          ("runs_running", "CREATE INDEX IF NOT EXISTS runs_running ON runs (created_at) "
                                           "WHERE state='running'"),
                          ("runs_finished", "CREATE INDEX IF NOT EXISTS runs_finished ON runs (finished_at) "
                                            "WHERE state!='running'")):
            if not self._db.execute("SELECT 1 FROM sqlite_master WHERE name=?", (name,)).fetchone():
                with self._tx():
                    self._db.execute(sql)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- runs --
    def create_run(self, run_id: str, spec: dict[str, Any], *, nonce: str | None = None) -> None:
        """Record a new run (state running), started by the control request ``nonce``."""
        with self._tx():
            self._db.execute(
                "INSERT INTO runs (run_id, spec, state, created_at, nonce) VALUES (?, ?, 'running', ?, ?)",
                (run_id, json.dumps(spec), time.time(), nonce),
            )

    def started_by(self, nonce: str) -> str | None:
        """The run a start-run request with this nonce started, if any."""
        try:
            row = self._db.execute("SELECT run_id FROM runs WHERE nonce=?", (nonce,)).fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"state database unavailable: {e}") from None
        return None if row is None else str(row[0])

    def add_frame(self, run_id: str, seq: int, kind: str, users: int, frame: bytes,
                  quarantine: dict[str, int] | None = None, *,
                  finish: tuple[str, str | None] | None = None) -> None:
        """Durably spool a sealed frame (before it is ever sent) and count it on its run.

        ``finish`` ((state, reason)) closes the run in the same transaction: an ABORT's run
        is over the moment its frame is spooled, and a producer killed between the two would
        leave it running for ever (its ABORT ACKed, nothing left to complete it).
        """
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO frames (run_id, seq, kind, users, frame) VALUES (?, ?, ?, ?, ?)",
                (run_id, seq, kind, users, frame),
            )
            if kind == "data":
                row = self._db.execute("SELECT quarantine FROM runs WHERE run_id=?", (run_id,)).fetchone()
                q = json.loads(row[0]) if row else {}
                for reason, n in (quarantine or {}).items():
                    q[reason] = q.get(reason, 0) + n
                self._db.execute(
                    "UPDATE runs SET produced=produced+?, batches=batches+1, quarantine=? WHERE run_id=?",
                    (users, json.dumps(q), run_id),
                )
            elif kind in ("end", "abort"):
                self._db.execute("UPDATE runs SET ended=1 WHERE run_id=?", (run_id,))
            if finish is not None:
                self._finish(run_id, finish[0], reason=finish[1])

    def ack(self, run_id: str, seq: int) -> bool:
        """Mark a frame ACKed and drop its bytes (its row too once the run is over); count it on
        its run. True if it was not ACKed before."""
        with self._tx():
            return self._ack(run_id, seq)

    def settle(self, run_id: str, seq: int | None, *, finish: tuple[str, str | None] | None,
               url: str | None = None, outcome: dict[str, Any] | None = None) -> bool:
        """An answer of the consumer, in one transaction: the frame ``seq`` ACKed (None: none),
        and the run closed as ``finish`` ((state, reason); None: left as it is). True if this
        closed the run.

        One transaction: a producer killed between an END's ACK and its run's close came back
        with the run running for good, its END ACKed and nothing left to close it (a review).
        """
        if seq is None and finish is None:
            return False  # nothing to write (an answer to nothing in flight: a copy, say)
        with self._tx():
            if seq is not None:
                self._ack(run_id, seq)
            return finish is not None and self._close(run_id, finish[0], reason=finish[1], url=url, outcome=outcome)

    def _ack(self, run_id: str, seq: int) -> bool:
        rows = self._db.execute(
            "UPDATE frames SET acked=1, frame=NULL WHERE run_id=? AND seq=? AND acked=0 "
            "RETURNING kind, users", (run_id, seq)).fetchall()
        if not rows:
            return False
        if rows[0][0] == "data":
            self._db.execute("UPDATE runs SET acked_batches=acked_batches+1, acked_users=acked_users+? "
                             "WHERE run_id=?", (rows[0][1], run_id))
        self._db.execute("DELETE FROM frames WHERE run_id=? AND seq=? AND "
                         "(SELECT state FROM runs WHERE run_id=?) IS NOT 'running'", (run_id, seq, run_id))
        return True

    def fail_run(self, run_id: str, seq: int, abort: bytes, reason: str, *, state: str = "failed") -> None:
        """Give a run up, in one transaction: forget its frames still waiting for an ACK (nobody
        wants them now), spool the ABORT that tells the consumer, and close the run as ``state``
        (failed, or cancelled by an operator)."""
        with self._tx():
            self._db.execute("DELETE FROM frames WHERE run_id=? AND acked=0", (run_id,))
            self._db.execute("INSERT OR IGNORE INTO frames (run_id, seq, kind, users, frame) "
                             "VALUES (?, ?, 'abort', 0, ?)", (run_id, seq, abort))
            self._db.execute("UPDATE runs SET ended=1 WHERE run_id=?", (run_id,))
            self._finish(run_id, state, reason=reason)

    def completed_after_all(self, run_id: str, url: str | None, *, outcome: dict[str, Any] | None = None) -> bool:
        """A run given up here (failed, cancelled) that the consumer had completed before the
        ABORT reached it: it is counted there, so it is complete here too, with what the consumer
        counted. True if it changed."""
        with self._tx():
            changed = self._db.execute(
                "UPDATE runs SET state='complete', url=COALESCE(?, url), outcome=COALESCE(?, outcome), "
                "reason=reason || ' (too late: the consumer had completed the run)' "
                "WHERE run_id=? AND state IN ('failed', 'cancelled')",
                (url, json.dumps(outcome) if outcome else None, run_id)).rowcount
        return changed > 0

    def replace_frame(self, run_id: str, seq: int, frame: bytes) -> None:
        """Store a re-sealed frame in place of the old one."""
        with self._tx():
            self._db.execute("UPDATE frames SET frame=? WHERE run_id=? AND seq=? AND acked=0",
                             (frame, run_id, seq))

    def finish(self, run_id: str, state: str, *, reason: str | None = None, url: str | None = None,
               outcome: dict[str, Any] | None = None) -> bool:
        """Close a run as complete, failed or cancelled; False if it was not running (closed
        already: an answer came again).

        Its ACKed frames' rows go: the run's row keeps their counts, and a run that is over is
        never produced again. Frames still waiting for an ACK (an ABORT, say) stay until it comes.
        """
        with self._tx():
            return self._close(run_id, state, reason=reason, url=url, outcome=outcome)

    def _close(self, run_id: str, state: str, *, reason: str | None, url: str | None,
               outcome: dict[str, Any] | None) -> bool:
        closed = self._finish(run_id, state, reason=reason, url=url)
        if outcome is not None:
            self._db.execute("UPDATE runs SET outcome=? WHERE run_id=? AND outcome IS NULL",
                             (json.dumps(outcome), run_id))
        return closed

    def _finish(self, run_id: str, state: str, *, reason: str | None = None, url: str | None = None) -> bool:
        closed = self._db.execute(
            "UPDATE runs SET state=?, reason=COALESCE(?, reason), url=COALESCE(?, url), finished_at=? "
            "WHERE run_id=? AND state='running'",
            (state, reason, url, time.time(), run_id),
        ).rowcount > 0
        self._db.execute("DELETE FROM frames WHERE run_id=? AND acked=1", (run_id,))
        # Every run's row stayed for good (~0.3 KB a run, a review): the finished ones past both
        # the RUNS_KEPT newest and RUN_ROWS_KEPT_S old go, the oldest first, unless a frame of
        # theirs still waits.
        self._prune_rows(self._db, kept=RUNS_KEPT, kept_s=RUN_ROWS_KEPT_S, chunk=PRUNE_CHUNK, every_s=PRUNE_EVERY_S)
        return closed

    def close_aborted(self) -> list[str]:
        """Close the runs a producer killed between spooling their ABORT and closing them left
        running (before ``add_frame`` did both at once); return their ids."""
        with self._tx():
            stuck = [r[0] for r in self._db.execute(
                "SELECT run_id FROM runs WHERE state='running' AND ended=1 AND run_id IN "
                "(SELECT run_id FROM frames WHERE kind='abort')").fetchall()]
            for run_id in stuck:
                self._finish(run_id, "failed", reason="aborted; closed after a producer restart")
        return stuck

    def answered_unclosed(self) -> list[RunRow]:
        """Runs left running with their END answered and nothing else waiting: a producer of an
        older release killed between recording the END's ACK and closing the run (see
        :meth:`settle`). Only the consumer's answer, asked again, can close them."""
        return self._runs("WHERE r.state='running' AND r.ended=1 AND NOT EXISTS "
                          "(SELECT 1 FROM frames f WHERE f.run_id=r.run_id AND f.acked=0)", ())

    def respool_end(self, run_id: str, seq: int, frame: bytes) -> None:
        """Spool a run's END again (sealed anew), to be sent until it is answered."""
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO frames (run_id, seq, kind, users, frame, acked) "
                             "VALUES (?, ?, 'end', 0, ?, 0)", (run_id, seq, frame))

    def unacked(self) -> Iterator[tuple[str, int, str, bytes]]:
        """Every frame still waiting for an ACK: (run, seq, kind, frame)."""
        yield from self._db.execute(
            "SELECT run_id, seq, kind, frame FROM frames WHERE acked=0 ORDER BY run_id, seq"
        ).fetchall()

    def unfinished_runs(self) -> list[RunRow]:
        """Runs a restarted producer must carry on."""
        return self._runs("WHERE r.state='running' ORDER BY r.created_at", ())

    def run(self, run_id: str) -> RunRow | None:
        """One run, or None."""
        rows = self._runs("WHERE r.run_id=?", (run_id,))
        return rows[0] if rows else None

    def runs(self, limit: int = 20) -> list[RunRow]:
        """The newest runs first."""
        return self._runs("ORDER BY r.created_at DESC LIMIT ?", (limit,))

    def _runs(self, where: str, args: tuple[Any, ...]) -> list[RunRow]:
        try:
            rows = self._db.execute(
                "SELECT r.run_id, r.spec, r.state, r.produced, r.batches, r.quarantine, r.ended, r.reason, "
                "r.url, r.created_at, r.finished_at, r.acked_batches, r.acked_users, r.outcome "
                f"FROM runs r {where}", args,
            ).fetchall()
        except sqlite3.Error as e:  # a `status` must not end the daemon's loop (a review)
            raise StoreError(f"state database unavailable: {e}") from None
        return [
            RunRow(r[0], json.loads(r[1]), r[2], r[3], r[4], json.loads(r[5]), bool(r[6]), r[7], r[8],
                   r[9], r[10], r[11], r[12], json.loads(r[13]) if r[13] else None)
            for r in rows
        ]

    def _tx(self) -> Tx:
        return Tx(self._db)
