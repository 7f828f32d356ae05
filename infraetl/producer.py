"""The producer daemon: runs sources, seals and spools batches, sends until ACKed.

Threads: the main loop owns every ZeroMQ socket that talks to the outside
and the spool; each run has a worker thread that pulls users from its
source, checks them, seals batches and hands the sealed frames to the main
loop over an inproc socket. The main loop spools a frame (commit) and only
then sends it; it re-sends whatever is unACKed after ``resend_after`` and,
after a restart, everything the spool still holds.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import zmq

from . import schema, wire
from .config import MAX_SEED, SOURCES, ProducerSettings
from .control import ReplayGuard
from .daemon import MALLOC, Notifier, RateLimitedLog, Signals, lock_state_dir
from .exceptions import InfraETLError, SourceError, StoreError, WireError
from .faults import crash_point
from .sockets import bind, bound_endpoint, connect, make_socket
from .sources import Batch, RunPlan, open_source
from .spool import Spool

logger = logging.getLogger(__name__)

BEGIN_SEQ = 0
END_SEQ = -1        # the END (or ABORT) frame of a run; data batches are 1..N
#: Seconds between attempts to spool what a full or read-only disk refused.
SPOOL_RETRY_S = 1.0
#: Seconds after a frame's "clock" answer that it goes again (sealed again): not at once, so that a
#: consumer that refuses it again cannot make a storm of it.
CLOCK_RESEND_S = 0.5
#: Seconds past two re-send intervals within which an answer from the consumer means that it
#: is there (a send that does not go is then a full queue, not a missing consumer).
HEARD_WITHIN_S = 5.0
WORK_ENDPOINT = "inproc://infraetl-work"
MAX_USERS = 10_000_000
#: Allocations between young-generation collections (the default is 700): see tune_gc.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect garbage less often: a source allocates ~10 nested dicts per user.

    Nearly all of them die by reference counting within a batch, yet at the
    default threshold (700) the cyclic collector runs every ~60 users and
    takes ~15% of the read path (measured on 500-user batches). The start-up
    objects are frozen so that the rarer full collections do not rescan them.
    """
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)


def begin_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """What a run's BEGIN tells the consumer of it (its first, and any sent again)."""
    return {"requested": spec["users"], "source": spec["source"], "nat": spec["nat"], "seed": spec["seed"]}


def new_run_id() -> str:
    """A sortable, unique run id: ``r20261125-180455-3f2a9c``."""
    return time.strftime("r%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:6]


def check_run_args(args: dict[str, Any]) -> dict[str, Any]:
    """Validate a start-run request; return the run spec or raise InfraETLError."""
    users = args.get("users")
    if type(users) is not int or not 1 <= users <= MAX_USERS:
        raise InfraETLError(f"--users must be a whole number from 1 to {MAX_USERS:,}")
    nat = args.get("nat") or []
    if not isinstance(nat, list) or not all(isinstance(c, str) for c in nat):
        raise InfraETLError("--nat must be a list of nationality codes")
    nat = [c.strip().upper() for c in nat if c.strip()]
    refused = schema.unknown_nationalities(nat)
    if refused:
        raise InfraETLError(refused)
    source = args.get("source") or "synthetic"
    if not isinstance(source, str) or not (source in SOURCES or source.startswith("file:")):
        raise InfraETLError(f"unknown source {source!r}: use randomuser, synthetic or file:PATH")
    if source.startswith("file:"):
        path = Path(source[5:])
        if not path.exists():
            raise InfraETLError(f"no such file on the producer's host: {path} (under systemd the producer "
                                "sees its own /tmp, and no /home)")
        if not path.is_file():
            raise InfraETLError(f"{path} on the producer's host is not a regular file")
        if not os.access(path, os.R_OK):
            raise InfraETLError(f"{path} on the producer's host is not readable by the producer")
    seed = args.get("seed")
    seed = str(seed) if seed not in (None, "") else uuid.uuid4().hex[:12]
    if len(seed) > MAX_SEED or not seed.isprintable():
        raise InfraETLError(f"--seed must be at most {MAX_SEED} printable characters")
    deadline = args.get("deadline")
    if deadline is not None and (type(deadline) not in (int, float) or not 1 <= deadline <= 10_000_000):
        raise InfraETLError("--deadline must be a number of seconds from 1 to 10,000,000")  # NaN too
    return {"users": users, "nat": sorted(set(nat)), "seed": seed, "source": source, "deadline": deadline}


class RunWorker(threading.Thread):
    """Pulls one run's users from its source and hands sealed frames to the main loop."""

    def __init__(self, ctx: zmq.Context, settings: ProducerSettings, seal: Callable[[wire.Message], bytes],
                 run_id: str, spec: dict[str, Any], *, skip_batches: int, producer_id: str) -> None:
        super().__init__(name=f"run-{run_id}", daemon=True)
        self.run_id = run_id
        self._ctx = ctx
        self._settings = settings
        self._seal = seal
        self._spec = spec
        self._skip = skip_batches
        self._producer = producer_id
        self.cancel = threading.Event()
        #: The producer is stopping (SIGTERM): not a cancel, so no ABORT; a restart resumes the run.
        self.stopping = threading.Event()
        self._t_read = 0.0
        #: Seconds this run waited for the main loop to take its frames (the consumer's pace):
        #: not the source's time, so not charged to its deadline; and since when it waits now
        #: (the API source's own threads read the clock meanwhile).
        self._waited = 0.0
        self._waiting_since: float | None = None

    def _clock(self) -> float:
        since = self._waiting_since  # waiting now: the clock stands at its start
        return (time.monotonic() if since is None else since) - self._waited

    def run(self) -> None:
        out = self._ctx.socket(zmq.PUSH)
        out.setsockopt(zmq.LINGER, 0)
        out.setsockopt(zmq.SNDHWM, 4)
        out.connect(WORK_ENDPOINT)
        try:
            self._produce(out)
        except Exception as e:
            if not self.stopping.is_set():  # stopping: what was not handed over is made again after the restart
                self._abort(out, e)
        finally:
            out.close()

    def _abort(self, out: zmq.Socket, e: Exception) -> None:
        if self.cancel.is_set() or isinstance(e, _Cancelled):
            self._hand(out, "abort", END_SEQ, 0, reason="cancelled by operator", cancelled=True)
        elif isinstance(e, SourceError):
            self._hand(out, "abort", END_SEQ, 0, reason=str(e))
        else:  # a bug in a source must fail the run, not the daemon
            logger.exception("run %s: unexpected error in the source", self.run_id)
            self._hand(out, "abort", END_SEQ, 0, reason=f"internal error: {type(e).__name__}: {e}")

    def _produce(self, out: zmq.Socket) -> None:
        from .validate import check_rows

        spec = self._spec
        deadline_s = spec.get("deadline") or self._settings.run_deadline
        plan = RunPlan(
            users=spec["users"], nat=tuple(spec["nat"]), seed=spec["seed"],
            batch_size=spec.get("batch_size") or self._settings.batch_size,
            deadline=self._clock() + deadline_s,
            cancelled=lambda: self.cancel.is_set() or self.stopping.is_set(),
            # A consumer down for 10 minutes (or busy with other runs) failed every run in
            # progress "deadline reached", blaming the source (a review).
            clock=self._clock,
        )
        source = open_source(spec["source"], api_url=self._settings.api_url)
        if self._skip == 0:
            self._hand(out, "begin", BEGIN_SEQ, 0)
        seq = 0
        delivered = 0
        batches = iter(source.batches(plan, check_rows))
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            self._t_read += time.perf_counter() - t
            if batch is None:
                break
            if self.cancel.is_set():
                raise _Cancelled
            seq += 1
            delivered += len(batch.users)
            if seq <= self._skip:
                continue  # spooled before a restart; the source replays deterministically
            self._send_batch(out, seq, batch)
        if delivered != plan.users:
            raise SourceError(f"source delivered {delivered} users, {plan.users} were requested")
        self._hand(out, "end", END_SEQ, 0, batches=seq, delivered=delivered)

    def _send_batch(self, out: zmq.Socket, seq: int, batch: Batch) -> None:
        t = time.perf_counter()
        cols = schema.rows_to_columns(batch.users)  # type: ignore[arg-type]  # check_rows gave rows
        quarantine = dict(batch.quarantine)
        msg = wire.make("data", self.run_id, seq, producer=self._producer, n=len(batch.users),
                        cols=cols, quarantine=quarantine)
        frame = self._seal(msg)
        if len(frame) > self._settings.max_frame:
            raise SourceError(f"batch {seq} ({len(batch.users)} users) seals to {len(frame):,} bytes, over "
                              f"--max-frame {self._settings.max_frame:,}: lower --batch-size, or raise "
                              "--max-frame on both daemons alike")
        t_seal = time.perf_counter() - t
        self._push(out, {"run": self.run_id, "seq": seq, "kind": "data", "users": len(batch.users),
                         "quarantine": quarantine, "frame": frame,
                         "t_read": self._t_read, "t_seal": t_seal})
        self._t_read = 0.0

    def _hand(self, out: zmq.Socket, kind: str, seq: int, users: int, **fields: Any) -> None:
        cancelled = fields.pop("cancelled", False)
        if cancelled:
            fields["cancelled"] = True  # the consumer shows the run cancelled, not failed
        if kind == "begin":
            fields = begin_fields(self._spec)
        elif kind == "end":
            fields["quarantine"] = {}
            fields["requested"] = self._spec["users"]
        msg = wire.make(kind, self.run_id, seq, producer=self._producer, **fields)
        self._push(out, {"run": self.run_id, "seq": seq, "kind": kind, "users": users,
                         "reason": fields.get("reason"), "cancelled": cancelled,
                         "frame": self._seal(msg)}, always=kind == "abort")

    def _push(self, out: zmq.Socket, item: dict[str, Any], always: bool = False) -> None:
        data = msgpack.packb(item, use_bin_type=True)
        # Blocks while the main loop's window is full: that is the back-pressure.
        t = self._waiting_since = time.monotonic()
        try:
            while True:
                if (self.cancel.is_set() and not always) or self.stopping.is_set():
                    raise _Cancelled
                if out.poll(200, zmq.POLLOUT):
                    out.send(data)
                    return
        finally:
            self._waited += time.monotonic() - t
            self._waiting_since = None


V = TypeVar("V")


def _bounded_set(table: dict[str, V], key: str, value: V) -> None:
    """``table[key] = value``, the newest last, and at most FAILED_KEPT keys (the oldest go)."""
    table.pop(key, None)
    table[key] = value
    if len(table) > FAILED_KEPT:
        del table[next(iter(table))]


def _outcome(ack: dict[str, Any]) -> dict[str, Any] | None:
    """What the consumer counted of a complete run, as its ACK says (None from an older one)."""
    out: dict[str, Any] = {k: ack[k] for k in ("kept", "quarantined") if type(ack.get(k)) is int}
    if out and ack.get("filtered_apart") is True:
        out["filtered_apart"] = True
    return out or None


#: Failed or cancelled runs whose late work and ACKs this producer remembers to drop.
FAILED_KEPT = 4096
#: Runs whose sources run at once; the others wait their turn, in order. Every run shares one
#: window, so more gain nothing, and 100-200 at once starved the main loop past the systemd
#: watchdog (40-50 s without a ping, `status` unanswered) and took ~4 MB each (a review).
MAX_PRODUCING = 4
#: Bytes of sealed frames in flight (each is also spooled, and queued once more in the data
#: socket while the consumer is away), whatever --window says: 2,000 frames of 5,000 users
#: would have held ~4 GB (a review).
IN_FLIGHT_BYTES = 128 << 20
#: Seconds a stopping producer waits for its run workers, all of them together.
STOP_WORKERS_S = 2.0


class _Cancelled(Exception):
    pass


class _InFlight(dict[tuple[str, int], list[Any]]):
    """(run, seq) -> [frame, kind, users, last send attempt], and the bytes of those frames."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __setitem__(self, key: tuple[str, int], entry: list[Any]) -> None:
        old = super().get(key)
        self.bytes += len(entry[0]) - (len(old[0]) if old is not None else 0)
        super().__setitem__(key, entry)

    def __delitem__(self, key: tuple[str, int]) -> None:
        self.bytes -= len(self[key][0])
        super().__delitem__(key)

    def pop(self, key: tuple[str, int], *default: Any) -> Any:  # type: ignore[override]
        if key in self:
            self.bytes -= len(self[key][0])
        return super().pop(key, *default)


class Producer:
    """The producer's main loop (see module docstring)."""

    def __init__(self, settings: ProducerSettings) -> None:
        self.s = settings
        self.producer_id = settings.producer_id or socket.gethostname()
        self.sealer = wire.Sealer(settings.keys, ttl=settings.token_ttl, max_size=settings.max_frame)
        #: The consumer's clock, which the data path's frames are stamped in (see wire.PeerClock).
        self.clock = wire.PeerClock()
        self._lock = lock_state_dir(settings.state_dir, "producer")
        self.spool = Spool(settings.state_dir / "spool.sqlite3")
        self.ctx = zmq.Context()
        self.signals = Signals()
        self.notifier = Notifier()
        self.notifier.summary = self._status_line
        self.rejects: Counter[str] = Counter()
        self.control_nonces = ReplayGuard()
        self._warn = RateLimitedLog(logger)
        # (run, seq) -> [frame, kind, users, last send attempt]; a re-seal keeps a frame's size
        self.in_flight = _InFlight()
        self.workers: dict[str, RunWorker] = {}
        #: Runs waiting for one of the MAX_PRODUCING places, oldest first: (run, spec, skip).
        self.queued: deque[tuple[str, dict[str, Any], int]] = deque()
        self.stages: dict[str, float] = defaultdict(float)   # seconds per stage, for the benchmark
        # Runs this producer failed: their late work is dropped. The latest FAILED_KEPT only (a
        # set of every cancelled run grew for good): late work comes within seconds.
        self.failed_here: dict[str, None] = {}
        self._retired: wire.Sealer | None = None   # the keys before the last SIGHUP, to re-seal with
        # Work the spool refused (disk full, read-only): held in order, retried, and no more taken.
        self.unspooled: deque[bytes] = deque()
        self._spool_retry_at = 0.0
        #: The consumer's frame limit, as the last ACK that answers something of ours now said
        #: (0: not known yet): an old ACK replayed brought back an old limit (a review).
        self.consumer_max_frame = 0
        #: This host's monotonic time of the last ACK that settled a frame of a run, and of the
        #: sealing of the END copy in flight: a ``pending`` answer counts only for an END copy
        #: sealed after that (see _answers_copy). At most FAILED_KEPT runs each.
        self._settled_mono: dict[str, float] = {}
        self._end_sealed: dict[str, float] = {}
        #: Runs whose BEGIN was sent again at start (see _resume): their first answer is fresh.
        self._hello_runs: set[str] = set()
        #: BEGINs sent again at start for the runs carried over (see _resume), until sent.
        self._hellos: list[bytes] = []
        #: When the consumer last answered (monotonic; -inf: never).
        self._answered_at = -math.inf

    # -- set-up --
    def _open_sockets(self) -> None:
        s = self.s
        self.control = make_socket(self.ctx, zmq.ROUTER, max_frame=64 * 1024)
        self.data = make_socket(self.ctx, zmq.PUSH, max_frame=s.max_frame, hwm=s.window)
        self.acks = make_socket(self.ctx, zmq.SUB, max_frame=64 * 1024)
        self.work = self.ctx.socket(zmq.PULL)
        self.work.setsockopt(zmq.LINGER, 0)
        self.work.setsockopt(zmq.RCVHWM, 4)
        from .curve import apply_client, apply_server

        apply_server(self.control, s.curve_secret, s.curve_allow, self.ctx)
        apply_client(self.data, s.curve_secret, s.curve_server_key)
        apply_client(self.acks, s.curve_secret, s.curve_server_key)
        self.acks.setsockopt(zmq.SUBSCRIBE, self.producer_id.encode() + b"\0")
        bind(self.control, s.control_bind)
        self.work.bind(WORK_ENDPOINT)
        connect(self.data, s.data_connect)
        connect(self.acks, s.ack_connect)
        endpoints = {"control": bound_endpoint(self.control), "pid": os.getpid(),
                     "producer_id": self.producer_id}
        tmp = self.s.state_dir / ".endpoints.json.tmp"
        tmp.write_text(json.dumps(endpoints))
        os.replace(tmp, self.s.state_dir / "endpoints.json")
        logger.info("producer %s: control on %s, data to %s, acks from %s",
                    self.producer_id, endpoints["control"], s.data_connect, s.ack_connect)

    def _resume(self) -> None:
        for run_id in self.spool.close_aborted():
            logger.warning("run %s was aborted before a restart; closed as failed", run_id)
        for run in self.spool.answered_unclosed():
            logger.warning("run %s: its END was answered but the run not closed before a restart; asking the "
                           "consumer again", run.run_id)
            self.spool.respool_end(run.run_id, END_SEQ, self.seal(wire.make(
                "end", run.run_id, END_SEQ, producer=self.producer_id, batches=run.batches,
                delivered=run.produced, quarantine={}, requested=run.spec.get("users"))))
        for frame_run, seq, kind, frame in self.spool.unacked():
            self.in_flight[(frame_run, seq)] = [frame, kind, 0, 0.0]
        carried = self.spool.unfinished_runs()
        for run in carried:
            if not run.ended:
                logger.info("run %s: resuming after restart from batch %d", run.run_id, run.batches + 1)
                self._start_worker(run.run_id, run.spec, skip=run.batches)
        # A BEGIN again for every run carried over (the consumer merges a repeat): its ACK tells
        # this producer the consumer's --max-frame, which a run whose frames are all too large
        # would otherwise never learn (none of them is ever ACKed). Not spooled: if it is lost,
        # so is only that.
        self._hellos = [self.seal(wire.make("begin", run.run_id, BEGIN_SEQ, producer=self.producer_id,
                                            **begin_fields(run.spec)))
                        for run in carried]
        self._hello_runs = {run.run_id for run in carried}
        if self.in_flight:
            logger.info("re-sending %d unACKed frame(s) from the spool", len(self.in_flight))
        foreign = sum(not self.sealer.holds_key_of(e[0]) for e in self.in_flight.values())
        if foreign:
            logger.warning("%d spooled frame(s) are sealed with a key this producer no longer holds: they "
                           "are sent as they are while the consumer may still hold it; %g s after their "
                           "sealing (half the token TTL) they cannot be re-sealed and their runs fail: after a "
                           "leak, cancel those runs (`infraetl-ctl cancel`), or they hold the window until then",
                           foreign, self.s.token_ttl / 2)

    def seal(self, msg: wire.Message) -> bytes:
        """Seal a message of the data path, stamped in the consumer's time (any thread).

        ``clock_acks`` asks the consumer to answer the frame with its own time should it refuse
        it for its stamp (status ``clock``): an older producer would take such an answer for an
        ACK, so only a producer that says so gets one."""
        msg["clock_acks"] = True
        return self.sealer.seal(msg, at=self.clock.now())

    def _start_worker(self, run_id: str, spec: dict[str, Any], skip: int = 0) -> None:
        if len(self.workers) >= MAX_PRODUCING:
            self.queued.append((run_id, spec, skip))
            logger.info("run %s waits its turn: %d runs are producing, %d wait", run_id,
                        len(self.workers), len(self.queued))
            return
        # The worker seals with whatever keys the producer holds now (SIGHUP swaps them).
        worker = RunWorker(self.ctx, self.s, self.seal, run_id, spec, skip_batches=skip,
                           producer_id=self.producer_id)
        self.workers[run_id] = worker
        worker.start()

    # -- main loop --
    def serve(self) -> int:
        """Run until SIGTERM; return the exit status."""
        self.signals.install()
        try:
            self._open_sockets()
            self._resume()
            tune_gc()
            self.notifier.ready(self._status_line())
            poller = zmq.Poller()
            poller.register(self.control, zmq.POLLIN)
            poller.register(self.acks, zmq.POLLIN)
            work_registered = False
            while not self.signals.stop:
                if self.unspooled and time.monotonic() >= self._spool_retry_at:
                    self._spool_held()
                room = self._room()
                want_work = room > 0 and not self.unspooled
                if want_work != work_registered:
                    (poller.register(self.work, zmq.POLLIN) if want_work else poller.unregister(self.work))
                    work_registered = want_work
                events = dict(poller.poll(100))
                if self.control in events:
                    self._drain(self.control, self._on_control, multipart=True)
                if self.acks in events:
                    self._drain(self.acks, self._on_ack)
                if self.work in events:
                    self._drain(self.work, self._on_work, limit=room, more=self._has_room)
                self._send_hellos()  # when no frame is due (_send sends them ahead of any)
                self._resend_due()
                self._reap_workers()
                self.notifier.ping()
                if self.signals.reload:
                    self._reload_keys()
            self.notifier.stopping()
            self._stop_workers()
            logger.info("producer stopping: %d frame(s) stay spooled for the next start", len(self.in_flight))
            return 0
        finally:
            for sock in ("control", "data", "acks", "work"):
                if hasattr(self, sock):
                    getattr(self, sock).close()
            self.ctx.term()
            self.spool.close()
            self.notifier.close()
            os.close(self._lock)

    def _drain(self, sock: zmq.Socket, handle: Any, *, multipart: bool = False, limit: int = 1000,
               more: Callable[[], bool] = lambda: True) -> None:
        for _ in range(max(limit, 0)):
            if not more():
                return
            try:
                msg = sock.recv_multipart(zmq.NOBLOCK) if multipart else sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            handle(msg)

    def _on_work(self, data: bytes) -> None:
        if self.unspooled:
            self.unspooled.append(data)  # behind what the spool refused: in order
            return
        try:
            self._take_work(data)
        except StoreError as e:
            self._hold(data, e)

    def _hold(self, data: bytes, e: StoreError) -> None:
        """Keep a work item the spool refused; the workers wait (back-pressure) until it takes it."""
        self.unspooled.appendleft(data)
        self._spool_retry_at = time.monotonic() + SPOOL_RETRY_S
        self._warn.warning("spool", "cannot spool: %s; holding %d frame(s), taking no more work until "
                           "the spool takes them", e, len(self.unspooled))

    def _spool_held(self) -> None:
        while self.unspooled:
            data = self.unspooled.popleft()
            try:
                self._take_work(data)
            except StoreError as e:
                self._hold(data, e)
                return
        logger.info("the spool takes frames again")

    def _take_work(self, data: bytes) -> None:
        item = msgpack.unpackb(data, raw=False)
        run_id, seq, kind = item["run"], item["seq"], item["kind"]
        if run_id in self.failed_here:
            return  # the run failed under its worker (see _fail_run): nothing more of it goes out
        self.stages["read"] += item.get("t_read", 0.0)
        self.stages["seal"] += item.get("t_seal", 0.0)
        finish = None
        if kind == "abort":
            finish = ("cancelled" if item.get("cancelled") else "failed", item.get("reason"))
        t = time.perf_counter()
        self.spool.add_frame(run_id, seq, kind, item["users"], item["frame"], item.get("quarantine"),
                             finish=finish)
        self.stages["spool"] += time.perf_counter() - t
        crash_point("after_spool")
        if finish is not None:  # failed at ERROR, as every failed run (journalctl -p err lists them all)
            logger.log(logging.WARNING if finish[0] == "cancelled" else logging.ERROR, "run %s %s: %s",
                       run_id, *finish)
        self.in_flight[(run_id, seq)] = [item["frame"], kind, item["users"], 0.0]
        if kind == "end":
            _bounded_set(self._end_sealed, run_id, time.monotonic())
        self._send(run_id, seq)

    def _send(self, run_id: str, seq: int) -> None:
        entry = self.in_flight[(run_id, seq)]
        now = time.monotonic()
        frame = entry[0]
        if self.consumer_max_frame and len(frame) > self.consumer_max_frame:
            self._fail_run(run_id, f"batch {seq} is {len(frame):,} bytes sealed, over the consumer's "
                           f"--max-frame {self.consumer_max_frame:,} (its socket drops it unseen): set "
                           "--max-frame alike on both daemons, or a smaller --batch-size")
            return
        # Seal again a frame near the end of the consumer's replay window, or one under a key
        # this producer no longer seals with while a key it holds still opens it (a worker
        # sealed it just before a SIGHUP, say): the consumer may have dropped that key.
        stale = self.clock.is_off(self.sealer.sealed_at(frame), self.s.token_ttl)
        if (stale or (not self.sealer.seals_like(frame) and self._opener(frame) is not None)) \
                and not self._reseal(run_id, seq, entry):
            return
        if self._hellos:
            # Ahead of any frame: one over the consumer's limit drops the connection, and what
            # is queued behind it.
            self._send_hellos()
        try:
            t = time.perf_counter()
            self.data.send(entry[0], zmq.NOBLOCK)
            self.stages["send"] += time.perf_counter() - t
            entry[3] = now
        except zmq.Again:
            # No consumer connected (IMMEDIATE) or its queue is full: try again later.
            entry[3] = now - self.s.resend_after + 0.5
            if now - self._answered_at < 2 * self.s.resend_after + HEARD_WITHIN_S:
                # It answers: a full queue, not a missing consumer (a review found this case
                # logged as "not reachable", which the guide reads as "consumer down").
                self._warn.warning("slow-consumer", "the consumer at %s (or the link to it) takes frames slower "
                                   "than this producer makes them: %d frame(s) wait in the spool",
                                   self.s.data_connect, len(self.in_flight))
            else:
                self._warn.warning("no-consumer", "consumer at %s not taking frames (down, unreachable, or not "
                                   "reading: see its /healthz); frames stay spooled", self.s.data_connect)

    def _opener(self, frame: bytes) -> wire.Sealer | None:
        """Our sealer that holds the key ``frame`` names: the current one, else the one a SIGHUP retired."""
        for sealer in (self.sealer, self._retired):
            if sealer is not None and sealer.holds_key_of(frame):
                return sealer
        return None

    def _reseal(self, run_id: str, seq: int, entry: list[Any]) -> bool:
        """Seal an in-flight frame again with the current key; False if no key of ours opens it
        (its run is then failed: see :meth:`_fail_run`)."""
        try:
            entry[0] = self.sealer.reseal(entry[0], opener=self._opener(entry[0]), at=self.clock.now())
        except WireError as e:
            if seq == END_SEQ:
                # The END went out before: the consumer may have completed the run. Its answer to
                # the ABORT says so, and the run then shows complete here (a review: an operator
                # told to start it again counted it twice).
                why = (f"its END cannot be re-sealed ({e}); unless the consumer had completed the run "
                       "(`infraetl-ctl status` then shows it complete once the consumer answers), start it again")
            else:
                why = f"its batch {seq} cannot be re-sealed ({e}); start the run again"
            self._fail_run(run_id, why)
            return False
        try:
            self.spool.replace_frame(run_id, seq, entry[0])
        except StoreError as e:  # the old seal stays spooled: a restart re-seals it again
            self._warn.warning("spool", "cannot store a re-sealed frame: %s", e)
        return True

    def cancel_run(self, run_id: str) -> None:
        """An operator's cancel, made durable before it is answered: a restart does not bring the
        run back, and nothing of it the worker still hands over goes out (its END included).
        If the spool refuses the write, StoreError says so and nothing has changed."""
        self._fail_run(run_id, "cancelled by operator", state="cancelled", raise_store_error=True)

    def _fail_run(self, run_id: str, why: str, *, state: str = "failed", raise_store_error: bool = False) -> bool:
        """Give up a run that can no longer complete: close it as ``state``, forget its frames,
        and tell the consumer with an ABORT (sealed now, with the current key). The spool first:
        if it refuses the write, nothing changes here (False; the caller tries again later)."""
        extra = {"cancelled": True} if state == "cancelled" else {}
        abort = self.seal(wire.make("abort", run_id, END_SEQ, producer=self.producer_id, reason=why, **extra))
        try:
            self.spool.fail_run(run_id, END_SEQ, abort, why, state=state)
        except StoreError as e:
            if raise_store_error:
                raise
            self._warn.warning("spool", "cannot record that run %s %s (%s): %s; trying again later",
                               run_id, state, why, e)
            return False
        if state == "cancelled":
            logger.warning("run %s: %s", run_id, why)
        else:
            logger.error("run %s failed: %s", run_id, why)
        _bounded_set(self.failed_here, run_id, None)
        worker = self.workers.get(run_id)
        if worker is not None:
            worker.cancel.set()
        self.queued = deque(q for q in self.queued if q[0] != run_id)  # never started: nothing to stop
        self._forget_end(run_id)
        for key in [k for k in self.in_flight if k[0] == run_id]:
            del self.in_flight[key]
        self.in_flight[(run_id, END_SEQ)] = [abort, "abort", 0, 0.0]
        self._send(run_id, END_SEQ)
        return True

    def _send_hellos(self) -> None:
        while self._hellos:
            try:
                self.data.send(self._hellos[0], zmq.NOBLOCK)
            except zmq.Again:
                return  # no consumer connected yet
            self._hellos.pop(0)

    def _resend_due(self) -> None:
        now = time.monotonic()
        for key, entry in list(self.in_flight.items()):
            if now - entry[3] >= self.s.resend_after and key in self.in_flight:
                if entry[3] > 0:
                    logger.debug("re-sending %s/%d", *key)
                self._send(*key)

    def _on_ack(self, frame: bytes) -> None:
        prefix = self.producer_id.encode() + b"\0"
        sealed = frame[len(prefix):]
        try:
            # Not checked against this host's clock: an ACK answers a frame of ours, by its run
            # (unique) and seq, so an old one answers nothing in flight; and one from a consumer
            # whose clock is off must still count (its run was counted there, a review found,
            # while this producer refused every ACK of it, and a cancel then counted it twice).
            msg = self.sealer.open(sealed, check_time=False)
        except WireError as e:
            self.rejects[e.reason] += 1
            self._warn.warning(e.reason, "rejected ACK frame: %s", e)
            return
        if msg["kind"] != "ack":
            return
        run_id, seq, status = msg["run"], msg["seq"], msg["status"]
        # Opened whatever its stamp, an ACK may be a copy replayed long after: what it says is
        # taken only where a replay can do no harm (a review replayed old ACKs to bring back an
        # old frame limit, to re-seal a batch a thousand times a second, and to fail a run
        # the consumer had counted). Its stamp is the consumer's time when it was sent.
        stamp = self.sealer.sealed_at(sealed)
        entry = self.in_flight.get((run_id, seq))
        if entry is not None and entry[1] != msg["of"]:
            # An END and the ABORT that replaced it share their seq: an ACK of the END that
            # crossed a cancel must not take the ABORT for answered.
            entry = None
        self._answered_at = time.monotonic()
        if entry is not None and not self._answers_copy(run_id, seq, entry, msg):
            return
        hello = msg["of"] == "begin" and run_id in self._hello_runs
        if entry is not None or hello:  # it answers a frame of ours in flight: fresh
            self._hello_runs.discard(run_id)
            self._heard_clock(stamp)
            if type(msg.get("max_frame")) is int and msg["max_frame"] > 0:
                self.consumer_max_frame = msg["max_frame"]
        if status == "clock":
            # Refused for its stamp: sealed again now, in the consumer's time as last heard, and
            # sent soon. Always sealed again: a consumer with a shorter --token-ttl than this
            # producer's refused the same frame again and again, at network speed (a review).
            if entry is not None and self._reseal(run_id, seq, entry):
                entry[3] = self._answered_at - self.s.resend_after + CLOCK_RESEND_S
            return
        try:
            settles = entry is not None and status != "pending"
            finish: tuple[str, str | None] | None = None
            if msg["of"] == "end" and status == "complete" and run_id not in self.failed_here:
                finish = ("complete", None)
            elif msg["of"] == "end" and status == "failed":
                finish = ("failed", str(msg.get("reason") or "the consumer failed it")[:500])
            # The ACK and the run's close in one transaction: a producer killed between the two
            # left the run running for good, its END ACKed and nothing left to close it (a review).
            closed = self.spool.settle(run_id, seq if settles else None, finish=finish, url=msg.get("url"),
                                       outcome=_outcome(msg) if finish and finish[0] == "complete" else None)
            if settles:
                self.in_flight.pop((run_id, seq), None)
                _bounded_set(self._settled_mono, run_id, time.monotonic())
                MALLOC.tick()
            if finish is not None:
                self._forget_end(run_id)
            if finish is not None and finish[0] == "complete":
                if closed:  # once: every copy of the END (a re-send) is answered again
                    logger.info("run %s complete: %s users on %s", run_id, msg.get("applied"), msg.get("url"))
                MALLOC.release()
            elif finish is not None:
                if closed:
                    logger.error("run %s failed on the consumer: %s", run_id, finish[1])
            elif status == "complete":  # of an ABORT, or of the END it replaced: too late
                if self.spool.completed_after_all(run_id, msg.get("url"), outcome=_outcome(msg)):
                    logger.warning("run %s had completed on the consumer before its ABORT reached it: "
                                   "it is counted there, and complete here", run_id)
            elif msg["of"] == "end" and status == "pending" and entry is not None:  # not an ABORT
                self._check_missing(run_id, msg.get("missing"))
        except StoreError as e:
            # Not recorded: the frame is sent again, and its ACK (the consumer ACKs a duplicate
            # again) records it once the spool takes writes.
            if entry is not None:
                self.in_flight[(run_id, seq)] = entry
            self._warn.warning("spool", "cannot record an ACK: %s", e)

    def _answers_copy(self, run_id: str, seq: int, entry: list[Any], msg: dict[str, Any]) -> bool:
        """Whether an ACK of a frame in flight may be taken as answering the copy sent now.

        ``clock`` and ``pending`` answers name the copy they answer (a consumer of this
        release does; ``wire.copy_id``): one about an earlier copy, sealed again since, is a
        replay or a late one. A ``pending`` answer counts only for an END copy sealed after
        the run's last batch was settled here (by this host's clock: a stamp ordering broke
        when the consumer's clock stepped back, and forgot a restart; a review): the END is
        sealed again for that, so the next answer can count. Anything else settles its frame
        once, and a copy of it then finds none.
        """
        status, named = msg["status"], msg.get("copy")
        if status not in ("clock", "pending") or type(named) is not bytes:
            return True  # an older consumer names none: as before
        if named != wire.copy_id(entry[0]):
            return False
        if status == "clock":
            return True
        if self._end_sealed.get(run_id, -math.inf) > self._settled_mono.get(run_id, -math.inf):
            return True
        # This copy went out before batches now settled (or before a restart): ask again.
        if self._reseal(run_id, seq, entry):
            _bounded_set(self._end_sealed, run_id, time.monotonic())
        return False

    def _forget_end(self, run_id: str) -> None:
        """The run is over here: what _answers_copy kept of it goes."""
        self._settled_mono.pop(run_id, None)
        self._end_sealed.pop(run_id, None)

    def _heard_clock(self, stamp: float) -> None:
        """Take the consumer's time from an ACK; tell the operator when it is off this host's."""
        before = self.clock.offset
        if not self.clock.heard(stamp):
            return
        offset, tell = self.clock.offset, wire.PeerClock.TELL_AT
        if abs(offset) >= tell:
            logger.warning("the consumer's clock is %+.0f s off this host's: frames are stamped in its time so "
                           "that it takes them; set both hosts' clocks right (NTP)", offset)
        elif abs(before) >= tell:
            logger.info("the consumer's clock agrees with this host's again (%+.0f s)", offset)

    def _check_missing(self, run_id: str, missing: Any) -> None:
        """The consumer lacks batches of a run whose END it holds: fail the run if this producer
        had any of them ACKed (dropped from the spool, they can never come again)."""
        if not isinstance(missing, list):
            return
        # ACKs arrive in the order the consumer sent them: a batch it applied after answering
        # this END is still in flight here, so it is not taken for lost.
        lost = [s for s in missing if type(s) is int and s >= 1 and (run_id, s) not in self.in_flight]
        if lost and run_id not in self.workers:
            self._fail_run(run_id, f"the consumer lacks batch(es) {', '.join(map(str, lost[:5]))} it had "
                           "ACKed (its state was reset or restored from an older copy): start the run again")

    def _on_control(self, parts: list[bytes]) -> None:
        from .control import handle_control

        if len(parts) != 2:
            self.rejects["multipart"] += 1
            return
        ident, frame = parts
        reply = handle_control(self, frame)
        self.control.send_multipart([ident, reply], zmq.NOBLOCK)

    def _room(self) -> int:
        """Frames to take from the workers now: what --window leaves, none once the frames in
        flight hold IN_FLIGHT_BYTES (each taken is checked: over it by one frame at most)."""
        return max(0, self.s.window - len(self.in_flight)) if self._has_room() else 0

    def _has_room(self) -> bool:
        return self.in_flight.bytes < IN_FLIGHT_BYTES

    def _reap_workers(self) -> None:
        for run_id, worker in list(self.workers.items()):
            if not worker.is_alive():
                del self.workers[run_id]
        while self.queued and len(self.workers) < MAX_PRODUCING:
            self._start_worker(*self.queued.popleft())

    def _stop_workers(self) -> None:
        for worker in self.workers.values():
            worker.stopping.set()
        # Frames a worker had not handed over are re-made from the source after a restart.
        # One deadline for all: systemd waits TimeoutStopSec in all, not per run.
        deadline = time.monotonic() + STOP_WORKERS_S
        for worker in self.workers.values():
            worker.join(timeout=max(0.0, deadline - time.monotonic()))

    def _reload_keys(self) -> None:
        from .config import reload_sealer

        self.signals.reload = False
        old = self.sealer
        self.sealer = reload_sealer(old, ttl=self.s.token_ttl, max_size=self.s.max_frame)
        if self.sealer is old:
            return
        # Frames waiting for an ACK are sealed again with the new key while the old keys can still
        # open them, now, and any a worker sealed before the swap when they are sent: a rotation
        # that drops the old key loses nothing in flight.
        self._retired = old
        for (run_id, seq), entry in list(self.in_flight.items()):
            if not self.sealer.seals_like(entry[0]) and self._opener(entry[0]) is not None:
                self._reseal(run_id, seq, entry)

    def _status_line(self) -> str:
        return f"{len(self.workers)} run(s) active, {len(self.in_flight)} frame(s) awaiting ACK"


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``infraetl-producer``."""
    from .cli_daemons import producer_cli

    producer_cli(args=argv, auto_envvar_prefix="INFRAETL")


if __name__ == "__main__":
    main(sys.argv[1:])
