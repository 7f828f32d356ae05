"""Users from the RandomUser HTTP API (v1.4), exact, reproducible and retried.

The run asks for seeded pages ``page=1..`` of at most ``page_size`` (≤ 5000)
users, so that the first pages add up to exactly the users requested; pages
are fetched by a bounded thread pool but consumed strictly in page order, so
batch k holds the same users however the requests interleave. Users the
checks drop are replaced by *top-up* pages sized from the drop rate seen so
far. Every failure that a retry can cure (429, 5xx, timeouts, broken or
short JSON, ``{"error": ...}``, empty pages) is retried with exponential
back-off and jitter, honouring ``Retry-After``, within one retry budget and
the plan's deadline; past either, the run fails with a one-line reason.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import logging
import math
import queue
import random
import re
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import requests
import urllib3
import urllib3.connection
import urllib3.connectionpool
from requests.adapters import HTTPAdapter

from .. import __version__
from ..exceptions import ConfigError, SourceError
from . import Batch, Checker, RunPlan, User, accept_all
from .replay import Collector, checked_plan, examine_limit, parse_json

logger = logging.getLogger(__name__)

API_URL = "https://randomuser.me/api/1.4/"
#: The API's largest page; anything above silently becomes 1.
MAX_RESULTS = 5000
#: Largest response body read (decoded): a 5000-user page is ~6 MB; a server sending more
#: (or a compression bomb) fails the run (not retried), not the producer's memory filled.
MAX_BODY = 64 << 20
#: Redirects followed for one request, each checked before it is asked (see _get).
MAX_REDIRECTS = 5
BODY_CHUNK = 1 << 16
_CERTIFICATE = re.compile(r"certificate verify failed|CERTIFICATE_VERIFY_FAILED|hostname mismatch", re.I)
#: Connection failures worth naming, from the text of what requests raises.
_CAUSES = tuple((re.compile(p, re.I), gist) for p, gist in (
    (r"certificate verify failed", "certificate verify failed"),
    (r"connection refused", "connection refused"),
    (r"name or service not known|nodename nor servname|temporary failure in name resolution|"
     r"failed to resolve", "the host name does not resolve"),
    (r"connection reset|connectionreseterror", "connection reset"),
    (r"remotedisconnected|connection aborted", "the server closed the connection"),
    (r"network is unreachable|no route to host", "network unreachable"),
))
USER_AGENT = f"infraetl/{__version__} python-requests/{requests.__version__}"  # type: ignore[attr-defined]
_POLL = 0.1  # seconds between checks of cancel/deadline while waiting


class _Retry(Exception):
    """A failure a later attempt may cure."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Fatal(Exception):
    """A failure no retry can cure (wrong URL, refused request)."""


class _Stopped(Exception):
    """The run ended (failed, cancelled or closed): a worker just leaves."""


def _one_line(text: object, limit: int = 100) -> str:
    """What a server sent, fit for one line of a terminal or a log: printable characters only
    (no escape sequences), at most ``limit`` of them."""
    try:
        shown = str(text)
    except RecursionError:  # a value nested deeper than repr goes
        shown = f"<{type(text).__name__} nested too deeply>"
    line = " ".join("".join(c if c.isprintable() else "?" for c in shown[:limit * 4]).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def shown_url(url: str) -> str:
    """An API address as logs and messages show it: without credentials or query."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<an address that cannot be parsed>"
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def check_api_url(url: str) -> str:
    """``url`` if it can be an API address (http or https, a host), else raise ``ConfigError``."""
    try:
        parts = urllib.parse.urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"API URL {shown_url(url)!r} is not an http:// or https:// address with a host")
    return url


def _same_seed(asked: str, got: Any) -> bool:
    """Whether a page's ``info.seed`` is the one asked for. The API answers an 18-character
    seed (whose last two characters pick the nationality) with two more characters: its
    nationality's number (a review of its source)."""
    return got == asked or (type(got) is str and len(asked) == 18 and len(got) == 20 and got.startswith(asked))


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP date), None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, says RFC 5322, not the local time
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def _progress(collector: Collector, plan: RunPlan) -> str:
    """Where a run stands, for a deadline's message when no retry said more."""
    if not collector.examined:
        return "no answer yet"
    top = ", ".join(f"{k} {v}" for k, v in collector.dropped.most_common(3))
    return (f"only {collector.accepted:,} of {plan.users:,} users passed the checks in "
            f"{collector.examined} records" + (f" ({top})" if top else ""))


def page_sizes(users: int, page_size: int) -> list[int]:
    """Split ``users`` into pages of at most ``page_size`` (the API's ``results``)."""
    full, rest = divmod(users, page_size)
    return [page_size] * full + ([rest] if rest else [])


class _Run:
    """What the workers of one run share: retry budget, 429 pause, stop flag."""

    def __init__(self, plan: RunPlan, source: RandomUserSource) -> None:
        self.plan = plan
        self.budget = source.retry_budget
        self.base, self.cap = source.backoff_base, source.backoff_cap
        self.max_retry_after = source.max_retry_after
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.retries = 0
        self.last = ""
        self.not_before = 0.0           # monotonic: nobody asks before this (429)
        self.short_pages = 0            # consistent pages with fewer users than asked
        self.describe: Callable[[], str] = lambda: "no answer yet"
        self.error: SourceError | None = None
        self._jitter = random.Random()  # jitter needs no reproducibility

    def fail(self, message: str) -> SourceError:
        """Record the run's failure (first one wins) and stop every worker."""
        with self.lock:
            if self.error is None:
                self.error = SourceError(message)
            self.stop.set()
            return self.error

    def deadline_error(self) -> SourceError:
        """The failure of a run whose deadline passed."""
        last = self.last or self.describe()
        return self.fail(f"RandomUser API failed: {last} after {self.retries} retries (deadline reached)")

    def check(self) -> None:
        """Raise if the run is over: failed, closed, cancelled or past its deadline."""
        if self.error is not None:
            raise self.error
        if self.stop.is_set():
            raise _Stopped
        if self.plan.cancelled():
            raise self.fail("RandomUser API: run cancelled")
        if self.plan.deadline is not None and self.plan.clock() >= self.plan.deadline:
            raise self.deadline_error()

    def pause_until(self, when: float) -> None:
        """Wait until monotonic ``when``, waking for cancel, failure and the deadline."""
        while True:
            self.check()
            left = when - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(left, _POLL))

    def request_timeout(self, timeout: float) -> tuple[float, float]:
        """Connect and read timeouts, shortened so no request outlives the deadline."""
        if self.plan.deadline is not None:
            timeout = min(timeout, max(0.05, self.plan.deadline - self.plan.clock()))
        return min(timeout, 10.0), timeout

    def retry(self, reason: str, attempt: int, retry_after: float | None) -> None:
        """Spend one retry on ``reason`` and wait before the next attempt, or fail the run."""
        with self.lock:
            if self.error is not None:
                raise self.error
            self.last = reason
            done = f"after {self.retries} retries"
            if self.retries >= self.budget:
                raise self._locked_fail(f"RandomUser API failed: {reason} {done}")
            step = min(self.cap, self.base * 2 ** (attempt - 1))
            delay = step / 2 + self._jitter.uniform(0, step / 2)
            if retry_after is not None:
                if retry_after > self.max_retry_after:
                    raise self._locked_fail(f"RandomUser API failed: {reason}, Retry-After "
                                            f"{retry_after:.0f}s is too long, {done}")
                # Never sooner than the back-off: "Retry-After: 0", or a date the server's slow
                # clock put in the past, spent every retry at once (a review).
                delay = max(delay, retry_after)
            now = time.monotonic()
            if self.plan.deadline is not None and self.plan.clock() + delay >= self.plan.deadline:
                # Sleeping past the deadline only to fail later helps nobody.
                raise self._locked_fail(f"RandomUser API failed: {reason} {done} (deadline reached)")
            if retry_after is not None:
                self.not_before = max(self.not_before, now + delay)  # every worker holds back
            self.retries += 1
        logger.info("RandomUser API: %s; retry %d/%d in %.2fs", reason, self.retries, self.budget, delay)
        self.pause_until(now + delay)

    def _locked_fail(self, message: str) -> SourceError:
        if self.error is None:
            self.error = SourceError(message)
        self.stop.set()
        return self.error


#: The socket each thread last connected (see :class:`_Conn`), for a run to hang up on its own.
_SOCKETS: dict[int, socket.socket] = {}


class _Recorded:
    """A connection that records its socket under the thread that opened it."""

    sock: Any

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _SOCKETS[threading.get_ident()] = self.sock


class _Conn(_Recorded, urllib3.connection.HTTPConnection):
    pass


class _TLSConn(_Recorded, urllib3.connection.HTTPSConnection):
    pass


class _Pool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _Conn


class _TLSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _TLSConn


class _Workers:
    """A fixed number of daemon threads running submitted calls (a minimal thread pool)."""

    # Not ThreadPoolExecutor: it joins its threads at interpreter exit, so one
    # request stuck on a dead network would hold a stopping daemon for up to
    # the read timeout. Daemon threads are simply abandoned.

    def __init__(self, size: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = \
            queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(size)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` on a worker; its result or exception lands in the future."""
        future: Future[Any] = Future()
        self._jobs.put((future, fn, args))
        return future

    def shutdown(self) -> None:
        """Let each worker finish its current call and exit; queued calls are dropped."""
        for _ in self._threads:
            self._jobs.put(None)

    def hang_up(self) -> None:
        """End the connections the workers opened: a request blocked in a read (a server
        trickling its headers, say) ends now, not when the server stops."""
        for t in self._threads:
            sock = _SOCKETS.pop(t.ident, None) if t.ident is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except Exception as e:  # noqa: BLE001 (handed to whoever waits on the future)
                future.set_exception(e)


class RandomUserSource:
    """The RandomUser HTTP API as a source of exact, reproducible batches."""

    name = "randomuser"

    def __init__(
        self,
        api_url: str = API_URL,
        concurrency: int = 4,
        timeout: float = 30.0,
        retry_budget: int = 50,
        *,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        max_retry_after: float = 120.0,
        page_size: int = MAX_RESULTS,
        exclude: tuple[str, ...] = ("picture",),
        **options: Any,
    ) -> None:
        if options:
            raise ConfigError(f"unknown option(s) for the randomuser source: {', '.join(sorted(options))}")
        check_api_url(api_url)
        if not 1 <= page_size <= MAX_RESULTS:
            raise ConfigError(f"page size must be 1..{MAX_RESULTS}, not {page_size}")
        if concurrency < 1 or timeout <= 0 or retry_budget < 0 or backoff_base < 0:
            raise ConfigError("concurrency and timeout must be positive, "
                              "retry budget and back-off not negative")
        self.api_url = api_url
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.retry_budget = int(retry_budget)
        self.backoff_base = float(backoff_base)
        self.backoff_cap = float(backoff_cap)
        self.max_retry_after = float(max_retry_after)
        self.page_size = int(page_size)
        self.exclude = tuple(exclude)

    def batches(self, plan: RunPlan, check: Checker = accept_all) -> Iterator[Batch]:
        """Yield batches of API users, in page order, until ``plan.users`` passed ``check``."""
        plan = checked_plan(plan)
        if plan.users == 0:
            return
        collector = Collector(plan, check)
        run = _Run(plan, self)
        run.describe = lambda: _progress(collector, plan)
        session = self._session()
        pool = _Workers(self.concurrency, "randomuser")
        planned: deque[int] = deque(page_sizes(plan.users, self.page_size))
        in_flight: deque[Future[tuple[list[Any], int]]] = deque()
        page = 0
        limit = examine_limit(plan.users)
        try:
            while not collector.done:
                if not planned and not in_flight:
                    if collector.examined >= limit:
                        top = ", ".join(f"{k} {v}" for k, v in collector.dropped.most_common(3))
                        raise SourceError(f"RandomUser API failed: only {collector.accepted} of {plan.users} "
                                          f"users passed the checks in {collector.examined} records ({top})")
                    planned.extend(page_sizes(self._top_up(collector), self.page_size))
                while planned and len(in_flight) < self.concurrency:
                    page += 1
                    in_flight.append(pool.submit(self._fetch, session, run, page, planned.popleft()))
                records, attempts = self._wait(in_flight.popleft(), run)
                collector.requests += attempts
                for batch in collector.add(records):
                    run.check()
                    yield batch
            logger.info("RandomUser API: %d users in %d pages (%d short), %d retries, dropped %s",
                        collector.accepted, page, run.short_pages, run.retries,
                        dict(collector.dropped) or "none")
        finally:
            run.stop.set()
            for future in in_flight:
                future.cancel()
            pool.shutdown()
            pool.hang_up()
            session.close()

    def _session(self) -> requests.Session:
        session = requests.Session()
        # One pooled connection per worker; retries are ours, not urllib3's.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.concurrency, max_retries=0)
        adapter.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = USER_AGENT
        session.headers["Accept"] = "application/json"
        return session

    def _top_up(self, collector: Collector) -> int:
        """How many more users to ask for, from the share of good users seen so far."""
        share = max(collector.accepted / max(collector.examined, 1), 0.2)
        return math.ceil(collector.missing / share * 1.05) + 2

    def _wait(self, future: Future[tuple[list[Any], int]], run: _Run) -> tuple[list[Any], int]:
        """The next page's result, without outliving a cancel or the deadline."""
        while True:
            try:
                return future.result(timeout=_POLL)
            except FutureTimeout:
                run.check()

    def _fetch(self, session: requests.Session, run: _Run, page: int, size: int) -> tuple[list[Any], int]:
        """One page, retried until it is valid; returns (records, requests spent)."""
        params: dict[str, str | int] = {"results": size, "page": page, "seed": run.plan.seed}
        if run.plan.nat:
            params["nat"] = ",".join(run.plan.nat)
        if self.exclude:
            params["exc"] = ",".join(self.exclude)
        attempts = 0
        while True:
            run.pause_until(run.not_before)
            attempts += 1
            retry_after = None
            resp = None
            try:
                resp = self._get(session, params, run)
                body = self._body(resp, run)
            except requests.Timeout:
                reason = f"no answer within {self.timeout:g}s"
            except requests.exceptions.SSLError as e:
                if not _CERTIFICATE.search(str(e)):
                    reason = f"TLS failed ({_cause(e)})"  # a handshake cut short: worth another try
                else:  # a certificate no retry will change: say so at once
                    raise run.fail(f"RandomUser API at {shown_url(self.api_url)}: TLS failed "
                                   f"({_cause(e)}) (not retried)") from None
            except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                    requests.exceptions.InvalidSchema, ValueError, UnicodeError) as e:
                # No retry can mend an address: ours was checked, so a redirect's it is.
                raise run.fail(f"RandomUser API at {shown_url(self.api_url)} led to an address that "
                               f"cannot be used ({_one_line(e, 80)}) (not retried)") from None
            except requests.RequestException as e:
                if run.stop.is_set():
                    raise _Stopped from None
                reason = f"connection failed ({_cause(e)})"
            except _Retry as e:
                reason = e.reason
            except _Fatal as e:
                raise run.fail(f"RandomUser API failed: {e} (not retried)") from None
            else:
                try:
                    return self._parse(resp, body, page, size, run), attempts
                except _Retry as e:
                    reason, retry_after = e.reason, e.retry_after
                except _Fatal as e:
                    raise run.fail(f"RandomUser API failed: {e} (not retried)") from None
            finally:
                if resp is not None:
                    resp.close()  # a body not read to its end closes the connection
            run.retry(f"page {page}: {reason}", attempts, retry_after)

    def _get(self, session: requests.Session, params: dict[str, Any], run: _Run) -> requests.Response:
        """The API's answer, following redirects one at a time: each hop is checked *before*
        it is asked (requests followed a whole chain and the last hop alone was checked, so a
        request with its query went through another host and back: a review)."""
        url: str = self.api_url
        for _ in range(MAX_REDIRECTS + 1):
            resp = session.get(url, params=params, timeout=run.request_timeout(self.timeout), stream=True,
                               allow_redirects=False)
            if not resp.is_redirect:
                return resp
            target = urllib.parse.urljoin(resp.url, resp.headers["location"])
            resp.close()
            self._same_origin(target)
            url, params = target, {}  # the query is in the Location, as the server gave it
        raise _Fatal(f"{shown_url(self.api_url)} redirected over {MAX_REDIRECTS} times")

    def _same_origin(self, url: str) -> None:
        """Refuse a redirect to another host, or down to plain http (http up to https on the
        same host is fine)."""
        want = urllib.parse.urlsplit(self.api_url)
        got = urllib.parse.urlsplit(url)
        downgrade = want.scheme == "https" and got.scheme != "https"
        upgrade = want.scheme == "http" and got.scheme == "https" and want.port in (None, 80) \
            and got.port in (None, 443)
        same = (got.hostname, _port(got)) == (want.hostname, _port(want))
        if downgrade or not (same or (upgrade and got.hostname == want.hostname)):
            raise _Fatal(f"{shown_url(self.api_url)} redirected to {shown_url(url)}: "
                         "another host, or plain http, is not followed")

    def _body(self, resp: requests.Response, run: _Run) -> bytes:
        """The response's body (decoded), read in pieces: at most :data:`MAX_BODY` bytes, and
        no longer than the run lasts (a server trickling bytes or sending them for ever)."""
        if resp.status_code != 200:
            return b""
        chunks: list[bytes] = []
        size = 0
        read = resp.raw.read1  # what has arrived, up to BODY_CHUNK: read() would wait for all of it
        while True:
            try:
                chunk = read(BODY_CHUNK, decode_content=True)
            except urllib3.exceptions.ReadTimeoutError:
                raise _Retry(f"no answer within {self.timeout:g}s (mid-body)") from None
            except urllib3.exceptions.HTTPError as e:  # cut short, reset, bad gzip: as requests would
                raise _Retry(f"connection failed mid-body ({_cause(e)})") from None
            if not chunk:
                return b"".join(chunks)
            run.check()
            size += len(chunk)
            if size > MAX_BODY:
                raise _Fatal(f"a response larger than {MAX_BODY >> 20} MB (a page of {MAX_RESULTS} users is ~6 MB)")
            chunks.append(chunk)

    def _parse(self, resp: requests.Response, body: bytes, page: int, size: int, run: _Run) -> list[User]:
        """The page's records, or the reason the response is unusable."""
        status = resp.status_code
        if status == 429:
            raise _Retry("HTTP 429 (rate limited)", _retry_after(resp.headers.get("Retry-After")))
        if status == 408 or status >= 500:
            # A 503 may say when to come back, as a 429 does (it was retried at once: a review).
            raise _Retry(f"HTTP {status}", _retry_after(resp.headers.get("Retry-After")) if status == 503 else None)
        if status != 200:
            raise _Fatal(f"HTTP {status} from {shown_url(self.api_url)}")
        try:
            data = parse_json(body)
        except ValueError:
            raise _Retry("response is not valid JSON (truncated?)") from None
        if not isinstance(data, dict):
            raise _Retry("response is not a JSON object")
        if "error" in data:
            raise _Retry(f"API error: {_one_line(data['error'], 60)}")
        results = data.get("results")
        info = data.get("info")
        if not isinstance(results, list):
            raise _Retry("response has no results list")
        if not results:
            raise _Retry("empty results")
        count = info.get("results") if isinstance(info, dict) else None
        if count != len(results) or len(results) > size:
            raise _Retry(f"count mismatch: {len(results)} results, info says {count}, asked {size}")
        if isinstance(info, dict) and info.get("page", page) != page:
            raise _Retry(f"asked page {page}, got page {_one_line(info.get('page'), 20)}")
        if isinstance(info, dict) and not _same_seed(run.plan.seed, info.get("seed", run.plan.seed)):
            # Another seed's users (a cache or proxy that dropped the query): the run would not
            # be the one its seed names, and the pages could overlap.
            raise _Retry(f"asked seed {_one_line(run.plan.seed, 40)}, got seed {_one_line(info.get('seed'), 40)}")
        if len(results) < size:
            # Consistent but short: keep it, the top-up pages make up the rest. Said once a run
            # (a server short on every page would fill the journal), counted in the run's summary.
            with run.lock:
                run.short_pages += 1
                first = run.short_pages == 1
            if first:
                logger.warning("RandomUser API: page %d has %d users, %d were asked (later short pages "
                               "are counted in the run's summary)", page, len(results), size)
        return results


def _port(parts: urllib.parse.SplitResult) -> int | None:
    """The port of an address, the scheme's own when it names none."""
    return parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _cause(e: Exception) -> str:
    """The gist of a connection failure, from the innermost error requests wraps (no URL)."""
    text = str(e)
    for pattern, gist in _CAUSES:
        if pattern.search(text):
            return gist
    return type(e).__name__

