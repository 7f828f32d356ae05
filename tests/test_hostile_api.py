"""The RandomUser client against a hostile server (raw sockets on 127.0.0.1): bounded memory and
time, one clear sentence, no secret shown, nothing left running (found by a review)."""

from __future__ import annotations

import gzip
import json
import re
import socket
import struct
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

    def __init__(self, handler: Handler, *, raw: bool = False) -> None:
        self.handler = handler
        self.raw = raw  # the handler reads the request itself (TLS, say)
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
            if self.raw:
                self.requests += 1
                self.handler(conn, b"")
                return
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

    def start(handler: Handler, raw: bool = False) -> Hostile:
        servers.append(Hostile(handler, raw=raw))
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


@pytest.mark.parametrize(("head", "byte"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n", b" "),  # a body, a byte at a time
    # Headers are read inside requests, before any body: only hanging up ends that read.
    (b"HTTP/1.1 200 OK\r\n", b"X"),
], ids=["body", "headers"])
def test_a_trickling_answer_ends_with_the_run_and_leaves_no_thread(hostile, head: bytes, byte: bytes) -> None:  # noqa: ANN001
    before = set(_source_threads())

    def trickle(conn: socket.socket, _: bytes) -> None:
        conn.sendall(head)
        while True:
            conn.sendall(byte)
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


def test_no_hop_of_a_redirect_chain_leaves_the_origin(hostile) -> None:  # noqa: ANN001
    """127.0.0.1 -> localhost -> 127.0.0.1: the last hop alone was checked, so the request (its
    query, its seed) went through another host and back (a review). Each hop is checked first."""
    hosts: list[str] = []

    def chain(conn: socket.socket, head: bytes) -> None:
        host = re.search(rb"\r\nhost: ([^\r]+)", head, re.I)
        hosts.append(host.group(1).decode() if host else "?")
        path = head.split(b" ")[1]
        port = srv.port
        target = f"http://localhost:{port}/hop" if path.startswith(b"/api/") else f"http://127.0.0.1:{port}/final"
        conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n".encode())

    srv = hostile(chain)
    why = _failure(f"http://127.0.0.1:{srv.port}/api/")
    assert "another host, or plain http, is not followed" in why, why
    assert hosts and all(h.startswith("127.0.0.1") for h in hosts), hosts


def test_a_redirect_loop_is_one_sentence(hostile) -> None:  # noqa: ANN001
    srv = hostile(lambda c, _: c.sendall(
        # The server hangs up after each answer, and says so: a client reusing the connection
        # met a reset now and then, and retried (a CI run).
        f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{srv.port}/api/\r\nContent-Length: 0\r\n"
        "Connection: close\r\n\r\n".encode()))
    why = _failure(f"http://127.0.0.1:{srv.port}/api/")
    assert "redirected over 5 times" in why and "not retried" in why, why


@pytest.mark.parametrize("status", ["429 Too Many Requests", "503 Service Unavailable"])
def test_retry_after_is_heeded_but_never_sooner_than_the_back_off(hostile, status: str) -> None:  # noqa: ANN001
    """A 503's Retry-After was ignored; "Retry-After: 0" spent every retry at once (a review)."""
    times: list[float] = []

    def busy(conn: socket.socket, _: bytes) -> None:
        times.append(time.monotonic())
        _reply(conn, status, b"busy", Retry_After="0")

    srv = hostile(busy)
    source = RandomUserSource(api_url=f"http://127.0.0.1:{srv.port}/api/", backoff_base=0.2, backoff_cap=0.2,
                              timeout=2.0, retry_budget=3)
    with pytest.raises(SourceError, match="after 3 retries"):
        list(source.batches(RunPlan(users=10, batch_size=10, deadline=time.monotonic() + 30), accept_all))
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(gaps) == 3 and min(gaps) >= 0.1, gaps  # half the 0.2 s step at least
    waited: list[float] = []

    def later(conn: socket.socket, _: bytes) -> None:
        waited.append(time.monotonic())
        if len(waited) == 1:
            _reply(conn, status, b"busy", Retry_After="1")
        else:
            _reply(conn, "500 Internal Server Error", b"down")

    srv2 = hostile(later)
    _failure(f"http://127.0.0.1:{srv2.port}/api/")
    assert waited[1] - waited[0] >= 0.9, waited  # the server's second, not the 0.01 s back-off


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
        page, seed = re.search(rb"[?&]page=(\d+)", head), re.search(rb"[?&]seed=([^& ]+)", head)
        one["info"]["page"] = int(page.group(1)) if page else 1
        one["info"]["seed"] = seed.group(1).decode() if seed else "s"  # the run's own: else refused
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


def _good_page(head: bytes) -> bytes:
    path = head.split(b" ", 2)[1].decode()
    return ApiServer().answer(path).body


@pytest.mark.parametrize("first", ["truncated", "reset", "bad gzip"])
def test_a_body_cut_short_is_retried_not_a_failed_run(hostile, first: str) -> None:  # noqa: ANN001
    # Reading the body in pieces let urllib3's own errors through: the run failed as an internal error.
    seen = []

    def flaky(conn: socket.socket, head: bytes) -> None:
        seen.append(head)
        if len(seen) > 1:
            _reply(conn, "200 OK", _good_page(head), Content_Type="application/json")
        elif first == "truncated":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{\"results\": [")
        elif first == "reset":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            _reply(conn, "200 OK", b"\x1f\x8b\x08\x00not gzip at all" * 100, Content_Encoding="gzip")

    srv = hostile(flaky)
    source = RandomUserSource(api_url=f"http://127.0.0.1:{srv.port}/api/", backoff_base=0.01, backoff_cap=0.02,
                              timeout=2.0, retry_budget=3)
    batches = list(source.batches(RunPlan(users=10, batch_size=10), accept_all))
    assert sum(len(b.users) for b in batches) == 10 and len(seen) == 2


def _hang_up_after_client_hello(conn: socket.socket, _: bytes) -> None:
    head = conn.recv(5, socket.MSG_WAITALL)
    if len(head) == 5:
        conn.recv(struct.unpack(">H", head[3:5])[0], socket.MSG_WAITALL)
    conn.shutdown(socket.SHUT_WR)  # an orderly end in the middle of the handshake
    conn.recv(1 << 16)


def test_a_tls_handshake_cut_short_is_retried(hostile) -> None:  # noqa: ANN001
    srv = hostile(_hang_up_after_client_hello, raw=True)
    why = _failure(f"https://127.0.0.1:{srv.port}/api/")
    assert "TLS failed" in why and "after 3 retries" in why and srv.requests == 4, why


def test_a_certificate_that_does_not_verify_is_not_retried(hostile, tmp_path) -> None:  # noqa: ANN001
    import ssl
    import subprocess

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x",
                    "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")],
                   check=True, capture_output=True, timeout=60)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")

    def tls(conn: socket.socket, _: bytes) -> None:
        try:
            ctx.wrap_socket(conn, server_side=True).recv(1)
        except (ssl.SSLError, OSError):
            pass

    srv = hostile(tls, raw=True)
    why = _failure(f"https://127.0.0.1:{srv.port}/api/")
    assert "certificate verify failed" in why and "not retried" in why and srv.requests == 1, why


def test_redirects_within_the_origin_are_followed() -> None:
    def answer(api: str, final: str) -> None:
        RandomUserSource(api_url=api)._same_origin(final)

    answer("https://randomuser.me/api/", "https://randomuser.me:443/api/1.4/")  # a default port named
    answer("http://randomuser.me/api/", "https://randomuser.me/api/")            # up to https
    answer("http://randomuser.me:80/api/", "https://randomuser.me/api/")
    for api, final in [("https://randomuser.me/api/", "http://randomuser.me/api/"),   # down to http
                       ("https://randomuser.me/api/", "https://evil.example/api/"),
                       ("http://randomuser.me:8080/api/", "https://randomuser.me/api/")]:
        with pytest.raises(ru._Fatal, match="is not followed"):
            answer(api, final)


def test_debug_logging_never_shows_the_api_query() -> None:
    # urllib3's debug line is the request line: "GET /api/?token=…&results=…".
    import logging

    from infraetl.daemon import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("urllib3").level
    try:
        setup_logging("DEBUG")
        assert logging.getLogger("urllib3").getEffectiveLevel() == logging.INFO
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("urllib3").setLevel(saved[2])
