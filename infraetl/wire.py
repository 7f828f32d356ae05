"""The sealed envelope: every message on every socket, one frame each.

A frame is ``key id (4 bytes) || Fernet token``; the token's plaintext is
msgpack of a map with at least ``v`` (protocol version), ``kind``, ``run``
and ``seq``. The key id (the first 4 bytes of an HMAC of a constant under
the key's signing half; it says nothing about the key) lets the receiver pick
the key without trying each one during a rotation, and lets it tell an
operator "sealed with a key we do not have" apart from "tampered with".

Nothing is trusted before the token opens. :meth:`Sealer.open` raises
:class:`WireError` whose ``reason`` is one of :data:`REASONS`, the label the
daemons count rejections under in ``/metrics``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack

from .exceptions import WireError
from .fernet import FernetKey, InvalidToken
from .schema import FIELD_PATHS

PROTOCOL_VERSION = 1
KID_LEN = 4
CLOCK_SKEW = 60.0  # seconds a token may come from the future (hosts' clocks differ)

#: Every reason a frame can be rejected for (metrics label values).
REASONS = (
    "empty", "multipart", "oversize", "malformed_token", "unknown_key", "bad_signature",
    "expired", "from_future", "replay", "bad_msgpack", "bad_schema", "bad_version", "internal_error",
)

Message = dict[str, Any]


def key_id(key: bytes) -> bytes:
    """A 4-byte, non-secret identifier of a Fernet key."""
    signing = base64.urlsafe_b64decode(key)[:16]
    return hmac.new(signing, b"infraetl key id v1", hashlib.sha256).digest()[:KID_LEN]


# --- schemas --------------------------------------------------------------

#: Beyond any real count, and within SQLite's 64-bit integers with room to add.
MAX_INT = 1 << 62


def _is_int(v: Any) -> bool:
    return type(v) is int and -MAX_INT <= v <= MAX_INT


def _is_count(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_INT


def _is_str(v: Any) -> bool:
    return type(v) is str


def _is_counts(v: Any) -> bool:
    return type(v) is dict and all(type(k) is str and _is_count(n) for k, n in v.items())


MAX_BATCH = 100_000
_FIELDS = frozenset(FIELD_PATHS)


def _is_cols(msg: Message) -> bool:
    cols, n = msg.get("cols"), msg.get("n")
    if type(cols) is not dict or type(n) is not int or not 0 <= n <= MAX_BATCH:
        return False
    # Exactly the schema's columns: a batch cannot claim users it does not carry.
    if cols.keys() != _FIELDS:
        return False
    return all(type(v) is list and len(v) == n for v in cols.values())


Check = Callable[[Any], bool]
#: Extra fields each kind must carry, with their checks (``v kind run seq`` always).
SCHEMAS: dict[str, dict[str, Check]] = {
    "begin": {"producer": _is_str, "requested": _is_int, "source": _is_str},
    "data": {"producer": _is_str, "n": _is_int, "quarantine": _is_counts},
    "end": {"producer": _is_str, "batches": _is_count, "delivered": _is_count, "quarantine": _is_counts},
    "abort": {"producer": _is_str, "reason": _is_str},
    "ack": {"producer": _is_str, "of": _is_str, "status": _is_str},
    "control": {"cmd": _is_str, "args": lambda v: type(v) is dict},
    "reply": {"ok": lambda v: type(v) is bool},
}


def check_schema(msg: Any) -> Message:
    """Return ``msg`` if it matches its kind's schema, else raise ``WireError``."""
    if type(msg) is not dict:
        raise WireError("bad_schema", "message is not a map")
    if msg.get("v") != PROTOCOL_VERSION:
        raise WireError("bad_version", f"protocol version {msg.get('v')!r} is not {PROTOCOL_VERSION}")
    kind = msg.get("kind")
    schema = SCHEMAS.get(kind) if type(kind) is str else None
    if schema is None or not _is_str(msg.get("run")) or not _is_int(msg.get("seq")):
        raise WireError("bad_schema", f"unknown kind or missing run/seq in {kind!r} message")
    for name, ok in schema.items():
        if not ok(msg.get(name)):
            raise WireError("bad_schema", f"{kind} message has a bad {name!r}")
    if kind == "data" and not _is_cols(msg):
        raise WireError("bad_schema", "data message columns do not match n")
    if kind == "data" and msg["seq"] < 1:
        raise WireError("bad_schema", "data batches are numbered from 1")
    return msg


def decode(plain: bytes) -> Message:
    """The checked message of an authentic plaintext (an :class:`OutOfTime`'s, say), or raise
    ``WireError``."""
    return check_schema(_unpack(plain))


def make(kind: str, run: str = "", seq: int = 0, **fields: Any) -> Message:
    """Build a message map of ``kind`` (checked on the way in, as it will be on open)."""
    return check_schema({"v": PROTOCOL_VERSION, "kind": kind, "run": run, "seq": seq, **fields})


# --- seal / open ----------------------------------------------------------

class OutOfTime(WireError):
    """An authentic frame refused for its timestamp (``expired`` or ``from_future``): its
    ``plain`` text, so that the receiver can tell its sender its own clock."""

    def __init__(self, reason: str, message: str, *, plain: bytes) -> None:
        super().__init__(reason, message)
        self.plain = plain


#: A frame's key id and the base64 of its token's version, timestamp and IV (4 + 36 bytes).
_COPY_LEN = KID_LEN + 36


def copy_id(frame: bytes) -> bytes:
    """Names one sealed copy of a frame (each seal has a fresh random IV): what a ``clock`` ACK
    refused, so that its producer acts on an answer about the copy it has in flight only. A
    slice, not a hash: a replayed answer costs no pass over a 200 KB frame."""
    return frame[:_COPY_LEN]


class PeerClock:
    """The consumer's clock as a producer last heard it, to stamp the producer's frames with.

    A frame is refused if its stamp is over ``--token-ttl`` old or over :data:`CLOCK_SKEW`
    ahead *by the receiver's clock*: hosts whose clocks disagreed by more than a minute
    stalled every run for good (a review). The consumer's ACKs carry its time (their own
    stamps), and it answers a frame it refused for its stamp with one (status ``clock``); the
    producer stamps its frames in that time.

    A stamp read late reads as a consumer clock that far behind (ACKs that waited while the
    producer stood still, or in a cut link: a review found a pause taken for a clock 25 s off),
    never ahead. So the offset moves up at once, and down only once every answer over
    :data:`CONFIRM_S` says so (by the least late of them). The stamps are whole seconds:
    differences of :data:`CLOSE_ENOUGH` or less are left alone."""

    CLOSE_ENOUGH = 2.0
    CONFIRM_S = 3.0
    #: An offset worth telling the operator of (their clocks want fixing all the same).
    TELL_AT = 10.0

    def __init__(self, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self.offset = 0.0
        self._lower_since: float | None = None  # when the answers began to say "further behind"
        self._lower = -math.inf                 # the least late of them
        self._lower_last = -math.inf            # when the last of them came

    def now(self) -> float:
        """The consumer's time, as far as this host can tell."""
        return self._clock() + self.offset

    def heard(self, stamp: float) -> bool:
        """Take the consumer's time from a frame it sealed; True if the offset moved."""
        offset = stamp - self._clock()
        if offset >= self.offset - self.CLOSE_ENOUGH:
            self._lower_since = None
            if offset <= self.offset + self.CLOSE_ENOUGH:
                return False
            return self._move(offset)  # ahead: no late stamp reads so
        now = self._monotonic()
        if self._lower_since is None or now - self._lower_last > self.CONFIRM_S:
            # A new spell of "behind" (one after a silence is no continuation: two late answers
            # 10 minutes apart said nothing about the minutes between, a review found).
            self._lower_since, self._lower = now, offset
        self._lower_last = now
        self._lower = max(self._lower, offset)
        if now - self._lower_since < self.CONFIRM_S:
            return False
        self._lower_since = None
        return self._move(self._lower)

    def _move(self, offset: float) -> bool:
        self.offset = 0.0 if abs(offset) <= self.CLOSE_ENOUGH else offset
        return True

    def is_off(self, stamp: float, ttl: float) -> bool:
        """Whether a frame sealed at ``stamp`` should be sealed again before it is sent: past
        half its window, or ahead of the consumer's time (it was sealed before the offset was known)."""
        age = self.now() - stamp
        return age > ttl / 2 or age < -CLOCK_SKEW / 2


def _unpack(plain: bytes) -> Any:
    """A frame's plaintext decoded, or raise ``WireError`` ``bad_msgpack``."""
    try:
        return msgpack.unpackb(plain, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise WireError("bad_msgpack", f"plaintext is not msgpack ({type(e).__name__})") from None


class Sealer:
    """Seals and opens frames with a key ring (the first key seals, all open)."""

    def __init__(self, keys: tuple[bytes, ...], *, ttl: float, max_size: int,
                 clock: Callable[[], float] = time.time) -> None:
        if not keys:
            raise ValueError("a Sealer needs at least one key")
        self.keys = keys
        self._ttl = ttl
        self._max = max_size
        self._clock = clock
        self._seal_kid = key_id(keys[0])
        self._sealing = FernetKey(keys[0])
        self._ring = {key_id(k): FernetKey(k) for k in reversed(keys)}

    def seal(self, msg: Message, *, at: float | None = None) -> bytes:
        """Encode and encrypt ``msg`` into one frame."""
        return self._seal_under(self._seal_kid, self._sealing, msg, at)

    def _seal_under(self, kid: bytes, fernet: FernetKey, msg: Message, at: float | None = None) -> bytes:
        plain = msgpack.packb(msg, use_bin_type=True)
        return kid + fernet.encrypt_at_time(plain, int(self._clock() if at is None else at))

    def open(self, frame: bytes, *, check_time: bool = True) -> Message:
        """Authenticate, decrypt, decode and schema-check one frame.

        ``check_time=False`` skips the token's age and clock-skew checks: for a frame whose
        freshness is proven otherwise (a control request's nonce, an answer to one).
        """
        return decode(self._decrypt(frame, check_time=check_time))

    def seal_like(self, frame: bytes, msg: Message) -> bytes:
        """Seal ``msg`` under the key ``frame`` was sealed with (one of this ring's, as an
        opened frame's is), else under the sealing key."""
        kid = frame[:KID_LEN]
        fernet = self._ring.get(kid)
        return self.seal(msg) if fernet is None else self._seal_under(kid, fernet, msg)

    def open_plain(self, frame: bytes) -> tuple[Message, bytes]:
        """:meth:`open`, and the msgpack plaintext the message was decoded from (for a helper
        process to decode again: cheaper than encoding the message a second time)."""
        plain = self._decrypt(frame, check_time=True)
        return decode(plain), plain

    def open_raw(self, frame: bytes, *, check_time: bool = True) -> Any:
        """Like :meth:`open` without the schema check (for the benchmark floor)."""
        return _unpack(self._decrypt(frame, check_time=check_time))

    def _decrypt(self, frame: bytes, *, check_time: bool) -> bytes:
        """The authenticated plaintext of a frame, or raise ``WireError``."""
        if not frame:
            raise WireError("empty")
        if len(frame) > self._max:
            raise WireError("oversize", f"frame of {len(frame)} bytes exceeds {self._max}")
        fernet = self._ring.get(frame[:KID_LEN])
        token = frame[KID_LEN:]
        if not token.startswith(b"gAAAAA"):
            raise WireError("malformed_token")
        if fernet is None:
            raise WireError("unknown_key", "frame sealed with a key this daemon does not hold")
        try:
            stamp, plain = fernet.decrypt(token)  # the timestamp is covered by the HMAC
        except InvalidToken:
            raise WireError("bad_signature", "frame failed authentication (tampered or corrupt)") from None
        except (ValueError, TypeError):
            raise WireError("malformed_token") from None
        if check_time:
            now = self._clock()
            if now - stamp > self._ttl:
                raise OutOfTime("expired", f"frame sealed {now - stamp:.0f}s ago by this host's clock, beyond the "
                                f"{self._ttl:.0f}s window", plain=plain)
            if stamp - now > CLOCK_SKEW:
                raise OutOfTime("from_future", f"frame sealed {stamp - now:.0f}s in the future by this host's "
                                "clock; check the hosts' clocks", plain=plain)
        return plain  # type: ignore[no-any-return]

    def holds_key_of(self, frame: bytes) -> bool:
        """Whether the key a frame names is in this sealer's ring (unauthenticated)."""
        return frame[:KID_LEN] in self._ring

    def seals_like(self, frame: bytes) -> bool:
        """Whether a frame names this sealer's sealing key (unauthenticated)."""
        return frame[:KID_LEN] == self._seal_kid

    def sealed_at(self, frame: bytes) -> float:
        """When a frame of ours was sealed (unauthenticated: only for re-seal decisions)."""
        return float(struct.unpack(">Q", base64.urlsafe_b64decode(frame[KID_LEN:KID_LEN + 16])[1:9])[0])

    def reseal(self, frame: bytes, *, opener: Sealer | None = None, at: float | None = None) -> bytes:
        """Seal the same message again with a fresh timestamp (``at``, default now) and this
        sealer's sealing key, opened by ``opener`` (default: this sealer; a SIGHUP's retired
        keys, say)."""
        # Our own spooled frame may be past the window after a long outage;
        # it is still authenticated, so age is no reason to lose it.
        return self.seal((opener or self).open_raw(frame, check_time=False), at=at)
