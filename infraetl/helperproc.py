"""A helper process of the consumer: a fresh interpreter on one end of a socket pair.

Both of the consumer's kinds of helper (``scorer``: zxcvbn ahead of the audit; ``batchwork``:
whole batches validated and aggregated) start, fail and stop the same way, here. A helper is
``python -m MODULE FD``: it imports only its module (not fork: ZeroMQ has threads; not
multiprocessing's spawn, which re-imports the daemon's whole ``__main__``), without the key in
its environment. Once one fails (it died, hung or answered out of step) it is killed, the
failure is counted, and a new one is started at most every :data:`RESTART_EVERY` seconds;
meanwhile the daemon does the work itself.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

#: Seconds a send to, or a wait for, a helper may take before the helper is given up on.
TAKE_TIMEOUT = 10.0
#: Seconds between starts of a new helper after one failed.
RESTART_EVERY = 10.0


def serve(conn: Connection, handle: Callable[[Any], Any]) -> None:
    """A helper's loop: each request read from ``conn`` answered with ``handle(request)``, in order,
    until the daemon closes the socket.

    A thread reads the requests as they come, so the daemon's sends never wait for this one's
    work or for its unread answers, whatever the sizes: a send blocked on each side is a
    deadlock (the zxcvbn helper had none, and stalled the consumer 20 s on re-sent batches of
    5,000 users, whose answers nobody read: a review). The daemon bounds what it has asked.
    """
    # Ctrl-C, systemd's SIGTERM and a SIGHUP (the daemon's key reload; `systemctl kill -s HUP`
    # reaches the whole unit) are for the daemon; a helper ends when the daemon closes the
    # socket (one dying first is logged as a failure).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def read() -> None:
        while True:
            try:
                inbox.put(conn.recv())
            except (EOFError, OSError):
                inbox.put(None)
                return

    threading.Thread(target=read, daemon=True).start()
    while (request := inbox.get()) is not None:
        answer = handle(request)
        try:
            conn.send(answer)
        except OSError:
            return  # the daemon is gone or closed the socket


class HelperProcess:
    """One helper: started on first use, replaced after a failure (main thread only)."""

    def __init__(self, module: str, what: str, *, on_failure: Callable[[str], None],
                 on_reset: Callable[[], None] = lambda: None) -> None:
        self.module = module
        self.what = what
        self._on_failure = on_failure
        self._on_reset = on_reset
        self.conn: Connection | None = None
        self._proc: Any = None
        self._restart_at = 0.0

    def alive(self) -> bool:
        """Whether the helper runs, starting it if it is due."""
        if self.conn is not None:
            return True
        if time.monotonic() < self._restart_at:
            return False
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_ENCRYPTION_KEY")}
        try:
            ours, theirs = socket.socketpair()
        except OSError as e:
            self.fail(f"cannot start the {self.what}: {e}")
            return False
        try:
            proc = subprocess.Popen([sys.executable, "-m", self.module, str(theirs.fileno())],
                                    pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                                    close_fds=True)
        except OSError as e:
            ours.close()
            self.fail(f"cannot start the {self.what}: {e}")
            return False
        finally:
            theirs.close()
        # A helper that stops reading must not block the main thread in a send once the pipe
        # is full: such a send fails, and the helper with it.
        # Nor one that stops part-way through an answer block it in a receive.
        timeout = struct.pack("ll", int(TAKE_TIMEOUT), 0)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        self.conn, self._proc = Connection(ours.detach()), proc
        return True

    def send(self, obj: Any) -> bool:
        """Send one request; False (and the helper failed) if it does not take it."""
        assert self.conn is not None
        try:
            self.conn.send(obj)
        except (OSError, ValueError) as e:
            self.fail(f"the {self.what} stopped taking work: {e}")
            return False
        return True

    def receive(self, timeout: float) -> tuple[bool, Any]:
        """(True, the next answer), or (False, None) with the helper failed."""
        assert self.conn is not None
        try:
            if not self.conn.poll(timeout):
                self.fail(f"the {self.what} did not answer within {timeout:.0f} s")
                return False, None
            return True, self.conn.recv()
        except (EOFError, OSError, pickle.UnpicklingError) as e:
            self.fail(f"the {self.what} died: {e.__class__.__name__}")
            return False, None

    def fail(self, why: str) -> None:
        """Forget the helper and everything it owed; the daemon does the work itself."""
        if self._proc is not None:
            self._proc.kill()
            self._reap(1)
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self._restart_at = time.monotonic() + RESTART_EVERY
        self._on_reset()
        self._on_failure(why)

    def retry_now(self) -> None:
        """Let the next use start a new helper at once (tests)."""
        self._restart_at = 0.0

    def _reap(self, timeout: float) -> None:
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def close(self) -> None:
        """Stop the helper: it exits by itself when the socket closes."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self._proc is not None:
            self._reap(2)

    @property
    def pid(self) -> int | None:
        """The helper's pid while it runs."""
        return self._proc.pid if self._proc is not None else None
