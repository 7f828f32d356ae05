"""The daemons speak systemd's protocols: sd_notify, the watchdog, signals, journald-style logs.

The daemon-level tests start the real daemons with ``NOTIFY_SOCKET`` pointing at
a datagram socket the test owns (a path and an abstract-namespace address),
exactly as systemd would for ``Type=notify``, and read what they say.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infraetl import config
from infraetl.daemon import JournalFormatter, Notifier, journal_stream, redact
from infraetl.localcluster import wait_for, write_key_file


class NotifyListener:
    """A systemd stand-in: receives sd_notify datagrams with the sender's pid (SCM_CREDENTIALS)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[tuple[float, int, dict[str, str]]] = []

    def receive(self, timeout: float) -> tuple[float, int, dict[str, str]] | None:
        """One message (time, sender pid, fields), or None after ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = 0
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        msg = (time.monotonic(), pid, fields)
        self.messages.append(msg)
        return msg

    def wait_for(self, key: str, timeout: float) -> tuple[float, int, dict[str, str]]:
        """Receive until a message carries ``key``; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.receive(max(deadline - time.monotonic(), 0.01))
            if msg is not None and key in msg[2]:
                return msg
        raise AssertionError(f"no {key} within {timeout}s; got {[m[2] for m in self.messages]}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    """A notify socket the test owns: a file path, or ``@name`` in the abstract namespace."""
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
    else:
        address = f"@infraetl-test-{uuid.uuid4().hex}"
    lst = NotifyListener(address)
    yield lst
    lst.close()


def daemon_argv(role: str, state: Path) -> list[str]:
    if role == "producer":
        return [sys.executable, "-m", "infraetl.producer", "--state-dir", str(state),
                "--control-bind", "tcp://127.0.0.1:*", "--data-connect", "tcp://127.0.0.1:9",
                "--ack-connect", "tcp://127.0.0.1:9"]
    return [sys.executable, "-m", "infraetl.consumer", "--state-dir", str(state),
            "--data-bind", "tcp://127.0.0.1:*", "--ack-bind", "tcp://127.0.0.1:*",
            "--http-bind", "127.0.0.1:0"]


def daemon_env(key_file: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("INFRAETL_", "ETL_ENCRYPTION_KEY", "NOTIFY_SOCKET", "WATCHDOG_",
                                "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY"))}
    env.update(ETL_ENCRYPTION_KEY_FILE=str(key_file), PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    """Start daemons as real processes; stop whatever is left (terminate → wait → kill)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def bound_ports(role: str, endpoints: dict) -> list[int]:
    if role == "producer":
        return [int(endpoints["control"].rsplit(":", 1)[1])]
    return [int(endpoints["data"].rsplit(":", 1)[1]), int(endpoints["ack"].rsplit(":", 1)[1]),
            int(endpoints["http"].rsplit(":", 1)[1])]


@pytest.mark.parametrize("role", ["producer", "consumer"])
def test_ready_after_bind_then_watchdog_then_stopping(role: str, listener: NotifyListener, spawn,
                                                        key_file: Path, tmp_path: Path) -> None:
    state = tmp_path / role
    env = daemon_env(key_file, NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="300000")
    proc = spawn(daemon_argv(role, state), env, tmp_path / f"{role}.log")
    log = lambda: (tmp_path / f"{role}.log").read_text()  # noqa: E731

    at, pid, ready = listener.wait_for("READY", 30)
    # READY=1 comes once, from the main pid itself, before any watchdog ping...
    assert ready["READY"] == "1" and [m[2] for m in listener.messages].index(ready) == len(listener.messages) - 1
    assert not any("WATCHDOG" in m[2] or "READY" in m[2] for m in listener.messages[:-1]), listener.messages
    assert pid == proc.pid and ready.get("MAINPID") == str(proc.pid)
    assert ready.get("STATUS") and "\n" not in ready["STATUS"]
    # ...and only once every socket is bound: each one accepts a connection right now.
    endpoints = json.loads((state / "endpoints.json").read_text())
    assert endpoints["pid"] == proc.pid
    for port in bound_ports(role, endpoints):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

    # WATCHDOG=1 at half of WATCHDOG_USEC (0.15 s), from the main loop.
    pings = [listener.wait_for("WATCHDOG", 5)[0] for _ in range(4)]
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert all(0.1 <= g <= 1.0 for g in gaps), gaps
    assert all(m[1] == proc.pid for m in listener.messages)

    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, _, stopping = listener.wait_for("STOPPING", 5)
    assert stopping["STOPPING"] == "1"
    assert proc.wait(5) == 0, log()
    assert time.monotonic() - t0 < 5
    assert "Traceback" not in log()


def test_no_watchdog_pings_when_systemd_expects_none(listener: NotifyListener, spawn, key_file: Path,
                                                     tmp_path: Path) -> None:
    # WATCHDOG_PID names another process: the pings are not ours to send.
    env = daemon_env(key_file, NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    proc = spawn(daemon_argv("producer", tmp_path / "p"), env, tmp_path / "p.log")
    listener.wait_for("READY", 30)
    while listener.receive(1.0) is not None:
        pass
    assert not any("WATCHDOG" in m[2] for m in listener.messages)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0


def test_without_notify_socket_the_daemon_runs_and_stops_cleanly(spawn, key_file: Path, tmp_path: Path) -> None:
    proc = spawn(daemon_argv("producer", tmp_path / "p"), daemon_env(key_file), tmp_path / "p.log")
    wait_for(lambda: (tmp_path / "p" / "endpoints.json").exists(), 30, "the producer to bind")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0


def test_sighup_rereads_the_keys_without_a_restart(spawn, tmp_path: Path) -> None:
    old, new = config.new_key(), config.new_key()
    key_file = write_key_file(tmp_path / "etl-key", old)
    proc = spawn(daemon_argv("producer", tmp_path / "p"), daemon_env(key_file), tmp_path / "p.log")
    control = wait_for(lambda: _endpoints(tmp_path / "p"), 30, "the producer to bind")["control"]

    def ctl(key: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "infraetl.ctl", "--producer", control, "status"],
                              env=daemon_env(write_key_file(tmp_path / "ctl-key", key)),
                              capture_output=True, text=True, timeout=30)

    # An operator already on the new key (it seals with the new one, still opens the old).
    rotated = f"{new}\n{old}"
    assert "not authorised" in ctl(rotated).stderr
    # Rotation, step 1 on the daemon: the old key still seals, both open.
    write_key_file(key_file, f"{old}\n{new}")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "re-read 2 key(s)" in (tmp_path / "p.log").read_text(), 10, "the reload")
    assert ctl(rotated).returncode == 0 and ctl(old).returncode == 0
    assert proc.poll() is None
    text = (tmp_path / "p.log").read_text()
    assert old not in text and new not in text


def _endpoints(state: Path) -> dict | None:
    try:
        return json.loads((state / "endpoints.json").read_text())
    except (OSError, ValueError):
        return None


# --- the pieces, without a daemon -------------------------------------------

def test_notifier_sends_to_an_abstract_address_and_is_silent_without_one() -> None:
    lst = NotifyListener(f"@infraetl-test-{uuid.uuid4().hex}")
    try:
        n = Notifier(env={"NOTIFY_SOCKET": lst.address, "WATCHDOG_USEC": "2000000"})
        assert n.watchdog_interval == 1.0
        n.ready("up")
        n.ping()
        n.ping()  # within the interval: nothing sent
        n.status("a\nmulti-line   status")
        n.stopping()
        got = []
        while (m := lst.receive(0.2)) is not None:
            got.append(m[2])
        assert got == [{"READY": "1", "STATUS": "up", "MAINPID": str(os.getpid())}, {"WATCHDOG": "1"},
                       {"STATUS": "a multi-line status"}, {"STOPPING": "1", "STATUS": "stopping"}]
        n.close()
    finally:
        lst.close()
    quiet = Notifier(env={})
    assert not quiet.enabled and quiet.watchdog_interval is None
    quiet.ready("x")
    quiet.ping()


def test_notifier_refreshes_status_from_a_summary() -> None:
    lst = NotifyListener(f"@infraetl-test-{uuid.uuid4().hex}")
    try:
        n = Notifier(env={"NOTIFY_SOCKET": lst.address})
        n.ready("up")
        assert lst.receive(0.5) is not None  # READY=1 (before it, a ping asks for more time)
        n.status_every = 0.0
        n.summary = lambda: "3 runs complete"
        n.ping()
        n.ping()  # unchanged text: not sent again
        got = lst.receive(0.5)
        assert got is not None and got[2] == {"STATUS": "3 runs complete"}
        assert lst.receive(0.2) is None
    finally:
        lst.close()


def test_notifier_survives_a_vanished_socket(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock"), "WATCHDOG_USEC": "1"})
    with caplog.at_level(logging.WARNING):
        assert n.notify("READY=1") is False
        assert n.notify("WATCHDOG=1") is False
    assert len(caplog.records) == 1  # logged once, not at every ping


def test_journal_prefixes_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        assert journal_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f.fileno())
        assert not journal_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f.fileno())
        assert not journal_stream({}, f.fileno())
    record = logging.LogRecord("infraetl.x", logging.WARNING, __file__, 1, "disk %s\nfull", ("/var",), None)
    assert JournalFormatter(journald=True).format(record) == "<4>WARNING infraetl.x: disk /var | full"
    assert JournalFormatter(journald=False).format(record).endswith(" WARNING infraetl.x: disk /var | full")


def test_daemon_logs_in_journald_style(spawn, key_file: Path, tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    log.touch()
    st = log.stat()
    env = daemon_env(key_file, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    proc = spawn(daemon_argv("producer", tmp_path / "p"), env, log)
    wait_for(lambda: (tmp_path / "p" / "endpoints.json").exists(), 30, "the producer to bind")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0
    lines = log.read_text().splitlines()
    assert lines and all(line[:3] in ("<6>", "<4>", "<3>", "<7>", "<2>") for line in lines), lines
    assert key_file.read_text().strip() not in log.read_text()


def test_redact_hides_keys_and_tokens_only() -> None:
    key = config.new_key()
    from cryptography.fernet import Fernet

    token = Fernet(key.encode()).encrypt(b"secret").decode()
    text = f"key={key} token {token} run r20261125-180455-3f2a9c at tcp://10.0.0.1:5555"
    out = redact(text)
    assert key not in out and token not in out
    assert out.count("[redacted]") == 2 and "r20261125-180455-3f2a9c" in out and "tcp://10.0.0.1:5555" in out


def test_a_long_start_asks_systemd_for_more_time_until_ready() -> None:
    # Upgrading an older store takes ~1 ms a run before READY=1: past TimeoutStartSec=, systemd
    # killed it part-way (a review).
    lst = NotifyListener(f"@infraetl-test-{uuid.uuid4().hex}")
    try:
        n = Notifier(env={"NOTIFY_SOCKET": lst.address})
        n.ping()
        n.ping()  # within EXTEND_EVERY_S: not again
        got = lst.receive(0.5)
        assert got is not None and got[2]["EXTEND_TIMEOUT_USEC"] == "60000000"
        assert lst.receive(0.2) is None
        n.ready("up")
        assert lst.receive(0.5) is not None  # READY=1
        n._last_extend = float("-inf")
        n.ping()
        assert lst.receive(0.2) is None  # started: nothing more to ask for
    finally:
        lst.close()
