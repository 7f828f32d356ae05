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
:data:`RESTART_EVERY` seconds. Plaintext passwords cross a local pipe to a
child of the same daemon (same user, same sandbox); nothing is written.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import lru_cache
from multiprocessing.connection import Connection
from typing import Any

from . import entropy

logger = logging.getLogger(__name__)

#: Seconds :meth:`Scorer.take` waits for a batch's scores before it gives up on the helper.
TAKE_TIMEOUT = 10.0
#: Seconds between starts of a new helper after one failed.
RESTART_EVERY = 10.0
#: Requests the helper may have queued; more would only make the pipe fill up.
MAX_PENDING = 8

Scores = dict[str, tuple[int, float]]


def _serve(conn: Connection) -> None:
    """The helper's loop: a list of passwords in, their zxcvbn strengths out, in order.

    The consumer sends every distinct password of a batch (it cannot cheaply ask its own
    cache which are new), so the helper keeps an LRU of the same size as the audit's.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the daemon, which stops us
    strength = lru_cache(maxsize=entropy.CACHE_SIZE)(entropy.zxcvbn_strength)
    while True:
        try:
            passwords = conn.recv()
            conn.send(list(map(strength, passwords)))
        except (EOFError, OSError):
            return  # the daemon is gone or closed the pipe


class Scorer:
    """The consumer's side of the helper (main thread only)."""

    def __init__(self, workers: int, *, on_failure: Callable[[str], None] = lambda why: None) -> None:
        self.enabled = workers > 0
        self._on_failure = on_failure
        self._conn: Connection | None = None
        self._proc: Any = None
        self._next_ticket = 1
        self._pending: deque[tuple[int, list[str]]] = deque()
        self._done: Scores = {}
        self._inflight: set[str] = set()
        self._restart_at = 0.0

    # -- the helper process --
    def _alive(self) -> bool:
        if self._conn is not None:
            return True
        if not self.enabled or time.monotonic() < self._restart_at:
            return False
        # A fresh interpreter that imports only this module (not fork: ZeroMQ has threads; not
        # multiprocessing's spawn, which re-imports the daemon's whole __main__), and without
        # the key in its environment: it has no use for it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_ENCRYPTION_KEY")}
        try:
            ours, theirs = socket.socketpair()
        except OSError as e:
            self._fail(f"cannot start the zxcvbn helper: {e}")
            return False
        try:
            proc = subprocess.Popen([sys.executable, "-m", "infraetl.scorer", str(theirs.fileno())],
                                    pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                                    close_fds=True)
        except OSError as e:
            ours.close()
            self._fail(f"cannot start the zxcvbn helper: {e}")
            return False
        finally:
            theirs.close()
        # A helper that stops reading must not block the main thread in a send once the pipe
        # is full (only take() polls with a timeout): such a send fails, and the helper with it.
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(TAKE_TIMEOUT), 0))
        self._conn, self._proc = Connection(ours.detach()), proc
        return True

    def _fail(self, why: str) -> None:
        """Forget the helper and everything it owed; the audit computes in-process."""
        if self._proc is not None:
            self._proc.kill()
            self._reap(1)
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._pending.clear()
        self._inflight.clear()
        self._restart_at = time.monotonic() + RESTART_EVERY
        self._on_failure(why)

    def _reap(self, timeout: float) -> None:
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def close(self) -> None:
        """Stop the helper: it exits by itself when the socket closes."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._reap(2)

    @property
    def pid(self) -> int | None:
        """The helper's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

    # -- requests --
    def prefetch(self, passwords: Iterable[Any]) -> int | None:
        """Queue one batch's distinct passwords; the ticket for :meth:`take` (None: nothing owed)."""
        if not self._alive() or len(self._pending) >= MAX_PENDING:
            return None
        inflight, done = self._inflight, self._done
        # Any msgpack value can sit in a column until validation: only strings are looked at.
        distinct = {p for p in passwords if type(p) is str and p}
        new = [p for p in distinct if p not in inflight and p not in done]
        if not new:
            # Whatever this batch needs is owed under earlier tickets, or already here.
            return self._next_ticket - 1 if self._pending else None
        assert self._conn is not None
        try:
            self._conn.send(new)
        except (OSError, ValueError) as e:
            self._fail(f"the zxcvbn helper stopped taking work: {e}")
            return None
        ticket = self._next_ticket
        self._next_ticket += 1
        self._pending.append((ticket, new))
        inflight.update(new)
        return ticket

    def take(self, ticket: int | None, timeout: float = TAKE_TIMEOUT) -> Scores:
        """The scores of this ticket and of every earlier one not taken yet (empty on failure).

        Batches are taken in the order they were queued; a batch that was never taken (a
        duplicate, a store error) hands its scores on to the next one.
        """
        while ticket is not None and self._pending and self._pending[0][0] <= ticket:
            if not self._receive(timeout):
                return {}
        out, self._done = self._done, {}
        return out

    def _receive(self, timeout: float) -> bool:
        assert self._conn is not None
        try:
            if not self._conn.poll(timeout):
                self._fail(f"the zxcvbn helper did not answer within {timeout:.0f} s")
                return False
            results = self._conn.recv()
        except (EOFError, OSError, pickle.UnpicklingError) as e:
            self._fail(f"the zxcvbn helper died: {e.__class__.__name__}")
            return False
        _, passwords = self._pending.popleft()
        if not isinstance(results, list) or len(results) != len(passwords):
            self._fail("the zxcvbn helper answered out of step")
            return False
        self._done.update(zip(passwords, results, strict=True))
        self._inflight.difference_update(passwords)
        return True


if __name__ == "__main__":  # the helper: python -m infraetl.scorer FD
    _serve(Connection(int(sys.argv[1])))
