"""The control protocol between ``infraetl-ctl`` and the producer.

Requests and replies are sealed like every other frame, so without the key
nobody can start or cancel a run. A request the producer cannot open gets
the fixed, unsealed answer :data:`NOT_AUTHORISED` (it reveals nothing and
costs nothing), which the client turns into "not authorised".

Each request carries a fresh random nonce, and the producer takes a nonce
once: a request sealed more than :data:`CONTROL_WINDOW` seconds away from the
producer's clock (either way), or seen before within it, gets the same answer.
So a ``start-run`` frame captured on the wire (without CURVE the traffic is
readable) cannot be sent again to start more runs. A reply answers the
request's nonce, so it is fresh whatever its time stamp says: the client
opens it without checking the time, and clocks up to CONTROL_WINDOW apart
work both ways.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from . import wire
from .exceptions import ControlError, InfraETLError, NotAuthorised, StoreError, WireError
from .sockets import connect, make_socket

if TYPE_CHECKING:
    from .producer import Producer

logger = logging.getLogger(__name__)

NOT_AUTHORISED = b"infraetl: not authorised"
COMMANDS = ("start-run", "status", "cancel", "ping")
#: Seconds a control request stays acceptable, and its nonce remembered. A ctl whose clock is
#: further behind the producer's than this is refused ("not authorised").
CONTROL_WINDOW = 300.0


class ReplayGuard:
    """The control nonces taken within the window: each request is taken once.

    Only requests that opened under the key are remembered, so the set holds at most the
    window's legitimate requests (``infraetl-ctl wait`` polls five a second).
    """

    def __init__(self, window: float = CONTROL_WINDOW, clock: Callable[[], float] = time.time) -> None:
        self._window = window
        self._clock = clock
        self._seen: dict[str, float] = {}  # nonce -> sealed at, in the order taken

    def __len__(self) -> int:
        return len(self._seen)

    def take(self, nonce: str, sealed_at: float) -> None:
        """Take a request's nonce, or raise WireError (``expired``, ``from_future`` or ``replay``)."""
        now = self._clock()
        if now - sealed_at > self._window:
            raise WireError("expired", f"control request sealed {now - sealed_at:.0f}s ago, "
                                       f"beyond the {self._window:.0f}s window")
        if sealed_at - now > self._window:
            raise WireError("from_future", f"control request sealed {sealed_at - now:.0f}s ahead of this "
                                           "host's clock; check the hosts' clocks")
        # A nonce sealed before the window would be refused as expired anyway: forget it.
        while self._seen:
            oldest = next(iter(self._seen))
            if now - self._seen[oldest] <= self._window:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            raise WireError("replay", "control request seen before (replayed)")
        self._seen[nonce] = sealed_at


# --- producer side --------------------------------------------------------

def _where(e: InfraETLError) -> str:
    """An error for the ctl, which may run on another host: a store's is the producer's spool."""
    return f"the producer's spool: {e}" if isinstance(e, StoreError) else str(e)


def handle_control(producer: Producer, frame: bytes) -> bytes:
    """Open one control request, run it, and return the sealed reply frame."""
    try:
        msg = producer.sealer.open(frame, check_time=False)  # the nonce's window instead
        if msg["kind"] != "control":
            raise WireError("bad_schema", "not a control message")
        producer.control_nonces.take(msg["run"], producer.sealer.sealed_at(frame))
        if msg["cmd"] == "start-run" and producer.spool.started_by(msg["run"]):
            # Kept with the run, so a restart of the producer does not open the window again.
            raise WireError("replay", "start-run request seen before (replayed)")
    except WireError as e:
        producer.rejects[e.reason] += 1
        producer._warn.warning("control-" + e.reason, "rejected control frame: %s", e)
        return NOT_AUTHORISED
    except StoreError as e:
        return producer.sealer.seal_like(frame, wire.make("reply", msg["run"], msg["seq"], ok=False,
                                                          error=_where(e)))
    try:
        result = _dispatch(producer, msg["cmd"], msg["args"], msg["run"])
        reply = wire.make("reply", msg["run"], msg["seq"], ok=True, result=result)
    except InfraETLError as e:
        reply = wire.make("reply", msg["run"], msg["seq"], ok=False, error=_where(e))
    # Under the key that opened the request: an operator whose key file still has only the old
    # key (mid-rotation) can read that the run started, instead of retrying it (a review).
    return producer.sealer.seal_like(frame, reply)


def _dispatch(producer: Producer, cmd: str, args: dict[str, Any], nonce: str) -> Any:
    from .producer import check_run_args, new_run_id

    if cmd == "ping":
        return {"producer_id": producer.producer_id, "pid": os.getpid()}
    if cmd == "start-run":
        # The batch size is the run's: a restart that resumes it skips batches of this size,
        # whatever --batch-size the producer has by then.
        spec = {**check_run_args(args), "batch_size": producer.s.batch_size}
        run_id = new_run_id()
        producer.spool.create_run(run_id, spec, nonce=nonce)
        producer._start_worker(run_id, spec)
        logger.info("run %s started: %d users from %s (nat %s, seed %s)", run_id, spec["users"],
                    spec["source"], ",".join(spec["nat"]) or "all", spec["seed"])
        return {"run_id": run_id, **spec}
    if cmd == "status":
        wanted = args.get("run_id")
        if "run_id" in args:  # "" too: it names no run, it does not mean "every run"
            row = producer.spool.run(str(wanted))
            if row is None:
                raise InfraETLError(f"no run {wanted} on this producer")
            return {"runs": [row.as_dict()], "in_flight": len(producer.in_flight)}
        limit = args.get("limit", 20)
        limit = limit if type(limit) is int and 0 < limit <= 1000 else 20
        return {"runs": [r.as_dict() for r in producer.spool.runs(limit)],
                "in_flight": len(producer.in_flight), "producer_id": producer.producer_id,
                "rejected": dict(producer.rejects), "stages": dict(producer.stages),
                "consumer_clock_offset_s": round(producer.clock.offset, 1)}
    if cmd == "cancel":
        run_id = str(args.get("run_id", ""))
        row = producer.spool.run(run_id)
        if row is None:
            raise InfraETLError(f"no run {run_id} on this producer")
        if row.state != "running":
            raise InfraETLError(f"run {run_id} is already {row.state}")
        producer.cancel_run(run_id)
        return {"run_id": run_id, "state": "cancelled"}
    raise InfraETLError(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")


# --- client side ----------------------------------------------------------

#: Largest sealed request: the producer's control socket takes 64 KiB frames (1 KiB of which
#: is headroom for the routing envelope).
MAX_REQUEST = 63 * 1024


class ControlClient:
    """A sealed request/reply client for the producer's control socket."""

    def __init__(self, endpoint: str, sealer: wire.Sealer, *, timeout: float = 5.0,
                 curve_secret: Any = None, curve_server_key: Any = None) -> None:
        self.endpoint = endpoint
        self._sealer = sealer
        self._timeout = timeout
        self._ctx = zmq.Context()
        self._sock = make_socket(self._ctx, zmq.DEALER, max_frame=1 << 20)
        from .curve import apply_client

        apply_client(self._sock, curve_secret, curve_server_key)
        connect(self._sock, endpoint)
        self._seq = 0

    def close(self) -> None:
        """Close the socket and the context."""
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, cmd: str, *, within: float | None = None, **args: Any) -> Any:
        """Send one command; return its result or raise ControlError / NotAuthorised.

        ``within`` waits at most that long instead of the client's timeout, if shorter (a caller
        with a deadline of its own: ``wait --timeout 2`` gave up after 5 s; a review).
        """
        timeout = self._timeout if within is None else max(0.001, min(self._timeout, within))
        self._seq += 1
        nonce = os.urandom(6).hex()
        frame = self._sealer.seal(wire.make("control", nonce, self._seq, cmd=cmd, args=args))
        if len(frame) > MAX_REQUEST:
            # The producer's socket would drop it unseen, and this would wait for nothing.
            raise ControlError(f"the {cmd} request is {len(frame):,} bytes sealed, over the "
                               f"{MAX_REQUEST:,} the producer takes: shorten its arguments")
        deadline = time.monotonic() + timeout
        # IMMEDIATE=1 and no session (producer down, link cut, CURVE refused): a blocking
        # send would wait forever; wait for a session at most as long as for the answer.
        if not self._sock.poll(max(1, int(timeout * 1000)), zmq.POLLOUT):
            raise ControlError(
                f"no answer from the producer at {self.endpoint} within {timeout:g}s; "
                "is infraetl-producer running there?"
            )
        self._sock.send(frame, zmq.NOBLOCK)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                raise ControlError(
                    f"no answer from the producer at {self.endpoint} within {timeout:g}s; "
                    "is infraetl-producer running there?"
                )
            frame = self._sock.recv()
            if frame == NOT_AUTHORISED:
                raise NotAuthorised(
                    f"not authorised: the producer at {self.endpoint} could not open our command "
                    "(different encryption key, or a clock more than "
                    f"{CONTROL_WINDOW / 60:.0f} minutes off the producer's?)"
                )
            try:
                reply = self._sealer.open(frame, check_time=False)  # fresh: it answers our nonce
            except WireError as e:
                # The command may well have been carried out: say so, so nobody repeats a start-run.
                raise ControlError(f"unreadable reply from the producer ({e.reason}): the command may have "
                                   "been carried out; check with `infraetl-ctl status` before repeating it") from None
            if reply["kind"] != "reply" or reply["run"] != nonce:
                continue  # a late answer to an earlier, timed-out request
            if not reply["ok"]:
                raise ControlError(str(reply.get("error")))
            return reply.get("result")


def wait_run(client: ControlClient, run_id: str, *, timeout: float,
             on_progress: Any = None, poll: float = 0.2, check: Any = None,
             on_error: Any = None) -> dict[str, Any]:
    """Poll the producer until ``run_id`` is complete, failed or cancelled; return its row.

    Raises ControlError when ``timeout`` passes first. A producer restart in the
    middle is ridden out: unanswered polls are retried until the deadline, and each
    is told to ``on_error``. ``check``, called before each poll, may raise to give up
    sooner (a daemon of ours has died).
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if check is not None:
            check()
        try:
            row = client.call("status", run_id=run_id,
                              within=max(0.1, deadline - time.monotonic()))["runs"][0]
            last_error = None
            if on_progress is not None:
                on_progress(row)
            if row["state"] != "running":
                return dict(row)
        except NotAuthorised:
            raise
        except ControlError as e:
            if "no run" in str(e):
                raise
            last_error = e
            if on_error is not None:
                on_error(e)
        left = deadline - time.monotonic()
        if left <= 0:
            why = f" (last error: {last_error})" if last_error else ""
            raise ControlError(
                f"run {run_id} is not finished after {timeout:g}s{why}; "
                f"follow it with `infraetl-ctl wait {run_id}`"
            )
        time.sleep(min(poll, left))  # the last look at the deadline, not a poll before it
