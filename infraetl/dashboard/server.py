"""The dashboard's HTTP server: page, JSON API, Server-Sent Events, /metrics, /healthz, static files.

Everything it answers is rendered once per :meth:`DashboardServer.update`
and kept in memory, so a request costs a dictionary look-up. ``/events``
streams ``progress`` and ``run-complete`` to each subscriber through its
own bounded queue: a client that does not keep up is dropped, and
:meth:`DashboardServer.publish` never blocks. Anything not in the route
table is a 404; static files come from a fixed whitelist, never from a path.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import math
import pathlib
import queue
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from infraetl.config import HTTP_TRUSTED, trusted_addresses
from infraetl.dashboard.render import STATIC_DIR, STATIC_FILES, render_all

logger = logging.getLogger(__name__)

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'none'; "
                               "object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
JSON = "application/json"
HTML = "text/html; charset=utf-8"
_ROUTES = {
    "/": ("index.html", HTML), "/index.html": ("index.html", HTML), "/dashboard.html": ("index.html", HTML),
    "/api/stats.json": ("api/stats.json", JSON), "/api/runs.json": ("api/runs.json", JSON),
    "/api/sections.json": ("api/sections.json", JSON),
}
_CLOSE = object()  # queue sentinel: the subscriber must hang up
#: Bytes a request head may hold: the standard library's longest request line (64 KB, 414
#: past it) and 32 KB of headers, where a browser sends one or two.
MAX_HEAD = 96 * 1024
_HANGUP_CHECK_S = 1.0


def _hung_up(conn: socket.socket) -> bool:
    """True if the peer closed its end (an event-stream client never sends after its request)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class _Subscriber:
    """One open /events stream: a bounded queue and the socket to cut if it falls behind."""

    def __init__(self, conn: socket.socket, size: int) -> None:
        self.conn = conn
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=size)
        self.dropped = False

    def drop(self) -> None:
        """Mark dropped and unblock a writer stuck on a full socket buffer."""
        self.dropped = True
        try:
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.queue.put_nowait(_CLOSE)  # wakes a stream thread waiting for the next event
        except queue.Full:
            pass  # a full queue means its thread is writing, and the shutdown fails that write


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    dashboard: DashboardServer
    #: Connections served at once (a thread and a descriptor each); past it one is closed at
    #: once. Without a cap, clients that trickle bytes could take every file descriptor of
    #: the daemon, and then the store could not sync and nothing was ACKed. (Set per server
    #: from its subscriber cap, see DashboardServer.start.)
    max_connections = 320
    #: Connections one client address may hold: one client alone cannot take every slot (event
    #: streams it never reads and request heads it never finishes), locking everyone else out.
    max_per_client = 40
    #: Addresses the per-client cap does not apply to: a reverse proxy on the host (whose
    #: clients all arrive from it) limits per client itself (docs/operations.md).
    trusted: frozenset[str] = trusted_addresses(HTTP_TRUSTED)

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._held: dict[Any, str] = {}  # request -> its client's address
        self._per_client: dict[str, int] = {}
        self._count_lock = threading.Lock()  # held slots are freed from the handler threads
        self._refused, self._refused_logged = 0, -math.inf
        super().server_activate()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        address = str(client_address[0])
        client = "" if address in self.trusted else client_key(address)
        with self._count_lock:
            if client and self._per_client.get(client, 0) >= self.max_per_client:
                return self._refuse(f"{self.max_per_client} connections open from {client}")
            if not self._slots.acquire(blocking=False):
                return self._refuse(f"{self.max_connections} connections open")
            self._held[request] = client
            self._per_client[client] = self._per_client.get(client, 0) + 1
        return True

    def _refuse(self, why: str) -> bool:
        self._refused += 1
        if time.monotonic() - self._refused_logged >= 60:  # a flood must not flood the log too
            logger.warning("dashboard: %s; refused %d connection(s)", why, self._refused)
            self._refused, self._refused_logged = 0, time.monotonic()
        return False

    def shutdown_request(self, request: Any) -> None:
        with self._count_lock:
            client = self._held.pop(request, None)
            if client is not None:
                self._slots.release()
                left = self._per_client[client] - 1
                if left:
                    self._per_client[client] = left
                else:
                    del self._per_client[client]
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away in the middle of an answer (the standard library's own
        # 400/501 replies included) is routine; anything else is logged once, not printed.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            logger.debug("client %s went away", client_address[0])
        else:
            logger.exception("dashboard request from %s failed", client_address[0])


def client_key(address: str) -> str:
    """What the per-client cap counts by: the address, or for IPv6 its /64, since one host
    there commonly holds a whole /64 to pick addresses from."""
    if ":" not in address or address.startswith("::ffff:"):
        return address
    try:
        return str(ipaddress.IPv6Network(f"{address.split('%')[0]}/64", strict=False))
    except ValueError:
        return address


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _HeadReader:
    """The request's reader while its head (request line and headers) is read: each read may
    wait only for what is left of one deadline for the whole head, so a client trickling a
    byte at a time cannot hold its connection for ever; and the head may hold at most
    :data:`MAX_HEAD` bytes (431), where the standard library allows 100 lines of 64 KB each:
    ~6.5 MB held for every connection."""

    def __init__(self, raw: Any, conn: socket.socket, deadline: float, per_read: float) -> None:
        self._raw, self._conn, self._deadline, self._per_read = raw, conn, deadline, per_read
        self._budget = MAX_HEAD

    def readline(self, limit: int = -1) -> bytes:
        if self._budget <= 0:
            # Raised while the headers are parsed: the standard library answers 431.
            raise http.client.HTTPException(f"request head over {MAX_HEAD} bytes")
        limit = self._budget if limit < 0 else min(limit, self._budget)
        line = self._readline(limit)
        self._budget -= len(line)
        return line

    def _readline(self, limit: int) -> bytes:
        # One receive at a time, each given only what is left: a buffered readline would wait
        # afresh for every byte that trickles in.
        line = bytearray()
        while len(line) < limit:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request head took too long")
            self._conn.settimeout(min(left, self._per_read))  # silence, or the whole head, too long
            chunk = self._raw.peek(1)  # what is buffered, else one receive
            if not chunk:
                break  # the client closed
            want = min(len(chunk), limit - len(line))
            end = chunk.find(b"\n", 0, want)
            line += self._raw.read(end + 1 if end >= 0 else want)
            if end >= 0:
                break
        return bytes(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "infraetl"
    sys_version = ""
    head_timeout = 10.0

    def setup(self) -> None:
        super().setup()
        self.rfile = _HeadReader(self.rfile, self.connection,  # type: ignore[assignment]
                                 time.monotonic() + self.head_timeout, self.timeout or self.head_timeout)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.connection.settimeout(self.timeout)  # the head is in: back to the per-write timeout
        return ok

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.client_address[0], *args)

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _send(self, status: int, body: bytes, ctype: str, *, head: bool, cache: str = "no-cache") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_json(self, status: int, doc: Any, *, head: bool) -> None:
        self._send(status, json.dumps(doc).encode(), JSON, head=head, cache="no-store")

    def _dispatch(self, *, head: bool) -> None:
        dash = self.server.dashboard
        path = self.path.split("?", 1)[0]  # not urlsplit: it reads "//x/y" as a host name
        try:
            if path in _ROUTES:
                name, ctype = _ROUTES[path]
                self._send(200, dash._docs[name], ctype, head=head)
            elif path.startswith("/static/") and path[len("/static/"):] in dash._static:
                body, ctype = dash._static[path[len("/static/"):]]
                self._send(200, body, ctype, head=head)
            elif path == "/events":
                self._events(head=head)
            elif path == "/metrics":
                body, ctype = dash._metrics()
                self._send(200, body, ctype, head=head, cache="no-store")
            elif path == "/healthz":
                status, doc = dash._health()
                self._send_json(status, doc, head=head)
            elif path == "/favicon.ico":
                self._send(204, b"", "image/x-icon", head=True)  # keeps browsers from logging a 404
            else:
                self._send_json(404, {"error": "not found"}, head=head)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            logger.debug("client %s went away", self.client_address[0])
        except Exception:
            logger.exception("dashboard request %s failed", path)
            try:
                self._send_json(500, {"error": "internal error"}, head=head)
            except OSError:
                pass

    def _events(self, *, head: bool) -> None:
        dash = self.server.dashboard
        sub = None if head else dash._subscribe(self.connection)
        if not head and sub is None:
            self._send_json(503, {"error": "too many event streams"}, head=head)
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if sub is None:
                return
            self.close_connection = True
            # The last run's news too: a page that was away (hidden, or cut off) missed it.
            hello = json.dumps({"generated_at": dash._generated_at, "last": dash._last_news},
                               separators=(",", ":"), default=str)
            self.wfile.write(f"retry: 1000\nevent: hello\ndata: {hello}\n\n".encode())
            self.wfile.flush()
            last_write = time.monotonic()
            while not sub.dropped and not dash._closed.is_set():
                try:
                    item = sub.queue.get(timeout=min(dash.keepalive_s, _HANGUP_CHECK_S))
                except queue.Empty:
                    if _hung_up(self.connection):
                        break  # free the subscriber slot now, not at the next failed write
                    if time.monotonic() - last_write < dash.keepalive_s:
                        continue
                    # A named event, not a comment: the page sees it, so it can tell a stream a
                    # middlebox dropped without a word from a quiet one, and reconnect.
                    item = b"event: ping\ndata: {}\n\n"
                if item is _CLOSE:
                    break
                self.wfile.write(item)
                self.wfile.flush()
                last_write = time.monotonic()
        except OSError:
            if sub is None:
                raise  # a HEAD request: handled as any other request's
            # The client went away, or was dropped, perhaps before its headers were out.
            logger.debug("event stream to %s ended", self.client_address[0])
        finally:
            if sub is not None:
                dash._unsubscribe(sub)


class DashboardServer:
    """Serves the dashboard over HTTP in background threads and pushes events to open pages."""

    def __init__(self, host: str, port: int, *, site_dir: pathlib.Path,
                 metrics: Callable[[], tuple[bytes, str]], health: Callable[[], tuple[int, dict[str, Any]]],
                 keepalive_s: float = 15.0, max_subscribers: int = 256, queue_size: int = 64,
                 client_timeout_s: float = 30.0, head_timeout_s: float = 10.0,
                 trusted: frozenset[str] | None = None) -> None:
        self.host, self._port = host, port
        self.site_dir = pathlib.Path(site_dir)
        self._metrics, self._health = metrics, health
        self.keepalive_s, self.max_subscribers, self.queue_size = keepalive_s, max_subscribers, queue_size
        # A client that stops reading or writing frees its thread after this many seconds.
        self._handler = type("Handler", (_Handler,), {"timeout": client_timeout_s,
                                                      "head_timeout": head_timeout_s})
        self._trusted = _HTTPServer.trusted if trusted is None else trusted
        self._static = {name: ((STATIC_DIR / name).read_bytes(), ctype) for name, ctype in STATIC_FILES.items()}
        self._subs: set[_Subscriber] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._generated_at = 0.0
        self._last_news: dict[str, Any] | None = None  # {"event", "data"} of the last progress or run end
        self._docs: dict[str, bytes] = {}
        self.update(self._saved_stats(), 0.0)

    def _saved_stats(self) -> dict[str, Any]:
        """The stats last written to the site dir, so a restarted server shows them at once."""
        try:
            doc = json.loads((self.site_dir / "api" / "stats.json").read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    @property
    def port(self) -> int:
        """The bound port (the requested one before :meth:`start`)."""
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def subscribers(self) -> int:
        """How many /events streams are open."""
        with self._lock:
            return len(self._subs)

    def start(self) -> None:
        """Bind and serve in a background thread; return once bound."""
        base = _HTTPServer6 if ":" in self.host else _HTTPServer
        # Room for every event stream and as many page loads besides.
        slots = self.max_subscribers + 64
        cls = type("HTTPServer", (base,), {"max_connections": slots, "max_per_client": max(8, slots // 8),
                                           "trusted": self._trusted})
        try:
            self._httpd = cls((self.host, self._port), self._handler)
        except OSError as e:
            from ..exceptions import ConfigError

            raise ConfigError(f"cannot serve the dashboard on {self.host}:{self._port}: "
                              f"{e.strerror or e} (--http-bind)") from None
        self._httpd.dashboard = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="dashboard-http", daemon=True)
        self._thread.start()
        logger.info("dashboard listening on http://%s:%d/",
                    f"[{self.host}]" if ":" in self.host else self.host, self.port)

    def update(self, stats: dict[str, Any], generated_at: float) -> None:
        """Render ``stats`` once and swap it in as what every route answers."""
        if not generated_at and isinstance(stats, dict):
            generated_at = float(stats.get("generated_at") or 0.0)
        docs = render_all(stats, generated_at=generated_at)
        self._docs, self._generated_at = docs, generated_at  # one reference swap per name: readers see old or new

    def publish(self, event: str, data: dict[str, Any]) -> None:
        """Broadcast an event to every /events subscriber; drop those whose queue is full."""
        if "\n" in event or "\r" in event:
            raise ValueError("event name must be one line")
        if event in ("progress", "run-complete"):
            self._last_news = {"event": event, "data": data}
        payload = json.dumps(data, separators=(",", ":"), default=str)
        frame = f"event: {event}\ndata: {payload}\n\n".encode()
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            try:
                sub.queue.put_nowait(frame)
            except queue.Full:
                logger.info("dropping a slow event-stream client")
                sub.drop()

    def _subscribe(self, conn: socket.socket) -> _Subscriber | None:
        with self._lock:
            if len(self._subs) >= self.max_subscribers or self._closed.is_set():
                return None
            sub = _Subscriber(conn, self.queue_size)
            self._subs.add(sub)
            return sub

    def _unsubscribe(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving, hang up every event stream and release the port."""
        self._closed.set()
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.drop()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while self.subscribers and time.monotonic() < deadline:
            time.sleep(0.01)  # let stream threads notice the hang-up and unregister
