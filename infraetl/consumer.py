"""The consumer daemon: open, validate, aggregate, commit, ACK; render on END.

One main thread owns the ZeroMQ sockets and the SQLite store, so a batch is
handled start to finish without locks: open the frame (anything that fails
is counted by reason and dropped), validate, build the batch's mergeable
statistics and audit partials, commit them in one transaction keyed by
(run, seq), then ACK. When a run has every batch its END named, the
dashboard is re-rendered and the END is ACKed with the dashboard's URL.
The HTTP server runs in its own threads and only reads what the main thread
hands it. Helper processes (``batchwork``) validate and aggregate the next
few data batches in parallel while the main thread commits the current one;
without them (``--batch-workers 0``, or while one is being replaced) the main
thread does that work itself, with one helper (``scorer``) running zxcvbn on
the passwords of the next few batches ahead of it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import deque
from typing import Any

import zmq

from . import config, wire
from .audit import fingerprint_key
from .batchwork import BatchWorkers, compute
from .config import ConsumerSettings, split_bind
from .daemon import MALLOC, Notifier, RateLimitedLog, Signals, lock_state_dir
from .exceptions import StoreError, WireError
from .faults import crash_point
from .metrics import ConsumerMetrics
from .pwinfo import add_strengths
from .scorer import Scorer
from .sockets import bind, bound_endpoint, make_socket
from .store import Store

logger = logging.getLogger(__name__)

STORE_RETRY = 2.0  # seconds between attempts to write while the disk is failing
#: Seconds between checks, while no batch commits, that the state's disk has room: /healthz said
#: "ok" for a full disk until a run's first batch failed (a review).
IDLE_PROBE_S = 10.0
#: Frames opened ahead of the one in hand, so the zxcvbn helper scores their passwords while the
#: main thread works; with batch workers, enough to keep each of them busy (see :func:`lookahead`).
LOOKAHEAD = 4


def lookahead(batch_workers: int) -> int:
    """Frames the consumer keeps opened ahead: each opened frame is a decoded batch in memory."""
    return max(LOOKAHEAD, 2 * batch_workers + 2)

#: Frames one :meth:`Consumer._drain` takes before the loop looks at its other duties.
DRAIN_MAX = 256


class Consumer:
    """The consumer's main loop (see module docstring)."""

    def __init__(self, settings: ConsumerSettings) -> None:
        self.s = settings
        self.sealer = wire.Sealer(settings.keys, ttl=settings.token_ttl, max_size=settings.max_frame)
        self._lock = lock_state_dir(settings.state_dir, "consumer")
        self.notifier = Notifier()
        self.store = Store(settings.state_dir / "consumer.sqlite3", alive=self.notifier.ping)
        self.fp_key = fingerprint_secret(self.store, settings.keys)
        if not settings.reveal_passwords:
            self._mask_revealed()
        self.site_dir = settings.state_dir / "www"
        self.ctx = zmq.Context()
        self.signals = Signals()
        self.notifier.summary = self._status_line
        self.metrics = ConsumerMetrics()
        self._warn = RateLimitedLog(logger)
        self.store_error: str | None = None
        self._retry_at = 0.0
        self._probe_at = 0.0  # the first probe at once: a start on a full disk says so
        self._acks_due: list[bytes] = []   # sent after the store syncs (see Store.sync)
        self.url = ""
        self.server: Any = None
        self.scorer = Scorer(settings.zxcvbn_workers, on_failure=self._scorer_failed)
        self.workers = BatchWorkers(settings.batch_workers, on_failure=self._worker_failed)
        self._lookahead = lookahead(settings.batch_workers)

    # -- set-up --
    def _open(self) -> None:
        from .curve import apply_server
        from .dashboard.server import DashboardServer

        s = self.s
        # Room for a producer's window of 128 (the benchmark's; 64 by default) and its re-sends;
        # a consumer not reading (a full disk) held 1,000 frames of re-sends: 75 → 349 MB (a review).
        self.data = make_socket(self.ctx, zmq.PULL, max_frame=s.max_frame, hwm=4 * config.WINDOW)
        self.acks = make_socket(self.ctx, zmq.PUB, max_frame=64 * 1024, hwm=10000)
        apply_server(self.data, s.curve_secret, s.curve_allow, self.ctx)
        apply_server(self.acks, s.curve_secret, s.curve_allow, self.ctx)
        bind(self.data, s.data_bind)
        bind(self.acks, s.ack_bind)
        host, port = split_bind(s.http_bind)
        self.server = DashboardServer(host, port, site_dir=self.site_dir,
                                      trusted=config.trusted_addresses(s.http_trusted),
                                      metrics=self.metrics.render, health=self._health)
        self.server.start()
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        if ":" in shown_host:
            shown_host = f"[{shown_host}]"  # an IPv6 address, as URLs write it
        self.url = s.public_url or f"http://{shown_host}:{self.server.port}/"
        endpoints = {"data": bound_endpoint(self.data), "ack": bound_endpoint(self.acks),
                     "http": f"{shown_host}:{self.server.port}", "url": self.url, "pid": os.getpid()}
        # Before anyone is told where it is: the site is never the last run's stale one. Not
        # announced: a fresh consumer told every new stream a run with no id had just completed.
        self.render(announce=None)
        tmp = s.state_dir / ".endpoints.json.tmp"
        tmp.write_text(json.dumps(endpoints))
        os.replace(tmp, s.state_dir / "endpoints.json")
        logger.info("consumer: data on %s, acks on %s, dashboard at %s",
                    endpoints["data"], endpoints["ack"], self.url)

    # -- main loop --
    def serve(self) -> int:
        """Run until SIGTERM; return the exit status."""
        self.signals.install()
        try:
            self._open()
            self.notifier.ready(self._status_line())
            poller = zmq.Poller()
            poller.register(self.data, zmq.POLLIN)
            while not self.signals.stop:
                if self.store_error:
                    self._retry_store()
                    # Not reading is the back-pressure: the producers keep their spools.
                    events = {} if self.store_error else dict(poller.poll(100))
                    if self.store_error:
                        self._sleep_responsive(0.1)
                else:
                    events = dict(poller.poll(100))
                if self.data in events:
                    self._drain()
                    self._probe_at = time.monotonic() + IDLE_PROBE_S  # a commit is the probe
                elif not self.store_error and time.monotonic() >= self._probe_at:
                    self._probe_store()
                self.notifier.ping()
                if self.signals.reload:
                    self._reload_keys()
            self.notifier.stopping()
            logger.info("consumer stopping")
            return 0
        finally:
            if self.server is not None:
                self.server.close()
            self.scorer.close()
            self.workers.close()
            for sock in ("data", "acks"):
                if hasattr(self, sock):
                    getattr(self, sock).close()
            from .curve import stop_authenticators

            stop_authenticators()
            self.ctx.term()
            self.store.close()
            self.notifier.close()
            os.close(self._lock)

    def _sleep_responsive(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.signals.stop:
            time.sleep(0.02)

    def _drain(self) -> None:
        """Take up to :data:`DRAIN_MAX` waiting frames, with :data:`LOOKAHEAD` opened ahead of the
        one in hand, and handle every frame taken.

        Before each batch is validated and aggregated, the frames behind it (up to LOOKAHEAD,
        as far as they have arrived) are opened and their passwords handed to the zxcvbn helper,
        so the helper scores ahead while this thread works: it does not idle between groups, and
        this thread rarely waits for it. ACKs go out after every LOOKAHEAD batches, behind one
        fsync (see :meth:`_send_acks`). The cap stops the taking, never the handling: a frame
        opened ahead is handled before this returns. Only when the store fails or SIGTERM
        arrives are the frames opened ahead dropped unACKed, and the producer re-sends them.
        """
        ahead: deque[tuple[dict[str, Any] | None, int | None, int | None]] = deque()
        handled = taken = 0
        try:
            while True:
                while len(ahead) < self._lookahead and taken < DRAIN_MAX:
                    try:
                        parts = self.data.recv_multipart(zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    taken += 1
                    msg, plain = self._open_frame(parts)
                    if msg is not None and msg["kind"] == "end":
                        msg["copy"] = wire.copy_id(parts[0])  # named in a "pending" answer
                    job = ticket = None
                    if msg is not None and msg["kind"] == "data":
                        job = self.workers.submit(plain, self.fp_key, self.s.reveal_passwords)
                        if job is None:
                            ticket = self.scorer.prefetch(msg["cols"].get("login.password") or ())
                    ahead.append((msg, ticket, job))
                if not ahead:
                    return
                msg, ticket, job = ahead.popleft()
                if msg is not None:
                    self._on_message(msg, ticket, job)
                handled += 1
                # A backlog of DRAIN_MAX batches can outlast WatchdogSec: ping per batch.
                self.notifier.ping()
                if self.store_error or self.signals.stop:
                    return
                if handled % self._lookahead == 0:
                    self._send_acks()
        finally:
            for _, _, job in ahead:  # dropped unACKed: the producer sends them again
                self.workers.forget(job)
            self._send_acks()

    def _open_frame(self, parts: list[bytes]) -> tuple[dict[str, Any] | None, bytes]:
        """The message in a frame and its plaintext, or (None, b"") (counted by reason) if it
        is not a good one."""
        if len(parts) != 1:
            self._reject("multipart", "multi-part message on the data socket")
            return None, b""
        t0 = time.perf_counter()
        try:
            msg, plain = self.sealer.open_plain(parts[0])
        except WireError as e:
            self._reject(e.reason, str(e))
            if isinstance(e, wire.OutOfTime):
                self._answer_out_of_time(e, parts[0])
            return None, b""
        self.metrics.stage("open", time.perf_counter() - t0)
        return msg, plain

    def _answer_out_of_time(self, e: wire.OutOfTime, frame: bytes) -> None:
        """An authentic frame refused for its stamp: tell its producer this host's time, with an
        ACK of status ``clock`` (sealed now), if it asks for one. It stamps its frames in that
        time from then on: hosts whose clocks disagree by over a minute stalled every run."""
        try:
            msg = wire.decode(e.plain)
        except WireError:
            return
        if msg.get("clock_acks") is True and msg["kind"] in ("begin", "data", "end", "abort"):
            # ``copy`` names the copy refused: the producer seals again only the copy it has in
            # flight, not one a replayed answer names (a review replayed one to make a producer
            # re-seal and re-spool a batch a thousand times a second).
            self._ack(msg, msg["kind"], "clock", copy=wire.copy_id(frame))

    def _on_message(self, msg: dict[str, Any], ticket: int | None = None, job: int | None = None) -> None:
        kind = msg["kind"]
        try:
            if kind == "data":
                self._on_data(msg, ticket, job)
            elif kind == "begin":
                late = self.store.begin_run(msg["run"], producer=msg["producer"], source=msg["source"],
                                            requested=msg["requested"],
                                            meta={"nat": msg.get("nat"), "seed": msg.get("seed")})
                self._ack(msg, "begin", "applied")
                if late:
                    # The BEGIN came last (lost, or refused for its stamp, and sent again): the
                    # page showed the run without its source and filter until now.
                    self.render(announce="updated")  # not "run-complete": that named the run before
            elif kind == "end":
                self._on_end(msg)
            elif kind == "abort":
                row = self.store.run(msg["run"]) or {}
                if row.get("state") == "complete":
                    # Too late: every batch and the END were here first, and the run is counted.
                    self._ack(msg, "abort", "complete", **self._counted(row))
                    return
                state = "cancelled" if msg.get("cancelled") is True else "failed"
                self.store.fail_run(msg["run"], producer=msg["producer"], reason=msg["reason"], state=state)
                self._ack(msg, "abort", "applied")
                if row.get("state") not in ("failed", "cancelled"):
                    logger.log(logging.WARNING if state == "cancelled" else logging.ERROR,
                               "run %s %s on the producer: %s", msg["run"], state, msg["reason"])
                    self.metrics.given_up.labels(state).inc()
                    self.render(run_id=msg["run"], state=state)
            else:
                self._reject("bad_schema", f"{kind} message on the data socket")
        except StoreError as e:
            self._store_failed(e)
        except Exception:
            # A bug must not kill the daemon. The batch is not ACKed, so the producer keeps
            # it and re-sends it: nothing is lost, and a fixed consumer will apply it.
            self.metrics.rejected.labels("internal_error").inc()
            if self._warn.allow("internal_error"):
                logger.exception("internal error handling a %s frame of run %s; not ACKed",
                                 kind, msg.get("run"))

    def _on_data(self, msg: dict[str, Any], ticket: int | None = None, job: int | None = None) -> None:
        run_id, seq = msg["run"], msg["seq"]
        if self.store.applied(run_id, seq):
            # A re-send (its ACK was lost, or the producer gave up waiting while this consumer
            # worked off a backlog): ACK it again without redoing the work, so a slow consumer
            # is not slowed further by the re-sends of its own backlog.
            self.workers.forget(job)
            self.metrics.duplicates.inc()
            self._ack(msg, "data", "duplicate")
            return
        work = self.workers.take(job) if job is not None else None
        if work is None:  # no worker had it, or its worker failed: the same work, here
            add_strengths(self.scorer.take(ticket))
            work = compute(msg, self.fp_key, self.s.reveal_passwords)
        for stage, seconds in zip(("validate", "stats", "audit"), work.seconds, strict=True):
            self.metrics.stage(stage, seconds)
        t3 = time.perf_counter()
        kept = work.kept
        applied = self.store.apply_batch(
            run_id, seq, producer=msg["producer"], delivered=msg["n"], kept=kept,
            quarantined=work.quarantined, stats=work.stats, audit=work.audit, encoded=work.encoded,
        )
        self.metrics.stage("commit", time.perf_counter() - t3)
        crash_point("after_commit")
        if applied.duplicate:
            self.metrics.duplicates.inc()
            self._ack(msg, "data", "duplicate")
            return
        self.metrics.batches.inc()
        self.metrics.users.inc(kept)
        MALLOC.tick()
        self._ack(msg, "data", "applied")
        if applied.failed:
            self._failed(run_id, applied.failed)  # its END, re-sent, is ACKed "failed"
        elif applied.run_complete:
            self._complete(msg)
        elif self.server is not None and seq % 10 == 0:
            row = self.store.run(run_id) or {}
            self.server.publish("progress", {"run_id": run_id, "applied_batches": row.get("applied"),
                                             "users": row.get("kept"), "requested": row.get("requested")})

    def _on_end(self, msg: dict[str, Any]) -> None:
        run_id = msg["run"]
        fresh = (self.store.run(run_id) or {}).get("state") in (None, "running")
        done = self.store.end_run(run_id, producer=msg["producer"], batches=msg["batches"],
                                  requested=msg.get("requested"), delivered=msg.get("delivered"))
        if done.failed:
            if fresh:
                self._failed(run_id, done.failed)
            self._ack(msg, "end", "failed", reason=done.failed)
        elif done.run_complete or done.duplicate:
            self._complete(msg, render=done.run_complete)
        else:
            # Some batches are still on their way: the END is ACKed "complete" when the last
            # lands. Until then its copies are answered "pending" with the first batches this
            # store lacks: if the producer had them ACKed already (this consumer's state was
            # reset or restored from a backup), they can never come, and it fails the run.
            # ``copy`` names the END copy answered: the producer takes a "pending" only about the
            # copy it sent after its last batch was settled (a replayed one failed a counted run).
            self._ack(msg, "end", "pending", missing=self.store.missing(run_id), copy=msg.get("copy"))

    def _failed(self, run_id: str, why: str) -> None:
        logger.error("run %s failed: %s; none of it is counted", run_id, why)
        self.metrics.given_up.labels("failed").inc()
        self.render(run_id=run_id, state="failed")

    def _complete(self, msg: dict[str, Any], render: bool = True) -> None:
        run_id = msg["run"]
        row = self.store.run(run_id) or {}
        crash_point("before_render")
        if render:
            self.render()
            self.metrics.runs.inc()
            logger.info("run %s complete: %d users kept, %d quarantined; dashboard re-rendered",
                        run_id, row.get("kept", 0), row.get("quarantined", 0))
            MALLOC.release()  # the run's aggregates are gone: give their memory back
        self._ack({"run": run_id, "seq": -1, "producer": row.get("producer") or msg["producer"]},
                  "end", "complete", **self._counted(row))

    def _counted(self, row: dict[str, Any]) -> dict[str, Any]:
        """What a complete run's ACK tells its producer: where to see it and what was counted
        (``applied`` is ``kept`` under the name older producers read)."""
        kept = row.get("kept", 0)
        # ``filtered_apart``: the users --nat left out are not in "quarantined" (older consumers
        # counted them in; a producer subtracts them for those).
        return {"url": self.url, "applied": kept, "kept": kept, "quarantined": row.get("quarantined", 0),
                "filtered_apart": True}

    def _ack(self, msg: dict[str, Any], of: str, status: str, **extra: Any) -> None:
        """Queue an ACK; :meth:`_send_acks` sends the queue once the store has synced."""
        producer = msg["producer"]
        # Every ACK carries this consumer's frame limit: a producer sending larger frames (which
        # the socket drops unseen) learns from any of them why, and fails the run saying so.
        frame = self.sealer.seal(wire.make("ack", msg["run"], msg["seq"], producer=producer, of=of,
                                           status=status, max_frame=self.s.max_frame, **extra))
        self._acks_due.append(producer.encode() + b"\0" + frame)

    def _send_acks(self) -> None:
        """One fsync for every transaction the queued ACKs speak for, then send them."""
        if not self._acks_due:
            return
        acks, self._acks_due = self._acks_due, []
        t = time.perf_counter()
        try:
            self.store.sync()
        except StoreError as e:
            self._store_failed(e)  # not ACKed: the producer re-sends, duplicates are ACKed later
            return
        self.metrics.stage("commit", time.perf_counter() - t)
        crash_point("after_sync")
        for frame in acks:
            try:
                self.acks.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                pass  # a lost ACK costs a re-send, which is ACKed again

    def _reject(self, reason: str, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        self._warn.warning(reason, "rejected frame (%s): %s", reason, detail)

    # -- failure of the store (disk full, read-only) --
    def _store_failed(self, e: StoreError) -> None:
        if self.store_error is None:
            logger.error("cannot commit, not ACKing until the state directory is writable again: %s", e)
        self.store_error = str(e)
        self.metrics.store_ok.set(0)
        self._retry_at = time.monotonic() + STORE_RETRY
        # The producer re-sends unACKed frames; keep nothing, lose nothing.

    def _probe_store(self) -> None:
        """While idle: has the state's disk room for writes? (/healthz and the gauge say so.)
        Nothing is written (Store.has_room)."""
        self._probe_at = time.monotonic() + IDLE_PROBE_S
        try:
            self.store.has_room()
        except StoreError as e:
            self._store_failed(e)

    def _retry_store(self) -> None:
        if time.monotonic() < self._retry_at:
            return
        try:
            self.store.writable()
        except StoreError as e:
            self.store_error = str(e)
            self._retry_at = time.monotonic() + STORE_RETRY
            return
        logger.info("state directory writable again; resuming")
        self.store_error = None
        self.metrics.store_ok.set(1)

    def _worker_failed(self, why: str) -> None:
        self.metrics.worker_failures.inc()
        # With the count of the failures held back, a minute on (a second one went unsaid).
        self._warn.warning("batch-worker", "%s; its batches are handled in the daemon until it is back", why)

    def _scorer_failed(self, why: str) -> None:
        self.metrics.scorer_failures.inc()
        self._warn.warning("scorer", "%s; scoring passwords in-process until it is back", why)

    def _health(self) -> tuple[int, dict[str, Any]]:
        if self.store_error:
            return 503, {"status": "degraded", "store": self.store_error}
        return 200, {"status": "ok", "store": "ok"}

    # -- rendering --
    def stats(self) -> dict[str, Any]:
        """The document ``/api/stats.json`` serves."""
        from .figures import build_stats

        return build_stats(self.store, reveal=self.s.reveal_passwords)

    def render(self, *, run_id: str | None = None, state: str = "complete",
               announce: str | None = "run-complete") -> None:
        """Re-render the site (files + the server's in-memory copy) and announce it: by default
        that run ``run_id`` ended in ``state`` (default: the last complete run); ``"updated"``
        only that the figures changed (open pages fetch them); None: not at all."""
        from .dashboard.render import write_site

        t = time.perf_counter()
        doc = self.stats()
        now = doc["generated_at"]
        try:
            write_site(self.site_dir, doc, generated_at=now)
        except OSError as e:
            self._warn.warning("render", "could not write the site files under %s: %s", self.site_dir, e)
        if self.server is not None:
            self.server.update(doc, now)
            if announce == "run-complete":
                self.server.publish("run-complete", {
                    "generated_at": now, "state": state,
                    "run_id": run_id if run_id is not None else (doc.get("last_run") or {}).get("run_id")})
            elif announce is not None:
                self.server.publish(announce, {"generated_at": now})
        took = time.perf_counter() - t
        self.metrics.stage("render", took)
        self.metrics.last_render.set(took)
        self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        return (f"{self.metrics.value('infraetl_batches_applied_total'):.0f} batches applied, "
                f"{self.metrics.value('infraetl_runs_completed_total'):.0f} runs complete")

    def _mask_revealed(self) -> None:
        """Started without --reveal-passwords: mask what runs under it stored in plaintext."""
        try:
            masked = self.store.mask_revealed()
        except StoreError as e:  # a full disk: it stays as it is, and is tried at the next start
            logger.warning("cannot mask the plaintext passwords --reveal-passwords stored: %s", e)
            return
        if masked:
            logger.info("--reveal-passwords is off: masked the plaintext passwords of %d stored summaries", masked)

    def _reload_keys(self) -> None:
        from .config import reload_sealer

        self.signals.reload = False
        sealer = reload_sealer(self.sealer, ttl=self.s.token_ttl, max_size=self.s.max_frame)
        if sealer is not self.sealer:
            try:
                fp_key = fingerprint_secret(self.store, sealer.keys, current=self.fp_key)
            except StoreError as e:  # the store cannot even be read
                logger.warning("SIGHUP: the password fingerprint secret stays as it was: %s", e)
            else:
                if fp_key != self.fp_key:  # the same value keeps its object: pwinfo caches by identity
                    self.fp_key = fp_key
        self.sealer = sealer


#: The name of the password fingerprint secret in the store.
FP_SECRET = "password fingerprints"


def fingerprint_secret(store: Store, keys: tuple[bytes, ...], *, current: bytes | None = None) -> bytes:
    """The key of the password fingerprints: the same across key rotations.

    Fingerprints of the same password must stay equal for as long as the figures that hold them
    (reuse, top passwords, base words) are merged. The secret is first derived from the sealing
    key, then kept in the store, sealed under the current sealing key: a rotation re-seals it
    (any key of the ring opens it), so the figures do not split in two. Only when no key opens
    it (the old key dropped at once, as after a leak) does a new one begin, and the log says so.

    A store that cannot be written (a full disk) does not stop the consumer: the secret is used
    all the same, and stored (or re-sealed) at the next start or SIGHUP. ``current`` is the
    secret in use (a SIGHUP's): stored as it is if the store has none yet, so a rotation after a
    start on a full disk does not derive another.
    """
    from cryptography.fernet import Fernet, InvalidToken

    sealed = store.secret(FP_SECRET)
    if sealed is not None:
        for i, key in enumerate(keys):
            try:
                secret = Fernet(key).decrypt(sealed)
            except InvalidToken:
                continue
            if i:
                _store_secret(store, secret, keys[0])
            return secret
        logger.warning("no key this consumer holds opens the password fingerprint secret (its key was "
                       "dropped): password reuse, top passwords and base words count afresh from here, "
                       "apart from the figures so far")
    secret = current if current is not None and sealed is None else fingerprint_key(keys[0])
    _store_secret(store, secret, keys[0])
    return secret


def _store_secret(store: Store, secret: bytes, sealing_key: bytes) -> None:
    from cryptography.fernet import Fernet

    try:
        store.set_secret(FP_SECRET, Fernet(sealing_key).encrypt(secret))
    except StoreError as e:
        logger.warning("cannot store the password fingerprint secret now (%s); it is used all the same, "
                       "and stored at the next start or SIGHUP", e)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``infraetl-consumer``."""
    from .cli_daemons import consumer_cli

    consumer_cli(args=argv, auto_envvar_prefix="INFRAETL")


if __name__ == "__main__":
    main(sys.argv[1:])
