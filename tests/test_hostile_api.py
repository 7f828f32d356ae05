"""The RandomUser client against a hostile server (raw sockets on 127.0.0.1): bounded memory and
time, one clear sentence, no secret shown, nothing left running (found by a review)."""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from apiserver import ApiServer
from helpers import wait_for

from infraetl.exceptions import ConfigError, SourceError
from infraetl.sources import RunPlan, accept_all
from infraetl.sources import randomuser as ru
from infraetl.sources.randomuser import RandomUserSource, _retry_after

Handler = Callable[[socket.socket, bytes], None]


class Hostile:
    """A server answering every request with ``handler(conn, request_head)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                got = conn.recv(4096)
                if not got:
                    return
                head += got
            self.requests += 1
            try:
                self.handler(conn, head)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def hostile() -> Iterator[Callable[[Handler], Hostile]]:
    servers: list[Hostile] = []

    def start(handler: Handler) -> Hostile:
        servers.append(Hostile(handler))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _reply(conn: socket.socket, status: str, body: bytes, **headers: str) -> None:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    head += "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    conn.sendall(head.encode("latin-1") + b"\r\n" + body)


def _failure(url: str, *, deadline: float = 20.0, **options: object) -> str:
    source = RandomUserSource(api_url=url, backoff_base=0.01, backoff_cap=0.02, timeout=2.0,
                              retry_budget=3, **options)  # type: ignore[arg-type]
    plan = RunPlan(users=10, batch_size=10, deadline=time.monotonic() + deadline)
    with pytest.raises(SourceError) as e:
        list(source.batches(plan, accept_all))
    return str(e.value)


def _source_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("randomuser")]


def test_a_compression_bomb_fails_the_run_without_filling_memory(hostile, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(ru, "MAX_BODY", 1 << 20)
    bomb = gzip.compress(b" " * (64 << 20), 9)  # 64 MB of spaces in ~64 KB
    srv = hostile(lambda c, _: _reply(c, "200 OK", bomb, Content_Type="application/json",
                                      Content_Encoding="gzip"))
    why = _failure(f"http://127.0.0.1:{srv.port}/api/")
    assert "larger than 1 MB" in why and "not retried" in why
    assert srv.requests == 1


def test_a_trickling_body_ends_with_the_run_and_leaves_no_thread(hostile) -> None:  # noqa: ANN001
    before = set(_source_threads())

    def trickle(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        while True:
            conn.sendall(b" ")
            time.sleep(0.2)  # the hostile server's pace, not a synchronisation

    srv = hostile(trickle)
    t = time.monotonic()
    why = _failure(f"http://127.0.0.1:{srv.port}/api/", deadline=2.0)
    assert "deadline reached" in why and time.monotonic() - t < 5
    # The request in flight ends with the run: no thread (nor its socket) outlives it.
    wait_for(lambda: set(_source_threads()) <= before, 5, "the source's threads to end")


def test_credentials_in_the_api_url_are_never_shown(hostile) -> None:  # noqa: ANN001
    srv = hostile(lambda c, _: _reply(c, "401 Unauthorized", b"no"))
    why = _failure(f"http://apiuser:S3cretPass@127.0.0.1:{srv.port}/api/?token=T0ken")
    assert "401" in why and f"127.0.0.1:{srv.port}/api/" in why
    assert "S3cretPass" not in why and "apiuser" not in why and "T0ken" not in why


@pytest.mark.parametrize("location", ["http://[::1/", "http://" + "a" * 300, "http://\xe9\xe9/"])
def test_a_redirect_to_an_unusable_address_is_one_sentence(hostile, location: str) -> None:  # noqa: ANN001
    srv = hostile(lambda c, _: c.sendall(
        b"HTTP/1.1 302 Found\r\nLocation: " + location.encode("latin-1") + b"\r\nContent-Length: 0\r\n\r\n"))
    why = _failure(f"http://127.0.0.1:{srv.port}/api/")
    assert "cannot be used" in why or "redirected to" in why or "connection failed" in why, why
    assert "internal error" not in why


def test_a_redirect_to_another_host_is_not_followed(hostile) -> None:  # noqa: ANN001
    with ApiServer() as api:  # a real API page, on another origin
        srv = hostile(lambda c, _: c.sendall(
            f"HTTP/1.1 302 Found\r\nLocation: {api.url.replace('127.0.0.1', 'localhost')}?results=10"
            "\r\nContent-Length: 0\r\n\r\n".encode()))
        why = _failure(f"http://127.0.0.1:{srv.port}/api/")
    assert "another host, or plain http, is not followed" in why


def test_what_the_server_says_cannot_blow_the_stack_or_the_terminal(hostile) -> None:  # noqa: ANN001
    deep = b'{"error": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    srv = hostile(lambda c, _: _reply(c, "200 OK", deep))
    why = _failure(f"http://127.0.0.1:{srv.port}/api/")
    assert "nested too deeply" in why and "RecursionError" not in why
    escape = {"error": "\x1b]0;pwned\x07\x1b[2J all good"}
    srv = hostile(lambda c, _: _reply(c, "200 OK", json.dumps(escape).encode()))
    why = _failure(f"http://127.0.0.1:{srv.port}/api/")
    assert "all good" in why and "\x1b" not in why and "\x07" not in why


def test_a_deadline_says_what_the_run_got_when_no_retry_said_more(hostile) -> None:  # noqa: ANN001
    one = json.loads((ApiServer().answer("/api/?results=1&page=1&seed=s")).body)

    def same_user(conn: socket.socket, head: bytes) -> None:
        page = re.search(rb"[?&]page=(\d+)", head)
        one["info"]["page"] = int(page.group(1)) if page else 1
        _reply(conn, "200 OK", json.dumps(one).encode())

    srv = hostile(same_user)
    why = _failure(f"http://127.0.0.1:{srv.port}/api/", deadline=2.0, page_size=10)
    assert "only 1 of 10 users passed the checks" in why and "duplicate:login.uuid" in why


def test_retry_after_dates_in_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import email.utils

    when = email.utils.formatdate(time.time() + 100, usegmt=True)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        for value in (when, when.replace("GMT", "-0000")):
            got = _retry_after(value)
            assert got is not None and 95 <= got <= 101, value
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://h/", "http://", "http://h:99999/", "randomuser.me"])
def test_an_unusable_api_url_is_refused_up_front(url: str) -> None:
    with pytest.raises(ConfigError, match="is not an http:// or https:// address"):
        RandomUserSource(api_url=url)
