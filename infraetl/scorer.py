"""zxcvbn in a helper process, ahead of the audit that needs it.

zxcvbn is a third of the consumer's time while its cache is cold (100–250 µs
per first-seen password), and ``zxcvbn-rs-py`` holds the GIL, so a thread
cannot overlap it. The consumer therefore drains the batches waiting on its
socket, opens them, and hands each batch's first-seen distinct passwords to
one helper process (:meth:`Scorer.prefetch`) *before* it validates and
aggregates the first of them. When the audit of a batch needs its scores
(:meth:`Scorer.take`), the helper has usually computed them on the other core.

The helper runs the very same function (``entropy.zxcvbn_strength``), so the
figures cannot change; whatever it does not deliver (it died, it hangs, or
``workers=0``) the audit computes in-process, as before. A dead or hung helper
is killed and counted, and a new one is started at most every
``helperproc.RESTART_EVERY`` seconds. Plaintext passwords cross a local pipe to a
child of the same daemon (same user, same sandbox); nothing is written.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable
from functools import lru_cache
from multiprocessing.connection import Connection
from typing import Any

from . import entropy, helperproc
from .helperproc import HelperProcess

#: Requests the helper may have queued; more would only make the pipe fill up.
MAX_PENDING = 8

Scores = dict[str, tuple[int, float]]


def _serve(conn: Connection) -> None:
    """The helper's loop: a list of passwords in, their zxcvbn strengths out, in order.

    The consumer sends every distinct password of a batch (it cannot cheaply ask its own
    cache which are new), so the helper keeps an LRU of the same size as the audit's.
    Requests are read as they come (``helperproc.serve``): the daemon's sends never wait.
    """
    strength = lru_cache(maxsize=entropy.CACHE_SIZE)(entropy.zxcvbn_strength)
    helperproc.serve(conn, lambda passwords: list(map(strength, passwords)))


class Scorer:
    """The consumer's side of the helper (main thread only)."""

    def __init__(self, workers: int, *, on_failure: Callable[[str], None] = lambda why: None) -> None:
        self.enabled = workers > 0
        self._helper = HelperProcess("infraetl.scorer", "zxcvbn helper", on_failure=on_failure,
                                     on_reset=self._forget_owed)
        self._next_ticket = 1
        self._pending: deque[tuple[int, list[str]]] = deque()
        self._done: Scores = {}
        self._inflight: set[str] = set()

    def _alive(self) -> bool:
        return self.enabled and self._helper.alive()

    def _forget_owed(self) -> None:
        self._pending.clear()
        self._inflight.clear()

    def close(self) -> None:
        """Stop the helper: it exits by itself when the socket closes."""
        self._helper.close()

    @property
    def pid(self) -> int | None:
        """The helper's pid while it runs."""
        return self._helper.pid

    # -- requests --
    def prefetch(self, passwords: Iterable[Any]) -> int | None:
        """Queue one batch's distinct passwords; the ticket for :meth:`take` (None: nothing owed)."""
        if not self._alive():
            return None
        # A full list may hold answers nobody will take (a re-sent batch already applied takes
        # none): the oldest that have come make room, in order; their scores go with the next
        # take (a review found the list full for good, and the socket with it).
        conn = self._helper.conn
        while len(self._pending) >= MAX_PENDING and conn is not None and conn.poll(0):
            if not self._receive(helperproc.TAKE_TIMEOUT):
                return None
        if len(self._pending) >= MAX_PENDING:
            return None
        inflight, done = self._inflight, self._done
        # Any msgpack value can sit in a column until validation: only strings are looked at.
        distinct = {p for p in passwords if type(p) is str and p}
        new = [p for p in distinct if p not in inflight and p not in done]
        if not new:
            # Whatever this batch needs is owed under earlier tickets, or already here.
            return self._next_ticket - 1 if self._pending else None
        if not self._helper.send(new):
            return None
        ticket = self._next_ticket
        self._next_ticket += 1
        self._pending.append((ticket, new))
        inflight.update(new)
        return ticket

    def take(self, ticket: int | None, timeout: float | None = None) -> Scores:
        """The scores of this ticket and of every earlier one not taken yet (empty on failure).

        Batches are taken in the order they were queued; a batch that was never taken (a
        duplicate, a store error) hands its scores on to the next one.
        """
        while ticket is not None and self._pending and self._pending[0][0] <= ticket:
            if not self._receive(helperproc.TAKE_TIMEOUT if timeout is None else timeout):
                return {}
        out, self._done = self._done, {}
        return out

    def _receive(self, timeout: float) -> bool:
        ok, results = self._helper.receive(timeout)
        if not ok:
            return False
        _, passwords = self._pending.popleft()
        if not isinstance(results, list) or len(results) != len(passwords):
            self._helper.fail("the zxcvbn helper answered out of step")
            return False
        self._done.update(zip(passwords, results, strict=True))
        self._inflight.difference_update(passwords)
        return True


if __name__ == "__main__":  # the helper: python -m infraetl.scorer FD
    _serve(Connection(int(sys.argv[1])))
