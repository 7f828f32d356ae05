"""Plumbing both daemons share: sd_notify, signals, logging, rate-limited warnings.

The daemons run in the foreground and let systemd supervise them: no
forking, no pid files. A signal handler only sets a flag that the main loop
reads (circus); a second SIGTERM forces the stop (rq).

sd_notify is the documented datagram protocol (``man sd_notify``): one
``AF_UNIX``/``SOCK_DGRAM`` message of newline-separated ``KEY=value`` lines
to ``$NOTIFY_SOCKET``; an address starting with ``@`` is in the abstract
namespace. Without ``$NOTIFY_SOCKET`` every call is a no-op, so the same
code runs under systemd, in tests and in a terminal.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)

_PRIORITY = {
    logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2,
}

# Defence in depth: nothing logs a key or a token on purpose, but an exception
# message might quote one. A Fernet key is 43 url-safe base64 characters and
# "="; a Fernet token starts with its version byte 0x80, "gAAAAA" in base64.
_SECRETS = re.compile(r"(?<![A-Za-z0-9_-])(?:[A-Za-z0-9_-]{43}=|gAAAAA[A-Za-z0-9_=-]{40,})(?![A-Za-z0-9_=-])")


def redact(text: str) -> str:
    """Replace anything shaped like a Fernet key or token with ``[redacted]``."""
    return _SECRETS.sub("[redacted]", text)


def journal_stream(env: dict[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is the journald stream systemd named in ``$JOURNAL_STREAM``.

    Comparing device and inode (as ``man systemd.exec`` advises) keeps a child
    whose stderr was redirected from writing ``<N>`` prefixes into a file.
    """
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """One line per event, level first; ``<N>`` priority prefixes under journald."""

    def __init__(self, journald: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self._journald = journald

    def format(self, record: logging.LogRecord) -> str:
        # A traceback stays one journal entry: its lines are joined with " | ".
        line = redact(super().format(record).replace("\n", " | "))
        if self._journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return f"{time.strftime('%H:%M:%S')} {line}"


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger for a daemon entry point (stderr, one line per event)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(journald=journal_stream()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # urllib3's debug lines hold each request's path and query: the API address's query (a token?)
    # is never shown, at any level.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))


#: While starting, each ping asks systemd for this much more time, at most every EXTEND_EVERY_S.
EXTEND_BY_S = 60.0
EXTEND_EVERY_S = 10.0


class Notifier:
    """The sd_notify protocol: datagrams to ``$NOTIFY_SOCKET`` (a no-op without it).

    ``watchdog_interval`` is half of ``$WATCHDOG_USEC`` in seconds (None when
    systemd expects no pings); :meth:`ping` sends ``WATCHDOG=1`` at most that
    often, so the main loop may call it on every turn. If ``summary`` is set
    to a callable, :meth:`ping` also refreshes ``STATUS=`` with its one-line
    result every ``status_every`` seconds when the text changed.
    """

    status_every = 5.0

    def __init__(self, address: str | None = None, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        address = env.get("NOTIFY_SOCKET") if address is None else address
        self._shown = address or ""
        self._addr: str | None = None
        self._sock: socket.socket | None = None
        if address and address[0] in "/@":
            # "@name" is an abstract-namespace socket: a leading NUL byte.
            self._addr = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        elif address:
            logger.warning("NOTIFY_SOCKET=%s is not a unix socket path; not notifying systemd", address)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_interval: float | None = int(usec) / 2e6 if enabled else None
        self.summary: Callable[[], str] | None = None
        self._last_ping = float("-inf")
        self._last_status_at = float("-inf")
        self._last_status = ""
        self._failed = False
        self._ready = False
        self._last_extend = float("-inf")

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines; a failure is logged once and never fatal."""
        if self._sock is None or self._addr is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode("utf-8"), self._addr)
        except OSError as e:
            if not self._failed:
                logger.warning("sd_notify to %s failed: %s", self._shown, e)
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> None:
        """Tell systemd the daemon is up (sockets bound, state open)."""
        self._last_status = _one_line(status)
        self._last_status_at = time.monotonic()
        self._ready = True
        self.notify("READY=1", f"STATUS={self._last_status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        """Update the one-line STATUS shown by ``systemctl status``."""
        self._last_status = _one_line(status)
        self._last_status_at = time.monotonic()
        self.notify(f"STATUS={self._last_status}")

    def stopping(self) -> None:
        """Tell systemd the daemon is shutting down."""
        self.notify("STOPPING=1", "STATUS=stopping")

    def ping(self) -> None:
        """Send WATCHDOG=1 if half the watchdog interval has passed (before READY=1, ask for more
        start-up time: EXTEND_TIMEOUT_USEC); refresh STATUS."""
        if self._sock is None:
            return
        now = time.monotonic()
        if not self._ready and now - self._last_extend >= EXTEND_EVERY_S:
            # Still starting (a long upgrade of the state): more time than TimeoutStartSec=, so
            # systemd does not kill it part-way (a review: ~1 ms a run of an older store).
            self._last_extend = now
            self.notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_BY_S * 1e6)}", "STATUS=starting: upgrading the state")
        if self.watchdog_interval is not None and now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.notify("WATCHDOG=1")
        if self.summary is not None and now - self._last_status_at >= self.status_every:
            self._last_status_at = now
            try:
                text = _one_line(self.summary())
            except Exception:  # a status line must never take the daemon down
                logger.debug("status summary failed", exc_info=True)
                return
            if text != self._last_status:
                self.status(text)

    def close(self) -> None:
        """Close the datagram socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:200]


def lock_state_dir(path: Path, role: str) -> int:
    """Create the state directory (0700) and hold an exclusive lock on it for the process's life;
    return the descriptor. A second daemon on the same directory would run the same runs twice
    (a producer) or fight over one database (a consumer): it exits with one sentence instead.

    The directory itself is locked (``flock``), so a read-only one can be locked too; the
    lock goes with the process, kill -9 included (the helper it starts does not inherit it).
    """
    from .exceptions import ConfigError
    from .sqlite import private_dir

    try:
        private_dir(path)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"cannot create the state directory {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(f"another infraetl daemon is using the state directory {path}: stop it first, "
                          f"or give this {role} a --state-dir of its own") from None
    return fd


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

    def allow(self, reason: str) -> bool:
        """True (and start a new period) if ``reason`` may be logged now."""
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self._period:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return False
        self._last[reason] = now
        return True

    def warning(self, reason: str, msg: str, *args: object) -> None:
        """Log ``msg`` for ``reason`` unless one was logged in the last period."""
        if not self.allow(reason):
            return
        skipped = self._suppressed.pop(reason, 0)
        if skipped:
            self._log.warning(msg + " (%d more like this since the last report)", *args, skipped)
        else:
            self._log.warning(msg, *args)


class Malloc:
    """glibc's allocator, tuned for a long-running daemon (a no-op elsewhere).

    Three settings, all measured (2 vCPUs, 100,000-user bench and 1,000,000-user soak):

    - **Two arenas.** Every thread that allocates (ZeroMQ's I/O thread, the HTTP
      server, the producer's worker) would otherwise get an arena of its own.
    - **Frame-sized buffers come from the heap, and stay there.** A batch's
      frame is a few hundred KB, and handling it allocates a dozen such
      buffers (msgpack, Fernet's padding, ciphertext and base64, ZeroMQ's
      copies, the spool). Left to ``mmap`` (a fixed 128 KB threshold, this
      class's first setting), each one was fresh pages: 870 page faults a
      batch on the producer and 530 on the consumer, and a third of the
      producer's CPU spent in the kernel. With :data:`MMAP_THRESHOLD` at 4 MB
      the buffers are reused: 14x fewer faults, the producer's CPU per user
      21-25 -> 15.5-16 µs, end to end +12-33% (side by side). Free memory at
      the top of the heap is given back beyond :data:`TRIM_THRESHOLD` (8 MB:
      as few faults as with 64 MB, and less RSS in the soak).
    - **Freed memory goes back in bulk:** :meth:`release` (``malloc_trim``)
      after each run and every :data:`TRIM_EVERY` batches gives back the free
      pages of every arena, so fragmentation cannot pile up: the consumer's
      RSS grew +29 to +40 MB from 10,000 to 1,000,000 users (+31 with the
      128 KB threshold, +41 to +50 with a 64 MB trim threshold; +72 to +87
      with glibc's defaults, whose *dynamic* threshold also keeps big buffers
      in the heap, but never trims them).
    """

    M_TRIM_THRESHOLD = -1
    M_ARENA_MAX = -8
    M_MMAP_THRESHOLD = -3
    MMAP_THRESHOLD = 4 << 20
    TRIM_THRESHOLD = 8 << 20
    TRIM_EVERY = 100

    def __init__(self) -> None:
        self._libc = None
        self._ticks = 0
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt, libc.malloc_trim  # noqa: B018 — glibc, not musl
            self._libc = libc
        except (OSError, AttributeError):
            pass

    def tune(self) -> None:
        """Set the options; call before the daemon starts its threads."""
        if self._libc is not None:
            self._libc.mallopt(self.M_ARENA_MAX, 2)
            self._libc.mallopt(self.M_MMAP_THRESHOLD, self.MMAP_THRESHOLD)
            self._libc.mallopt(self.M_TRIM_THRESHOLD, self.TRIM_THRESHOLD)

    def release(self) -> None:
        """Give the free memory of each heap back to the OS."""
        if self._libc is not None:
            self._libc.malloc_trim(0)

    def tick(self) -> None:
        """Count a batch; :meth:`release` every :data:`TRIM_EVERY` of them."""
        self._ticks += 1
        if self._ticks % self.TRIM_EVERY == 0:
            self.release()


#: The process's allocator (one per process; see :class:`Malloc`).
MALLOC = Malloc()
