"""The sealed envelope: round trip and one reason per way a frame can be bad."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest
from cryptography.fernet import Fernet

from infraetl import config, schema, wire
from infraetl.exceptions import WireError

SAMPLE = json.loads((Path(__file__).parent / "data" / "randomuser-sample.json").read_text())["results"]
DATA = {"producer": "p", "n": 4, "cols": schema.to_columns(SAMPLE), "quarantine": {"empty:email": 1}}


def reason(sealer: wire.Sealer, frame: bytes) -> str:
    with pytest.raises(WireError) as e:
        sealer.open(frame)
    return e.value.reason


def test_round_trip(sealer: wire.Sealer) -> None:
    msg = wire.make("data", "r1", 3, **DATA)
    assert sealer.open(sealer.seal(msg)) == msg


def test_rotation_old_key_still_opens(key: str) -> None:
    new = config.new_key()
    old_sealer = wire.Sealer((key.encode(),), ttl=60, max_size=1 << 20)
    rotated = wire.Sealer((new.encode(), key.encode()), ttl=60, max_size=1 << 20)
    frame = old_sealer.seal(wire.make("data", "r", 1, **DATA))
    assert rotated.open(frame)["run"] == "r"
    # ... and the rotated side seals with the new key, which the old side lacks.
    assert reason(old_sealer, rotated.seal(wire.make("data", "r", 1, **DATA))) == "unknown_key"


def test_tampered(sealer: wire.Sealer) -> None:
    frame = bytearray(sealer.seal(wire.make("data", "r", 1, **DATA)))
    frame[60] = ord("A") if frame[60] != ord("A") else ord("B")
    assert reason(sealer, bytes(frame)) == "bad_signature"


def test_wrong_key(sealer: wire.Sealer) -> None:
    other = wire.Sealer((config.new_key().encode(),), ttl=60, max_size=1 << 20)
    assert reason(sealer, other.seal(wire.make("data", "r", 1, **DATA))) == "unknown_key"


def test_expired_and_future(key: str) -> None:
    now = [1_000_000.0]
    s = wire.Sealer((key.encode(),), ttl=30, max_size=1 << 20, clock=lambda: now[0])
    frame = s.seal(wire.make("data", "r", 1, **DATA))
    now[0] += 31
    assert reason(s, frame) == "expired"
    assert s.open(s.reseal(frame))["seq"] == 1  # our own spooled frame can be re-sealed
    future = s.seal(wire.make("data", "r", 1, **DATA), at=now[0] + 3600)
    assert reason(s, future) == "from_future"


def test_oversize_and_empty(key: str) -> None:
    s = wire.Sealer((key.encode(),), ttl=30, max_size=1000)
    assert reason(s, b"") == "empty"
    assert reason(s, b"x" * 1001) == "oversize"


def test_garbage_is_malformed(sealer: wire.Sealer) -> None:
    assert reason(sealer, b"\x00\x01\x02\x03 hello") == "malformed_token"
    frame = sealer.seal(wire.make("data", "r", 1, **DATA))
    assert reason(sealer, frame[:4] + b"gAAAAA!!!not base64") == "bad_signature"
    assert reason(sealer, frame[:40]) == "bad_signature"  # truncated


def test_bad_msgpack_inside_valid_token(key: str, sealer: wire.Sealer) -> None:
    frame = wire.key_id(key.encode()) + Fernet(key.encode()).encrypt(b"\xc1\xc1 not msgpack")
    assert reason(sealer, frame) == "bad_msgpack"


@pytest.mark.parametrize("payload", [
    [1, 2, 3],
    {"v": 1, "kind": "data", "run": "r"},                       # no seq
    {"v": 1, "kind": "nonsense", "run": "r", "seq": 1},
    {"v": 1, "kind": "data", "run": "r", "seq": 1, "producer": "p", "n": 3,
     "cols": {"email": ["a"]}, "quarantine": {}},               # columns missing
    {"v": 1, "kind": "data", "run": "r", "seq": 1, "producer": "p", "n": 10 ** 9,
     "cols": {}, "quarantine": {}},                             # users it does not carry
    {"v": 1, "kind": "data", "run": "r", "seq": 1, "producer": "p", "n": 5,
     "cols": DATA["cols"], "quarantine": {}},                   # columns shorter than n
    {"v": 1, "kind": "ack", "run": "r", "seq": "1", "producer": "p", "of": "data", "status": "x"},
])
def test_wrong_schema(key: str, sealer: wire.Sealer, payload: object) -> None:
    frame = wire.key_id(key.encode()) + Fernet(key.encode()).encrypt(msgpack.packb(payload))
    assert reason(sealer, frame) == "bad_schema"


def test_wrong_version(key: str, sealer: wire.Sealer) -> None:
    payload = {"v": 99, "kind": "ack", "run": "r", "seq": 1}
    frame = wire.key_id(key.encode()) + Fernet(key.encode()).encrypt(msgpack.packb(payload))
    assert reason(sealer, frame) == "bad_version"


def test_key_id_reveals_nothing_obvious(key: str) -> None:
    kid = wire.key_id(key.encode())
    assert len(kid) == 4 and kid not in key.encode()


# -- our Fernet tokens are cryptography's, byte for byte --


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000, 210_000])
def test_fernet_tokens_interoperate_with_cryptography_both_ways(size: int) -> None:
    import os

    from cryptography.fernet import Fernet

    from infraetl.fernet import FernetKey

    key = Fernet.generate_key()
    ours, theirs = FernetKey(key), Fernet(key)
    data = os.urandom(size)
    token = ours.encrypt_at_time(data, 1_700_000_000)
    assert theirs.decrypt(token) == data and theirs.extract_timestamp(token) == 1_700_000_000
    assert ours.decrypt(theirs.encrypt_at_time(data, 1_800_000_000)) == (1_800_000_000, data)


def _mutations(token: bytes) -> list[bytes]:
    flips = [token[:i] + (b"A" if token[i:i + 1] != b"A" else b"B") + token[i + 1:]
             for i in (0, 1, 5, 12, 20, 40, len(token) // 2, len(token) - 45, len(token) - 5, len(token) - 2)]
    cuts = [token[:n] for n in (0, 1, 4, 8, 12, 16, 40, 60, 97, 98, 99, len(token) - 4, len(token) - 1)]
    return [*flips, *cuts, token + b"=", token + b"AAAA", token[:-4] + b"\n" + token[-4:],
            token[:30] + b"*" + token[30:], token.replace(b"-", b"+").replace(b"_", b"/"),
            b"gAAAAA" + b"A" * 100, b"\x00" * 120, token + token]


def test_fernet_refuses_what_cryptography_refuses_and_only_non_canonical_tokens_besides() -> None:
    import base64
    import warnings

    from cryptography.fernet import Fernet, InvalidToken

    from infraetl.fernet import FernetKey

    key, other = Fernet.generate_key(), Fernet.generate_key()
    token = Fernet(key).encrypt(b"the users of one batch" * 20)
    refused = stricter = 0
    for bad in [*_mutations(token), Fernet(other).encrypt(b"sealed with another key")]:
        try:
            expected: bytes | None = Fernet(key).decrypt(bad)
        except InvalidToken:
            expected = None
        try:
            got: bytes | None = FernetKey(key).decrypt(bad)[1]
        except InvalidToken:
            got = None
        if got is not None:
            assert got == expected, bad[:60]  # what we open, cryptography opens the same
        refused += got is None
        if got is None and expected is not None:
            # Ours is stricter only about the encoding: this was not canonical base64.
            stricter += 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # Python's own warning about such input
                assert base64.urlsafe_b64encode(base64.urlsafe_b64decode(bad)) != bad, bad[:60]
    assert refused >= 25 and stricter >= 3  # junk chars, +/, data after the padding


@pytest.mark.parametrize(("kind", "fields"), [
    ("data", {"seq": 0}),             # batches are numbered from 1
    ("data", {"seq": -4}),
    ("data", {"seq": 1 << 63}),       # beyond SQLite's integers
    ("end", {"batches": -1}),
    ("end", {"batches": 1 << 63}),
    ("data", {"quarantine": {"type:email": 1 << 64}}),
    # A batch without one of the schema's columns, or with one more (a mutation test found the
    # missing one untested: it would have reached the validator).
    ("data", {"cols": {p: [] for p in schema.FIELD_PATHS[1:]}}),
    ("data", {"cols": {**{p: [] for p in schema.FIELD_PATHS}, "extra": []}}),
])
def test_numbers_no_real_message_carries_are_a_schema_error(kind: str, fields: dict) -> None:
    base = {"data": {"seq": 1, "producer": "p", "n": 0, "cols": {p: [] for p in schema.FIELD_PATHS},
                     "quarantine": {}},
            "end": {"seq": -1, "producer": "p", "batches": 1, "delivered": 0, "quarantine": {}}}[kind]
    msg = {"v": wire.PROTOCOL_VERSION, "kind": kind, "run": "r", **base, **fields}
    with pytest.raises(wire.WireError) as e:
        wire.check_schema(msg)
    assert e.value.reason == "bad_schema"


def test_replay_guard_takes_each_control_nonce_once_and_forgets_expired_ones() -> None:
    from infraetl.control import ReplayGuard

    now = [1000.0]
    guard = ReplayGuard(window=300, clock=lambda: now[0])
    guard.take("a", 1000)
    with pytest.raises(WireError) as e:
        guard.take("a", 1000)
    assert e.value.reason == "replay"
    with pytest.raises(WireError) as e:
        guard.take("b", 1000 - 301)
    assert e.value.reason == "expired"
    for i in range(100):
        now[0] += 10
        guard.take(f"n{i}", now[0])
    assert len(guard) <= 31  # only the window's nonces are kept
    with pytest.raises(WireError):
        guard.take("n99", now[0])  # still remembered within the window


def test_the_peer_clock_moves_up_at_once_and_down_only_when_every_answer_says_so() -> None:
    """A stamp read late reads as a consumer clock behind, never ahead: ACKs that waited while the
    producer stood still were taken for a clock 25 s off (a review)."""
    from infraetl.wire import PeerClock

    wall, mono = [1000.0], [50.0]
    clock = PeerClock(lambda: wall[0], lambda: mono[0])
    assert not clock.heard(1001.0) and clock.offset == 0  # within the stamps' rounding
    assert clock.heard(1300.0) and clock.offset == 300    # ahead: at once
    for late in (1275.0, 1276.0, 1280.0, 1300.0):           # a burst of late answers, then a prompt one
        mono[0] += 1.0
        assert not clock.heard(late)
    assert clock.offset == 300
    for i, behind in enumerate((1100.0, 1101.0, 1099.0, 1100.5)):  # stepped back: every answer says so
        mono[0] += 1.0
        assert clock.heard(behind) == (i == 3)
    assert clock.offset == 101  # the least late of them
    mono[0] += 1.0
    assert not clock.heard(900.0) and clock.offset == 101  # one answer further behind moves nothing at once
    mono[0] += 600.0  # ...nor one more after ten silent minutes: no spell of its own (a review)
    assert not clock.heard(900.0) and clock.offset == 101
