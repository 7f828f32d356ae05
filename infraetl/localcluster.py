"""A consumer and a producer as child processes on 127.0.0.1 (demo, bench, tests).

Both daemons bind ephemeral ports and write what they bound to
``endpoints.json`` in their state directories; this module waits for those
files instead of guessing ports. The key reaches the children through a
0600 file named by ``ETL_ENCRYPTION_KEY_FILE``: never on a command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import config
from .exceptions import InfraETLError


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate()`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise InfraETLError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def write_key_file(path: Path, key: str | None = None) -> Path:
    """Write a (new) Fernet key to ``path`` with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write((key or config.new_key()) + "\n")
    return path


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back until the block ends. An interrupt raised inside ``Popen``
    after its fork (while it waits for the child's exec) leaves a child nobody holds, which
    nothing stops: the daemon outlives the command that started it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {sig: signal.signal(sig, lambda n, f: caught.append(n)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for num in caught[:1]:  # now the child is ours to stop: act on the interrupt as before
            handler = old[signal.Signals(num)]
            if callable(handler):
                handler(num, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), num)


@dataclass
class Daemon:
    """One daemon child process and where it listens."""

    role: str
    state_dir: Path
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    endpoints: dict[str, Any] = field(default_factory=dict)
    _log: IO[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Daemon:
        """Start the process and wait until it has bound its sockets."""
        ep = self.state_dir / "endpoints.json"
        if ep.exists():
            ep.unlink()
        self._log = open(self.log_path, "ab")
        with _interrupts_deferred():
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

        def ready() -> dict[str, Any] | None:
            self.check()
            try:
                data = json.loads(ep.read_text())
            except (OSError, ValueError):
                return None
            return data if self.proc is not None and data.get("pid") == self.proc.pid else None

        try:
            self.endpoints = wait_for(ready, timeout, f"the {self.role} to bind its sockets")
        except BaseException:  # not up in time, or Ctrl-C / SIGTERM meanwhile: leave no orphan
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        """The child's pid."""
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send a signal to the child (only ours, by pid)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill9(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; return the exit status."""
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def check(self) -> None:
        """Raise InfraETLError naming the exit status and the log's last lines if the process
        was started and has exited (the log goes with a temporary directory: quote it now)."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = "\n".join(self.log().strip().splitlines()[-5:])
            raise InfraETLError(f"the {self.role} exited with status {self.proc.returncode}; its log ends:\n{tail}")

    def log(self) -> str:
        """Everything the daemon wrote so far."""
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""


class LocalCluster:
    """A consumer and a producer on 127.0.0.1 with a throw-away or given key."""

    def __init__(self, root: Path, *, key_file: Path | None = None, http_port: int = 0,
                 consumer_args: list[str] | None = None, producer_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.key_file = key_file or write_key_file(root / "etl-key")
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("INFRAETL_", "ETL_ENCRYPTION_KEY", "NOTIFY_SOCKET", "WATCHDOG_"))}
        base.update(env or {})
        base["ETL_ENCRYPTION_KEY_FILE"] = str(self.key_file)
        base["PYTHONUNBUFFERED"] = "1"
        self.env = base
        self.http_port = http_port
        self.consumer_args = consumer_args or []
        self.producer_args = producer_args or []
        self.consumer = self._consumer()
        self.producer: Daemon | None = None
        self.producer_control: str | None = None   # kept across producer restarts

    def _consumer(self) -> Daemon:
        d = self.root / "consumer"
        argv = [sys.executable, "-m", "infraetl.consumer", "--state-dir", str(d),
                "--data-bind", "tcp://127.0.0.1:*", "--ack-bind", "tcp://127.0.0.1:*",
                "--http-bind", f"127.0.0.1:{self.http_port}", *self.consumer_args]
        return Daemon("consumer", d, argv, self.env, self.root / "consumer.log")

    def _producer(self) -> Daemon:
        d = self.root / "producer"
        ep = self.consumer.endpoints
        argv = [sys.executable, "-m", "infraetl.producer", "--state-dir", str(d),
                "--data-connect", ep["data"], "--ack-connect", ep["ack"],
                "--control-bind", self.producer_control or "tcp://127.0.0.1:*", *self.producer_args]
        return Daemon("producer", d, argv, self.env, self.root / "producer.log")

    def start(self) -> LocalCluster:
        """Start the consumer, then the producer pointed at it."""
        self.consumer.start()
        self.start_producer()
        return self

    def start_producer(self) -> Daemon:
        """(Re)start the producer; a restart keeps its control endpoint."""
        # Known to stop() before it starts: an interrupt while it starts up must not orphan it.
        self.producer = self._producer()
        self.producer.start()
        self.producer_control = self.producer.endpoints["control"]
        return self.producer

    def restart_consumer(self) -> Daemon:
        """Start the consumer again on the very same endpoints."""
        ep = self.consumer.endpoints
        self.consumer = self._consumer()
        argv = self.consumer.argv
        argv[argv.index("--data-bind") + 1] = ep["data"]
        argv[argv.index("--ack-bind") + 1] = ep["ack"]
        argv[argv.index("--http-bind") + 1] = ep["http"]
        return self.consumer.start()

    @property
    def url(self) -> str:
        """The dashboard URL."""
        return str(self.consumer.endpoints["url"])

    @property
    def control(self) -> str:
        """The producer's control endpoint."""
        assert self.producer is not None
        return str(self.producer.endpoints["control"])

    def check(self) -> None:
        """Raise InfraETLError if a daemon this cluster started has exited (see Daemon.check)."""
        self.consumer.check()
        if self.producer is not None:
            self.producer.check()

    @contextmanager
    def blaming_daemons(self) -> Iterator[None]:
        """An error in the block is put down to a daemon of ours that has exited, if one has: a
        call to a producer that was killed while it answered said only "no answer within 10s"."""
        try:
            yield
        except InfraETLError:
            self.check()
            raise

    def stop(self) -> None:
        """Stop both daemons."""
        if self.producer is not None:
            self.producer.stop()
        self.consumer.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
