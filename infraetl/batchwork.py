"""Data batches validated and aggregated in helper processes, in parallel.

The consumer's main thread was its bottleneck: alone on a host it kept one core busy and the
zxcvbn helper half of the other, and end to end it was the last one working long after the
producer had read everything. So the per-user work of a data batch (validation, the
statistics, the audit with its zxcvbn scores: :func:`compute`) runs in ``--batch-workers``
helper processes. The main thread opens a frame (authentication, replay window, schema), hands
its plaintext to a worker (:meth:`BatchWorkers.submit`), opens the next ones meanwhile, and
takes the results back in frame order (:meth:`BatchWorkers.take`) to commit and ACK them as
before: one writer, one order, the same delivery guarantees.

A worker runs the very same :func:`compute` on the very same message, and sends back the
partials' own serialised form (what the store keeps), so the figures cannot change. Whatever a
worker does not deliver (it died, hung, answered out of step, or none runs) the main thread
computes in-process, as before; a failed worker is killed, counted and replaced (see
``helperproc``). The password fingerprint key and the plaintext cross a local socket to a child
of the same daemon (same user, same sandbox); nothing is written, and the daemon's key is not in
the worker's environment.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from . import helperproc
from .audit import AuditSummary
from .helperproc import HelperProcess
from .schema import split_filtered
from .stream_stats import StatsSummary
from .validate import validate_columns

#: Batches one worker may hold (queued and in hand): enough to keep it busy while the main
#: thread commits, few enough that its answers never fill the socket it writes them to.
MAX_PENDING = 3


class Work(NamedTuple):
    """What a data batch comes to: its partials, its counts and the stages' seconds."""

    stats: StatsSummary
    audit: AuditSummary
    kept: int            # users validation kept
    quarantined: int     # users the producer and validation quarantined
    seconds: tuple[float, float, float]  # validate, stats, audit
    encoded: tuple[bytes, bytes] | None = None  # (stats, audit) as the store keeps them


def compute(msg: dict[str, Any], fp_key: bytes, reveal: bool) -> Work:
    """Validate a data message's columns and build its statistics and audit partials."""
    t0 = time.perf_counter()
    checked = validate_columns(msg["cols"])
    t1 = time.perf_counter()
    stats = StatsSummary.from_columns(checked.cols)
    quarantine = Counter(msg["quarantine"])
    quarantine.update(checked.quarantine)
    stats.add_counts(quarantine=quarantine, warnings=checked.warnings)
    t2 = time.perf_counter()
    audit = AuditSummary.from_columns(checked.cols, fp_key, reveal=reveal)
    t3 = time.perf_counter()
    return Work(stats, audit, kept=msg["n"] - sum(checked.quarantine.values()),
                quarantined=sum(split_filtered(quarantine)[0].values()), seconds=(t1 - t0, t2 - t1, t3 - t2))


def _serve(conn: Connection) -> None:
    """A worker's loop: (fp_key, reveal, plaintext) in, the batch's :class:`Work` out, in order.

    Requests are read as they come (``helperproc.serve``): the main thread's sends never wait.
    """
    from .wire import _unpack

    fp_key = b""

    def handle(request: Any) -> Any:
        nonlocal fp_key
        key, reveal, plain = request
        if key != fp_key:
            fp_key = key  # one object per value: pwinfo caches fingerprints by the key's identity
        try:
            work = compute(_unpack(plain), fp_key, reveal)
            return ("ok", work.stats.to_bytes(canonical=False), work.audit.to_bytes(),
                    work.kept, work.quarantined, work.seconds)
        except Exception as e:  # the main thread computes it again, and handles what it raises
            return ("error", f"{type(e).__name__}: {e}")

    helperproc.serve(conn, handle)


class _Worker:
    def __init__(self) -> None:
        self.helper: HelperProcess
        self.pending: deque[int] = deque()  # tickets sent, not answered yet, in order


class BatchWorkers:
    """The consumer's side of the workers (main thread only).

    Tickets count up in the order batches are submitted, and the main thread handles batches
    in that order: when it takes (or forgets) ticket *t*, every earlier ticket is done with,
    and an answer to one of them that is still on its way is dropped when it arrives.
    """

    def __init__(self, workers: int, *, on_failure: Callable[[str], None] = lambda why: None) -> None:
        self._workers = [_Worker() for _ in range(workers)]
        for w in self._workers:
            w.helper = HelperProcess("infraetl.batchwork", "batch worker", on_failure=on_failure,
                                     on_reset=partial(self._reset, w))
        self._next_ticket = 1
        self._done_upto = 0                    # every ticket up to this one is taken or forgotten
        self._where: dict[int, _Worker] = {}   # ticket -> its worker, until answered
        self._answers: dict[int, Any] = {}     # answers received before they were asked for

    @property
    def pids(self) -> list[int]:
        """The workers' pids, of those running."""
        return [pid for w in self._workers if (pid := w.helper.pid) is not None]

    def close(self) -> None:
        """Stop every worker."""
        for w in self._workers:
            w.helper.close()

    def submit(self, plain: bytes, fp_key: bytes, reveal: bool) -> int | None:
        """Hand a data message's plaintext to the least busy worker; its ticket for :meth:`take`,
        or None (every worker full, or none running): the caller computes it in-process."""
        best: _Worker | None = None
        for w in self._workers:
            if w.pending and w.helper.conn is not None:
                self._collect(w)  # answers already there: they no longer count against it
            if len(w.pending) < MAX_PENDING and (best is None or len(w.pending) < len(best.pending)) \
                    and w.helper.alive():
                best = w
        if best is None or not best.helper.send((fp_key, reveal, plain)):
            return None
        ticket = self._next_ticket
        self._next_ticket += 1
        best.pending.append(ticket)
        self._where[ticket] = best
        return ticket

    def take(self, ticket: int, timeout: float | None = None) -> Work | None:
        """The :class:`Work` of ``ticket``, or None if its worker failed or refused it (the
        caller then computes it in-process)."""
        self._done_upto = max(self._done_upto, ticket - 1)
        if ticket not in self._answers:
            w = self._where.get(ticket)
            limit = helperproc.TAKE_TIMEOUT if timeout is None else timeout
            while w is not None and ticket in w.pending and w.helper.conn is not None:
                if not self._receive(w, limit):
                    break
        answer = self._answers.pop(ticket, None)
        self._done_with(ticket)
        if answer is None or answer[0] != "ok":
            return None
        _, stats, audit, kept, quarantined, seconds = answer
        return Work(StatsSummary.from_bytes(stats), AuditSummary.from_bytes(audit), kept, quarantined,
                    seconds, encoded=(stats, audit))

    def forget(self, ticket: int | None) -> None:
        """The batch of ``ticket`` will not be taken (a duplicate, or dropped unACKed)."""
        if ticket is not None:
            self._done_with(ticket)

    def _done_with(self, ticket: int) -> None:
        """Every ticket up to ``ticket`` is taken or will never be: drop what is kept of them (an
        answer kept for a batch whose handling failed before it was taken, say)."""
        self._done_upto = max(self._done_upto, ticket)
        self._where.pop(ticket, None)
        for t in [t for t in self._answers if t <= ticket]:
            del self._answers[t]

    def _reset(self, w: _Worker) -> None:
        """``w`` failed: nothing it owed will come."""
        for ticket in w.pending:
            self._where.pop(ticket, None)
        w.pending.clear()

    def _collect(self, w: _Worker) -> None:
        """Receive the answers ``w`` has ready, without waiting."""
        while w.pending and w.helper.conn is not None and w.helper.conn.poll(0):
            if not self._receive(w, 0):
                return

    def _receive(self, w: _Worker, timeout: float) -> bool:
        ok, answer = w.helper.receive(timeout)
        if not ok:
            return False  # the helper failed: its pending tickets were cleared
        ticket = w.pending.popleft()
        if not (isinstance(answer, tuple) and answer and answer[0] in ("ok", "error")
                and (answer[0] == "error" or len(answer) == 6)):
            w.helper.fail("a batch worker answered out of step")
            return False
        self._where.pop(ticket, None)
        if ticket > self._done_upto:
            self._answers[ticket] = answer
        return True


if __name__ == "__main__":  # a worker: python -m infraetl.batchwork FD
    _serve(Connection(int(sys.argv[1])))
