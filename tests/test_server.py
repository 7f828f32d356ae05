"""The dashboard HTTP server: routes, headers, 404s, SSE fan-out, slow and surplus clients."""

from __future__ import annotations

import http.client
import json
import pathlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sample_stats import GENERATED_AT, sample_stats

from infraetl.dashboard import render
from infraetl.dashboard.server import DashboardServer

DEADLINE_S = 10.0


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    """Poll ``predicate`` until true; fail the test at the deadline instead of hanging."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.01)


def make_server(tmp_path: pathlib.Path, **kwargs: Any) -> DashboardServer:
    server = DashboardServer(
        "127.0.0.1", 0, site_dir=tmp_path,
        metrics=lambda: (b"# HELP infraetl_up 1\ninfraetl_up 1\n", "text/plain; version=0.0.4; charset=utf-8"),
        health=lambda: (200, {"status": "ok"}), **kwargs)
    server.start()
    return server


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[DashboardServer]:
    srv = make_server(tmp_path, keepalive_s=0.2)
    srv.update(sample_stats(), GENERATED_AT)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardServer]:
    """One server for the tests that only read."""
    srv = make_server(tmp_path_factory.mktemp("site"))
    srv.update(sample_stats(), GENERATED_AT)
    yield srv
    srv.close()


def request(srv: DashboardServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=DEADLINE_S)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class Stream:
    """A raw /events subscriber that reads whole events with a deadline."""

    def __init__(self, srv: DashboardServer, *, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(DEADLINE_S)
        self.sock.connect(("127.0.0.1", srv.port))
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        self.buf = b""

    def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def block(self) -> str:
        """The next blank-line-terminated block (an event or a comment)."""
        while b"\n\n" not in self.buf:
            self._recv()
        block, self.buf = self.buf.split(b"\n\n", 1)
        return block.decode()

    def event(self) -> tuple[str, dict[str, Any]]:
        """The next named event, skipping comments and retry lines."""
        while True:
            fields = dict(line.split(": ", 1) for line in self.block().splitlines() if ": " in line
                          and not line.startswith(":"))
            if "event" in fields:
                return fields["event"], json.loads(fields["data"])

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(("path", "ctype"), [
    ("/", "text/html; charset=utf-8"), ("/dashboard.html", "text/html; charset=utf-8"),
    ("/index.html", "text/html; charset=utf-8"), ("/api/stats.json", "application/json"),
    ("/api/runs.json", "application/json"), ("/api/sections.json", "application/json"),
    ("/static/dashboard.js", "text/javascript; charset=utf-8"), ("/static/dashboard.css", "text/css; charset=utf-8"),
    ("/metrics", "text/plain; version=0.0.4; charset=utf-8"), ("/healthz", "application/json"),
    ("/?cache=bust", "text/html; charset=utf-8"),
])
def test_routes_answer_with_their_content_type_and_security_headers(shared: DashboardServer, path: str,
                                                                    ctype: str) -> None:
    server = shared
    status, headers, body = request(server, path)
    assert status == 200 and body
    assert headers["content-type"] == ctype
    assert headers["content-length"] == str(len(body))
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    head_status, head_headers, head_body = request(server, path, "HEAD")
    assert (head_status, head_body, head_headers["content-length"]) == (200, b"", str(len(body)))


def test_json_api_matches_the_page_state(shared: DashboardServer) -> None:
    server = shared
    stats = json.loads(request(server, "/api/stats.json")[2])
    assert stats == json.loads(render.to_json(render.public_stats(sample_stats(), generated_at=GENERATED_AT)))
    assert json.loads(request(server, "/api/runs.json")[2]) == {"runs": stats["runs"]}
    assert request(server, "/")[2] == request(server, "/dashboard.html")[2]
    assert json.loads(request(server, "/healthz")[2]) == {"status": "ok"}
    assert b"infraetl_up 1" in request(server, "/metrics")[2]


@pytest.mark.parametrize("path", [
    "/nope", "/static/", "/static", "/static/../render.py", "/static/%2e%2e/server.py", "/static/../../__init__.py",
    "/static/dashboard.js/", "/static//etc/passwd", "/api/", "/api", "/templates/base.html", "/../../etc/passwd",
    "/static/..%2fserver.py", "/.git/config", "/events/x", "/index.html/..",
])
def test_anything_else_is_404_without_listing_or_traversal(shared: DashboardServer, path: str) -> None:
    status, headers, body = request(shared, path)
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff"
    assert json.loads(body) == {"error": "not found"}


def test_health_status_and_failing_callables(tmp_path: pathlib.Path) -> None:
    def broken_metrics() -> tuple[bytes, str]:
        raise RuntimeError("boom")

    srv = DashboardServer("127.0.0.1", 0, site_dir=tmp_path, metrics=broken_metrics,
                          health=lambda: (503, {"status": "degraded", "reason": "no producer"}))
    srv.start()
    try:
        status, _, body = request(srv, "/healthz")
        assert status == 503 and json.loads(body)["status"] == "degraded"
        status, _, body = request(srv, "/metrics")
        assert status == 500 and b"boom" not in body
        assert request(srv, "/")[0] == 200  # still serving
    finally:
        srv.close()


def test_before_the_first_run_the_page_says_no_data(tmp_path: pathlib.Path) -> None:
    srv = make_server(tmp_path)
    try:
        assert b"no data yet" in request(srv, "/")[2]
        assert json.loads(request(srv, "/api/stats.json")[2])["last_run"] is None
    finally:
        srv.close()


def test_restarted_server_shows_the_site_it_wrote(tmp_path: pathlib.Path) -> None:
    render.write_site(tmp_path, sample_stats(), generated_at=GENERATED_AT)
    srv = make_server(tmp_path)
    try:
        assert json.loads(request(srv, "/api/stats.json")[2])["generated_at"] == GENERATED_AT
        assert request(srv, "/")[2] == (tmp_path / "index.html").read_bytes()
    finally:
        srv.close()


def test_update_swaps_what_every_route_answers(server: DashboardServer) -> None:
    stats = sample_stats()
    stats["runs"].append({**stats["runs"][0], "run_id": "brand-new-run", "started_at": GENERATED_AT + 5})
    server.update(stats, GENERATED_AT + 60)
    assert b"brand-new-run" in request(server, "/")[2]
    assert json.loads(request(server, "/api/stats.json")[2])["generated_at"] == GENERATED_AT + 60
    sections = json.loads(request(server, "/api/sections.json")[2])
    assert "brand-new-run" in sections["sections"]["runs"]


def test_events_stream_hello_progress_complete_and_keepalive(server: DashboardServer) -> None:
    stream = Stream(server)
    try:
        head = stream.head().decode().lower()
        assert "content-type: text/event-stream" in head and "cache-control: no-store" in head
        assert stream.event() == ("hello", {"generated_at": GENERATED_AT, "last": None})
        wait_until(lambda: server.subscribers == 1)
        server.publish("progress", {"run_id": "r1", "delivered": 100, "requested": 300})
        server.publish("run-complete", {"run_id": "r1", "state": "complete"})
        assert stream.event() == ("progress", {"run_id": "r1", "delivered": 100, "requested": 300})
        assert stream.event() == ("run-complete", {"run_id": "r1", "state": "complete"})
        assert stream.event() == ("ping", {})  # keepalive_s=0.2 in this fixture
        # A page that was away learns from its next hello how the last run ended.
        late = Stream(server)
        try:
            late.head()
            assert late.event() == ("hello", {"generated_at": GENERATED_AT, "last": {
                "event": "run-complete", "data": {"run_id": "r1", "state": "complete"}}})
        finally:
            late.close()
    finally:
        stream.close()
    wait_until(lambda: server.subscribers == 0)


def test_publish_reaches_every_subscriber(server: DashboardServer) -> None:
    streams = [Stream(server) for _ in range(20)]
    try:
        for s in streams:
            assert s.event()[0] == "hello"
        wait_until(lambda: server.subscribers == 20)
        server.publish("run-complete", {"run_id": "fan-out"})
        for s in streams:
            assert s.event() == ("run-complete", {"run_id": "fan-out"})
    finally:
        for s in streams:
            s.close()


def test_subscriber_cap_answers_503_and_the_page_still_loads(tmp_path: pathlib.Path) -> None:
    srv = make_server(tmp_path, max_subscribers=5)
    streams = [Stream(srv) for _ in range(5)]
    try:
        for s in streams:
            assert s.event()[0] == "hello"
        status, _, body = request(srv, "/events")
        assert status == 503 and b"too many" in body
        assert request(srv, "/")[0] == 200
        streams[0].close()
        wait_until(lambda: srv.subscribers == 4)
        extra = Stream(srv)
        streams.append(extra)
        assert extra.event()[0] == "hello"
    finally:
        for s in streams:
            s.close()
        srv.close()


def test_a_stream_dropped_before_its_headers_are_out_frees_its_slot(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # publish() may drop a subscriber the moment it is registered, before its response headers
    # are written; the write then fails, and the slot must still be given back.
    srv = make_server(tmp_path, max_subscribers=1)
    real = DashboardServer._subscribe

    def subscribe_then_drop(self: DashboardServer, conn: socket.socket) -> Any:
        sub = real(self, conn)
        if sub is not None:
            sub.drop()
        return sub

    monkeypatch.setattr(DashboardServer, "_subscribe", subscribe_then_drop)
    try:
        for _ in range(3):
            dropped = Stream(srv)
            with pytest.raises((EOFError, OSError)):
                dropped.head()
            dropped.close()
            wait_until(lambda: srv.subscribers == 0)
        monkeypatch.setattr(DashboardServer, "_subscribe", real)
        fresh = Stream(srv)  # the cap of one is free again
        try:
            assert fresh.event()[0] == "hello"
        finally:
            fresh.close()
    finally:
        srv.close()


def test_slow_client_is_dropped_and_publish_never_blocks(tmp_path: pathlib.Path) -> None:
    srv = make_server(tmp_path, queue_size=4)
    slow = Stream(srv, rcvbuf=4096)  # connects and then never reads
    try:
        wait_until(lambda: srv.subscribers == 1)
        big = {"blob": "x" * 256_000}
        start = time.monotonic()
        for _ in range(200):  # 50 MB: far more than the socket buffers hold
            srv.publish("progress", big)
        assert time.monotonic() - start < 5.0
        wait_until(lambda: srv.subscribers == 0)
        fresh = Stream(srv)
        try:
            assert fresh.event()[0] == "hello"
            wait_until(lambda: srv.subscribers == 1)
            srv.publish("run-complete", {"run_id": "after"})
            assert fresh.event() == ("run-complete", {"run_id": "after"})
        finally:
            fresh.close()
    finally:
        slow.close()
        srv.close()


def test_client_that_sends_nothing_is_timed_out(tmp_path: pathlib.Path) -> None:
    srv = make_server(tmp_path, client_timeout_s=0.3)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=DEADLINE_S)
    try:
        sock.sendall(b"GET / HT")  # and then silence
        assert sock.recv(1024) == b""  # the server hangs up rather than keep a thread forever
        assert request(srv, "/")[0] == 200
    finally:
        sock.close()
        srv.close()


def test_close_hangs_up_event_streams(tmp_path: pathlib.Path) -> None:
    srv = make_server(tmp_path)
    stream = Stream(srv)
    try:
        assert stream.event()[0] == "hello"
        closer = threading.Thread(target=srv.close)
        closer.start()
        closer.join(DEADLINE_S)
        assert not closer.is_alive()
        with pytest.raises((EOFError, ConnectionResetError)):
            while True:
                stream.block()
        assert srv.subscribers == 0
    finally:
        stream.close()


def test_event_name_must_be_one_line(server: DashboardServer) -> None:
    with pytest.raises(ValueError):
        server.publish("progress\ndata: injected", {})


def test_connections_past_the_cap_are_closed_at_once_and_the_server_recovers(tmp_path: pathlib.Path) -> None:
    # Clients that connect and send nothing (or trickle) each hold a thread and a descriptor:
    # past the cap (the subscriber cap + 64) they are refused, so they cannot take them all.
    srv = make_server(tmp_path, max_subscribers=1)
    idle = []
    try:
        for _ in range(65):
            s = socket.create_connection(("127.0.0.1", srv.port))
            idle.append(s)
        extra = socket.create_connection(("127.0.0.1", srv.port))
        extra.settimeout(DEADLINE_S)
        assert extra.recv(1) == b""  # closed at once, not left waiting
        extra.close()
    finally:
        for s in idle:
            s.close()
    try:
        wait_until(lambda: _answers(srv))
    finally:
        srv.close()


def _answers(srv: DashboardServer) -> bool:
    try:
        return request(srv, "/healthz")[0] == 200
    except OSError:
        return False


def test_clients_that_reset_mid_answer_print_no_tracebacks(tmp_path: pathlib.Path,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    import struct

    srv = make_server(tmp_path)
    threads = threading.active_count()
    try:
        for _ in range(30):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 70_000)  # answered 501
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # reset, before the answer could be read
        wait_until(lambda: threading.active_count() <= threads)  # every one of them handled
    finally:
        srv.close()
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_trickling_its_request_head_is_cut_off_at_the_head_deadline(tmp_path: pathlib.Path) -> None:
    # The per-read timeout alone never fires for a byte every half second; the head has one
    # deadline in all, so such a client cannot hold its connection slot for ever.
    srv = DashboardServer("127.0.0.1", 0, site_dir=tmp_path, metrics=lambda: (b"", "text/plain"),
                          health=lambda: (200, {"status": "ok"}), head_timeout_s=1.0)
    srv.start()
    s = socket.create_connection(("127.0.0.1", srv.port))
    try:
        s.sendall(b"GET / HTTP/1.1\r\n")
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                s.sendall(b"X")  # a header that never ends
            except OSError:
                break  # cut off
            readable, _, _ = select.select([s], [], [], 0.5)
            if readable and s.recv(1024) == b"":
                break  # cut off
        else:
            pytest.fail("the trickling client was never cut off")
        # The page still answers others.
        assert request(srv, "/healthz")[0] == 200
    finally:
        s.close()
        srv.close()


def test_a_request_head_past_its_byte_budget_is_answered_431(tmp_path: pathlib.Path) -> None:
    # The standard library alone takes 100 header lines of 64 KB each: ~6.5 MB held for each of
    # hundreds of connections, ~1.4 GB for one client (found by a review).
    srv = make_server(tmp_path)
    try:
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.settimeout(DEADLINE_S)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            for i in range(40):
                s.sendall(b"X-Filler-%d: %s\r\n" % (i, b"y" * 4000))
        except OSError:
            pass  # the server may hang up while we still send
        answer = b""
        try:
            while chunk := s.recv(4096):
                answer += chunk
        except OSError:
            pass
        s.close()
        assert answer.startswith(b"HTTP/1.0 431"), answer[:80]
        assert request(srv, "/", "GET")[0] == 200  # an ordinary head still passes
    finally:
        srv.close()


def test_one_client_cannot_take_every_connection(tmp_path: pathlib.Path) -> None:
    # 256 event streams never read and 64 heads never finished, all from one address, locked
    # everyone out of the dashboard (found by a review). One address now holds at most its share.
    srv = make_server(tmp_path, max_subscribers=8, trusted=frozenset())  # 72 slots, 9 a client
    held = []
    try:
        for _ in range(9):
            held.append(socket.create_connection(("127.0.0.1", srv.port)))
        extra = socket.create_connection(("127.0.0.1", srv.port))
        extra.settimeout(DEADLINE_S)
        assert extra.recv(1) == b""  # refused at once: this address has its share
        extra.close()
        for s in held[:3]:
            s.close()
        wait_until(lambda: _answers(srv))  # its freed slots serve it again
    finally:
        for s in held:
            s.close()
        srv.close()


def test_the_per_client_cap_counts_an_ipv6_host_by_its_64() -> None:
    from infraetl.dashboard.server import client_key

    assert client_key("203.0.113.9") == "203.0.113.9"
    assert client_key("::ffff:203.0.113.9") == "::ffff:203.0.113.9"
    assert client_key("2001:db8:1:2::a") == client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::a") != client_key("2001:db8:1:2::a")
    assert client_key("fe80::1%eth0") == "fe80::/64"
