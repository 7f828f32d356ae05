"""A RandomUser-compatible HTTP server for tests, with switchable, deterministic faults.

It serves ``/api/1.4/`` (and ``/api/``) on a real socket on 127.0.0.1, with
the API's query parameters (results, page, seed, nat, inc, exc) and its
quirks (``results`` outside 1..5000 becomes 1; one unknown nat code drops
the filter). Users come from the synthetic source's generator, one stream
per (seed, page), so a page is the same every time it is asked for.

Faults are drawn from hashes, never from a clock or a shared counter:
request faults by (fault seed, query, attempt number at that query), record
faults by (fault seed, seed, page, index). The same test therefore sees the
same faults however its concurrent requests interleave::

    with ApiServer(Faults.realistic()) as srv:
        source = RandomUserSource(api_url=srv.url, backoff_base=0.01)

Run alone: ``python tests/apiserver.py --port 0 [--faults realistic]``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

if __name__ == "__main__":  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infraetl.schema import FIELDS, MAY_BE_EMPTY, NATIONALITIES, get_path
from infraetl.sources.synthetic import UserGenerator

HOSTILE: tuple[str, ...] = (
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "{{7*7}}",
    "\u202eevil\u202c",
    "'; DROP TABLE users;--",
)
API_ERROR = "Uh oh, something has gone wrong. Please tweet us @randomapi about the issue. Thank you."
_HTML = "<html><head><title>{code} {text}</title></head><body><center><h1>{code} {text}</h1></center>" \
        "<hr><center>nginx</center></body></html>"
_STATUS_TEXT = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}
#: Required, never-empty fields a "nulls" fault may break.
_BREAKABLE = tuple(f.path for f in FIELDS if f.required and f.path not in MAY_BE_EMPTY)
_HOSTILE_TARGETS = ("name.first", "name.last", "location.city", "location.street.name")


@dataclass(frozen=True)
class Faults:
    """Which faults the server injects and how often (a fraction of requests or records)."""

    # Per request, drawn per (query, attempt).
    rate_limit: float = 0.0       # 429 with Retry-After
    retry_after: str = "1"
    server_error: float = 0.0     # 502/503/504 with an HTML body
    truncated: float = 0.0        # 200 whose JSON is cut in half
    error_body: float = 0.0       # 200 {"error": "Uh oh, ..."}
    empty: float = 0.0            # 200 with an empty results list
    slow: float = 0.0             # answers after slow_seconds
    slow_seconds: float = 0.3
    # Per record, drawn per (seed, page, index).
    nulls: float = 0.0            # a required field null, missing or empty
    hostile: float = 0.0          # script/markup/template/bidi text in a name or city (valid data)
    not_a_record: float = 0.0     # null, string, number or list instead of a user
    wrong_nat: float = 0.0        # a nationality that was not asked for
    duplicates: float = 0.0       # an earlier user of the page again (same login.uuid)
    # Every request fails: "429", "503", "error", "empty", "truncated", "other_seed" or "hang".
    always: str | None = None
    # The first attempts at every query fail in this order, e.g. ("429", "503").
    first: tuple[str, ...] = ()
    hang_seconds: float = 60.0
    seed: str = "faults"          # of the request faults
    record_seed: str = "records"  # of the record faults (part of the data, like the real API's quirks)

    @classmethod
    def realistic(cls, **overrides: Any) -> Faults:
        """Every fault on, at rates like a bad day of the real API."""
        rates: dict[str, Any] = {
            "rate_limit": 0.03, "server_error": 0.06, "truncated": 0.03, "error_body": 0.03,
            "empty": 0.03, "slow": 0.05, "nulls": 0.02, "hostile": 0.01, "not_a_record": 0.005,
            "wrong_nat": 0.01, "duplicates": 0.01,
        }
        rates.update(overrides)
        return cls(**rates)

    @property
    def request_faults(self) -> tuple[tuple[str, float], ...]:
        return (("429", self.rate_limit), ("5xx", self.server_error), ("truncated", self.truncated),
                ("error", self.error_body), ("empty", self.empty), ("slow", self.slow))


def strict_check(users: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter[str]]:
    """A small stand-in for the producer's record check: missing, null and empty fields."""
    good: list[dict[str, Any]] = []
    bad: Counter[str] = Counter()
    for user in users:
        reason = None
        for f in FIELDS:
            try:
                value = get_path(user, tuple(f.path.split(".")))
            except (KeyError, TypeError):
                reason = f"missing:{f.path}"
            else:
                if value is None and f.required:
                    reason = f"null:{f.path}"
                elif value == "" and f.path not in MAY_BE_EMPTY:
                    reason = f"empty:{f.path}"
            if reason:
                break
        if reason:
            bad[reason] += 1
        else:
            good.append(user)
    return good, bad


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) from ``parts``, the same in every process."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class Reply:
    """One HTTP answer: status, headers, body and a delay before it is sent."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class ApiServer:
    """A RandomUser API stand-in on a real 127.0.0.1 socket (a context manager)."""

    def __init__(self, faults: Faults | None = None, *, port: int = 0, cache_pages: int = 256) -> None:
        self.faults = faults or Faults()
        self.requests = 0                      # every request received
        self.statuses: Counter[int] = Counter()
        self.faults_sent: Counter[str] = Counter()
        self.queries: list[dict[str, str]] = []  # the query of every API request, in arrival order
        self.user_agents: Counter[str] = Counter()
        self.connections = 0                    # TCP connections accepted
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._attempts: Counter[tuple[Any, ...]] = Counter()
        self._pages: dict[tuple[Any, ...], bytes] = {}
        self._cache_pages = cache_pages
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.app = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The API URL to give the client."""
        return f"http://127.0.0.1:{self.port}/api/1.4/"

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="apiserver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (slow and hanging answers are cut short)."""
        self.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def prebuild(self, seed: str, results: int, pages: int, nat: tuple[str, ...] = ()) -> None:
        """Build and cache pages 1..``pages`` now, so a benchmark measures the client only."""
        for page in range(1, pages + 1):
            self._page(seed, page, results, nat, (), ())

    # -- answering --

    def answer(self, path: str, user_agent: str = "") -> Reply:
        """The reply to ``GET path`` (counted, with this server's faults)."""
        url = urlsplit(path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self._lock:
            self.requests += 1
            self.user_agents[user_agent] += 1
            self.queries.append(q)
        if url.path.rstrip("/") not in ("/api", "/api/1.4"):
            return self._count(Reply(404, b"Not Found", {"Content-Type": "text/plain"}))
        try:
            results = int(q.get("results", "1"))
        except ValueError:
            results = 1
        if not 1 <= results <= 5000:
            results = 1  # what the real API does, silently
        try:
            page = max(1, int(q.get("page", "1")))
        except ValueError:
            page = 1
        seed = q.get("seed") or hashlib.sha256(str(self.requests).encode()).hexdigest()[:16]
        nat = tuple(c.strip().upper() for c in q.get("nat", "").split(",") if c.strip())
        if any(c not in NATIONALITIES for c in nat):
            nat = ()  # one bad code drops the whole filter, like the real API
        inc = tuple(x for x in q.get("inc", "").split(",") if x)
        exc = tuple(x for x in q.get("exc", "").split(",") if x)
        key = (seed, page, results, nat, inc, exc)
        with self._lock:
            self._attempts[key] += 1
            attempt = self._attempts[key]
        fault = self._request_fault(key, attempt)
        if fault:
            with self._lock:
                self.faults_sent[fault] += 1
        info = {"seed": seed, "results": results, "page": page, "version": "1.4"}
        if fault == "429":
            return self._count(Reply(429, b"Too many requests, slow down.",
                                     {"Content-Type": "text/plain", "Retry-After": self.faults.retry_after}))
        if fault in ("5xx", "503"):
            code = 503 if fault == "503" else (502, 503, 504)[attempt % 3]
            html = _HTML.format(code=code, text=_STATUS_TEXT[code]).encode()
            return self._count(Reply(code, html, {"Content-Type": "text/html"}))
        if fault == "error":
            return self._count(_json(200, {"error": API_ERROR}))
        if fault == "empty":
            return self._count(_json(200, {"results": [], "info": info}))
        if fault == "hang":
            return self._count(_json(200, {"error": "late"}, delay=self.faults.hang_seconds))
        # "other_seed": another seed's page, as a cache or proxy that dropped the query would give.
        body = self._page(seed + "-other" if fault == "other_seed" else seed, page, results, nat, inc, exc)
        if fault == "truncated":
            body = body[: len(body) // 2]
        delay = self.faults.slow_seconds if fault == "slow" else 0.0
        return self._count(Reply(200, body, {"Content-Type": "application/json; charset=utf-8"}, delay))

    def _count(self, reply: Reply) -> Reply:
        with self._lock:
            self.statuses[reply.status] += 1
        return reply

    def _request_fault(self, key: tuple[Any, ...], attempt: int) -> str | None:
        f = self.faults
        if f.always:
            return f.always
        if attempt <= len(f.first):
            return f.first[attempt - 1]
        u = _unit(f.seed, "request", *key, attempt)
        for name, rate in f.request_faults:
            if u < rate:
                return name
            u -= rate
        return None

    def _page(self, seed: str, page: int, results: int, nat: tuple[str, ...],
              inc: tuple[str, ...], exc: tuple[str, ...]) -> bytes:
        key = (seed, page, results, nat, inc, exc)
        body = self._pages.get(key)
        if body is None:
            users: list[Any] = UserGenerator(seed, nat, stream=page).users(results)
            users = self._break_records(users, seed, page, nat)
            for i, user in enumerate(users):
                if isinstance(user, dict):
                    if inc:
                        users[i] = user = {k: v for k, v in user.items() if k in inc}
                    for name in exc:
                        user.pop(name, None)
            info = {"seed": seed, "results": results, "page": page, "version": "1.4"}
            body = json.dumps({"results": users, "info": info}, ensure_ascii=False).encode()
            with self._lock:
                if len(self._pages) >= self._cache_pages:
                    self._pages.pop(next(iter(self._pages)))
                self._pages[key] = body
        return body

    def _break_records(self, users: list[Any], seed: str, page: int, nat: tuple[str, ...]) -> list[Any]:
        f = self.faults
        kinds = (("nulls", f.nulls), ("hostile", f.hostile), ("not_a_record", f.not_a_record),
                 ("wrong_nat", f.wrong_nat if nat else 0.0), ("duplicates", f.duplicates))
        if not any(rate for _, rate in kinds):
            return users
        for i in range(len(users)):
            u = _unit(f.record_seed, "record", seed, page, ",".join(nat), i)
            v = _unit(f.record_seed, "detail", seed, page, ",".join(nat), i)
            for kind, rate in kinds:
                if u < rate:
                    users[i] = _break(kind, users, i, v, nat)
                    break
                u -= rate
        return users


def _break(kind: str, users: list[Any], i: int, v: float, nat: tuple[str, ...]) -> Any:
    """Record ``i`` with fault ``kind``; ``v`` in [0, 1) picks the details."""
    user = users[i]
    if kind == "not_a_record":
        return (None, "oops", 42, [])[int(v * 4)]
    if kind == "duplicates":
        return copy.deepcopy(users[int(v * i)]) if i else user
    if kind == "wrong_nat":
        user["nat"] = next(c for c in NATIONALITIES if c not in nat)
        return user
    if kind == "hostile":
        path = _HOSTILE_TARGETS[int(v * len(_HOSTILE_TARGETS))]
        _set(user, path, HOSTILE[int(v * 997) % len(HOSTILE)])
        return user
    path = _BREAKABLE[int(v * len(_BREAKABLE))]
    how = int(v * 1009) % 5
    if how < 3:
        _set(user, path, None)
    elif how == 3:
        _set(user, path, "")
    else:
        *parents, leaf = path.split(".")
        node = user
        for part in parents:
            node = node[part]
        del node[leaf]
    return user


def _set(user: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = user
    for part in parents:
        node = node[part]
    node[leaf] = value


def _json(status: int, payload: Any, delay: float = 0.0) -> Reply:
    return Reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json"}, delay)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection reuse is exercised
    timeout = 30                   # an idle kept-alive connection is dropped after this

    def setup(self) -> None:
        super().setup()
        app: ApiServer = self.server.app  # type: ignore[attr-defined]
        with app._lock:
            app.connections += 1

    def do_GET(self) -> None:
        app: ApiServer = self.server.app  # type: ignore[attr-defined]
        reply = app.answer(self.path, self.headers.get("User-Agent", ""))
        if reply.delay and app.closing.wait(reply.delay):
            self.close_connection = True  # shutting down: drop the slow answer and the client
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout): nothing to answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read counters, not access logs


_PRESETS = {
    "none": Faults(),
    "realistic": Faults.realistic(),
    "always-503": Faults(always="503"),
    "always-429": Faults(always="429", retry_after="30"),
}


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted, printing the URL first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--faults", choices=sorted(_PRESETS), default="none", help="fault preset")
    parser.add_argument("--fault-seed", default="faults", help="seed of the fault draws")
    args = parser.parse_args(argv)
    server = ApiServer(replace(_PRESETS[args.faults], seed=args.fault_seed), port=args.port)
    print(server.url, flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.closing.set()
        server._httpd.server_close()


if __name__ == "__main__":
    main()
