"""Plumbing both daemons share: sd_notify, signals, logging, rate-limited warnings.

The daemons run in the foreground and let systemd supervise them: no
forking, no pid files. A signal handler only sets a flag that the main loop
reads (circus); a second SIGTERM forces the stop (rq).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from types import FrameType

logger = logging.getLogger(__name__)

_PRIORITY = {
    logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """One line per event, level first; ``<N>`` prefixes under journald."""

    def __init__(self, journald: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self._journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record).replace("\n", " | ")
        if self._journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return f"{time.strftime('%H:%M:%S')} {line}"


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger for a daemon entry point (stderr, one line per event)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Notifier:
    """The sd_notify protocol: datagrams to ``$NOTIFY_SOCKET`` (a no-op without it)."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._addr: str | None = None
        self._sock: socket.socket | None = None
        if address:
            # "@name" is an abstract-namespace socket: a leading NUL byte.
            self._addr = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if enabled else None
        self._last_ping = 0.0

    def notify(self, *lines: str) -> None:
        """Send ``KEY=value`` lines; failures are logged once and never fatal."""
        if self._sock is None or self._addr is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._addr)
        except OSError as e:
            logger.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), e)

    def ready(self, status: str) -> None:
        """Tell systemd the daemon is up (sockets bound, state open)."""
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        """Update the one-line STATUS shown by ``systemctl status``."""
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        """Tell systemd the daemon is shutting down."""
        self.notify("STOPPING=1", "STATUS=stopping")

    def ping(self) -> None:
        """Send WATCHDOG=1 if half the watchdog interval has passed."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.notify("WATCHDOG=1")

    def close(self) -> None:
        """Close the datagram socket."""
        if self._sock is not None:
            self._sock.close()


class Signals:
    """Flags set by SIGTERM/SIGINT (stop) and SIGHUP (reload); a second stop forces exit."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False

    def install(self) -> None:
        """Install the handlers (main thread only)."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stop:
            # Second request: the operator means it. Nothing in flight is lost:
            # the spool and the store are transactional.
            os._exit(1)
        self.stop = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload = True


class RateLimitedLog:
    """Log a warning at most once per ``period`` seconds per reason, with a count of the rest."""

    def __init__(self, log: logging.Logger, period: float = 60.0) -> None:
        self._log = log
        self._period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, reason: str, msg: str, *args: object) -> None:
        """Log ``msg`` for ``reason`` unless one was logged in the last period."""
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self._period:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        skipped = self._suppressed.pop(reason, 0)
        self._last[reason] = now
        if skipped:
            self._log.warning(msg + " (%d more like this since the last report)", *args, skipped)
        else:
            self._log.warning(msg, *args)
