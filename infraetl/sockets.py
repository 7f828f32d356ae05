"""ZeroMQ socket construction with every option set on purpose.

LINGER bounds shutdown; HWMs bound memory; MAXMSGSIZE drops absurd frames
inside libzmq before Python sees them; IMMEDIATE keeps PUSH from queueing to
a consumer that is not there (the spool is the queue); heartbeats notice a
dead peer across a silent network; optional CURVE encrypts and
authenticates the transport (see ``curve.py``).
"""

from __future__ import annotations

import zmq

LINGER_MS = 1000
HEARTBEAT_IVL_MS = 2000
HEARTBEAT_TIMEOUT_MS = 6000


def make_socket(ctx: zmq.Context, kind: int, *, max_frame: int, hwm: int = 1000) -> zmq.Socket:
    """A socket of ``kind`` with LINGER, HWMs, MAXMSGSIZE and heartbeats set."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    # Headroom for the key id and the SUB topic prefix.
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame + 1024)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    if kind in (zmq.PUSH, zmq.DEALER):
        sock.setsockopt(zmq.IMMEDIATE, 1)
    if kind == zmq.ROUTER:
        # A reply to a peer that vanished is dropped, never an error that kills the loop.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    return sock


def bind(sock: zmq.Socket, endpoint: str) -> None:
    """Bind, turning zmq's error into a ConfigError that names the endpoint."""
    from .exceptions import ConfigError

    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        raise ConfigError(f"cannot bind {endpoint}: {e.strerror}") from None


def connect(sock: zmq.Socket, endpoint: str) -> None:
    """Connect, turning zmq's error into a ConfigError that names the endpoint."""
    from .exceptions import ConfigError

    try:
        sock.connect(endpoint)
    except zmq.ZMQError as e:
        raise ConfigError(f"cannot connect to {endpoint}: {e.strerror}") from None


def bound_endpoint(sock: zmq.Socket) -> str:
    """The endpoint actually bound (resolves port 0)."""
    ep = sock.getsockopt(zmq.LAST_ENDPOINT)
    return ep.decode() if isinstance(ep, bytes) else str(ep)
