"""Garbage on the consumer's data port and the producer's control port: counted, survived, no effect."""

from __future__ import annotations

import json
import os
import random
import time

import msgpack
import pytest
import zmq
from cryptography.fernet import Fernet
from helpers import cluster_sealer, ctl, get_json, get_text, metric, push_frames, wait_for
from userfactory import sample_users

from infraetl import config, schema, wire
from infraetl.localcluster import LocalCluster

SAMPLE = sample_users()
EMPTY = schema.to_columns([])


def _nested(depth: int) -> list:
    out: list = []
    for _ in range(depth):
        out = [out]
    return out


def _garbage(key: bytes, old_frame: bytes) -> tuple[list[bytes | list[bytes]], dict[str, int]]:
    rnd = random.Random(7)
    sealer = wire.Sealer((key,), ttl=3600, max_size=16 << 20)
    other = wire.Sealer((config.new_key().encode(),), ttl=3600, max_size=16 << 20)
    kid = wire.key_id(key)
    fernet = Fernet(key)
    good = sealer.seal(wire.make("data", "g", 1, producer="x", n=0, cols=EMPTY, quarantine={}))
    frames: list[bytes | list[bytes]] = []
    expect: dict[str, int] = {}

    def add(reason: str, items: list[bytes | list[bytes]]) -> None:
        frames.extend(items)
        expect[reason] = expect.get(reason, 0) + len(items)

    add("malformed_token", [rnd.randbytes(rnd.randint(1, 3000)) for _ in range(2000)])
    add("empty", [b""] * 50)
    add("multipart", [[b"a", b"b"], [good, good]] * 25)
    add("unknown_key", [other.seal(wire.make("data", "w", i + 1, producer="x", n=0, cols=EMPTY, quarantine={}))
                        for i in range(100)])
    add("bad_signature", [good[:len(good) // 2] for _ in range(50)] + [good[:-3] + b"AAA"] * 50)
    expired = wire.Sealer((key,), ttl=3600, max_size=16 << 20, clock=lambda: time.time() - 7200)
    add("expired", [expired.seal(wire.make("ack", "x", 1, producer="x", of="data", status="x"))] * 50)
    add("bad_msgpack", [kid + fernet.encrypt(b"\xc1" + rnd.randbytes(100)) for _ in range(50)])
    add("bad_schema", [kid + fernet.encrypt(msgpack.packb(p)) for p in (
        {"v": 1, "kind": "data", "run": "r", "seq": 1, "producer": "p", "n": 10 ** 9, "cols": {}, "quarantine": {}},
        {"v": 1, "kind": "data", "run": "r", "seq": 1, "producer": "p", "n": 1, "cols": {"a": [[[[[]]]]]},
         "quarantine": {"x": -5}},
        {"v": 1, "kind": "reply", "run": "r", "seq": 1, "ok": True},
        _nested(200),
    )] * 10)
    # A frame from an earlier run, replayed within its window: a duplicate, applied zero times.
    frames.extend([old_frame] * 20)
    return frames, expect


def test_consumer_survives_garbage_and_counts_each_reason(cluster: LocalCluster) -> None:
    key = config.parse_keys(cluster.key_file.read_text(), "test")[0]
    ctl(cluster, "start-run", "--users", "500", "--seed", "before")
    before = get_json(cluster.url + "api/stats.json")
    # Capture a real earlier data frame by sealing the same kind of batch the producer sends
    # for an already-complete run: the consumer must treat it as a duplicate.
    run_id = before["last_run"]["run_id"]
    replay = cluster_sealer(cluster).seal(wire.make(
        "data", run_id, 1, producer="attacker", n=len(SAMPLE), cols=schema.to_columns(SAMPLE), quarantine={}))
    frames, expect = _garbage(key, replay)
    # Well-formed and sealed, but hostile values in the password column (unhashable, nested,
    # not strings): validation quarantines them; nothing on the way may trip over them.
    hostile = schema.to_columns(SAMPLE)
    hostile["login.password"] = ([{"nested": [1]}, ["a list"], 7, None] * len(SAMPLE))[:len(SAMPLE)]
    frames.append(cluster_sealer(cluster).seal(wire.make(
        "data", "hostile-run", 1, producer="attacker", n=len(SAMPLE), cols=hostile, quarantine={})))
    push_frames(cluster.consumer.endpoints["data"], frames)
    # Oversize: above --max-frame libzmq drops it before Python sees it (MAXMSGSIZE); the
    # consumer must simply stay up.
    push_frames(cluster.consumer.endpoints["data"], [os.urandom(17 << 20)])

    def counted() -> bool:
        return all(metric(cluster, "infraetl_frames_rejected_total", f'reason="{r}"') >= n
                   for r, n in expect.items())
    wait_for(counted, 60, "every garbage frame to be counted")
    wait_for(lambda: metric(cluster, "infraetl_batches_duplicate_total") >= 20, 30, "replays counted")
    wait_for(lambda: metric(cluster, "infraetl_batches_applied_total") >= 2, 30, "the hostile batch")
    assert cluster.consumer.alive()
    assert metric(cluster, "infraetl_frames_rejected_total", 'reason="internal_error"') == 0
    after = get_json(cluster.url + "api/stats.json")
    assert after["cumulative"] == before["cumulative"]
    # Logs are rate-limited: one line per reason per minute, not thousands.
    log = cluster.consumer.log()
    assert log.count("rejected frame (malformed_token)") <= 2
    # ... and the next real run is exact.
    ctl(cluster, "start-run", "--users", "700", "--seed", "after")
    final = get_json(cluster.url + "api/stats.json")
    assert final["last_run"]["total_users"] == 700
    assert final["cumulative"]["total_users"] == before["cumulative"]["total_users"] + 700


def test_producer_control_port_survives_garbage(cluster: LocalCluster) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cluster.control)
    rnd = random.Random(3)
    frames = [rnd.randbytes(rnd.randint(0, 2000)) for _ in range(1000)]
    other = wire.Sealer((config.new_key().encode(),), ttl=60, max_size=1 << 20)
    frames += [other.seal(wire.make("control", "x", 1, cmd="start-run", args={"users": 5}))] * 50
    for f in frames:
        sock.send(f)
    answers = 0
    deadline = time.monotonic() + 30
    while answers < len(frames) and time.monotonic() < deadline:
        if sock.poll(1000):
            assert sock.recv() == b"infraetl: not authorised"
            answers += 1
    sock.send_multipart([b"a", b"b", b"c"])
    sock.close()
    ctx.term()
    assert answers == len(frames)
    assert cluster.producer is not None and cluster.producer.alive()
    ctl(cluster, "start-run", "--users", "50", "--seed", "ok")
    assert get_json(cluster.url + "api/stats.json")["cumulative"]["total_users"] == 50
    status, _, _ = get_text(cluster.url + "healthz")
    assert status == 200


def test_a_captured_control_request_is_taken_once(cluster: LocalCluster) -> None:
    """Without CURVE the control traffic is readable: a start-run frame seen on the wire must not
    start more runs when it is sent again, nor may one sealed beyond the window."""
    sealer = cluster_sealer(cluster)
    start = sealer.seal(wire.make("control", os.urandom(6).hex(), 1, cmd="start-run",
                                  args={"users": 40, "seed": "captured"}))
    stale = sealer.seal(wire.make("control", os.urandom(6).hex(), 1, cmd="start-run",
                                  args={"users": 40, "seed": "stale"}), at=time.time() - 400)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cluster.control)
    answers = []
    for frame in (start, start, start, stale):
        sock.send(frame)
        assert sock.poll(10_000), "no answer from the producer"
        answers.append(sock.recv())
    sock.close()
    ctx.term()
    first = sealer.open(answers[0])
    assert first["ok"], first
    assert answers[1:] == [b"infraetl: not authorised"] * 3
    status = json.loads(ctl(cluster, "status", "--json").stdout)
    assert [r["run_id"] for r in status["runs"]] == [first["result"]["run_id"]]
    assert status["rejected"]["replay"] == 2
    assert status["rejected"]["expired"] == 1
    assert "expired 1, replay 2" in ctl(cluster, "status").stdout


@pytest.mark.parametrize("offset", [-290.0, -90.0, 90.0, 290.0])
def test_a_ctl_whose_clock_is_off_by_minutes_is_served(cluster: LocalCluster, offset: float) -> None:
    """Clocks up to the control window apart work both ways: 90 s behind, the producer started the
    run and the ctl called its answer unreadable ("from the future"), so a retry ran it twice."""
    from infraetl.control import ControlClient

    keys = config.parse_keys(cluster.key_file.read_text(), "test")
    skewed = wire.Sealer(keys, ttl=3600, max_size=1 << 20, clock=lambda: time.time() + offset)
    before = len(json.loads(ctl(cluster, "status", "--json").stdout)["runs"])
    with ControlClient(cluster.control, skewed, timeout=10) as client:
        started = client.call("start-run", users=20, seed=f"skew{offset}")
        assert client.call("status", run_id=started["run_id"])["runs"][0]["run_id"] == started["run_id"]
    assert len(json.loads(ctl(cluster, "status", "--json").stdout)["runs"]) == before + 1


@pytest.mark.parametrize(("offset", "reason"), [(-400.0, "expired"), (400.0, "from_future")])
def test_a_ctl_whose_clock_is_off_by_more_than_the_window_is_refused(cluster: LocalCluster, offset: float,
                                                                    reason: str) -> None:
    from infraetl.control import ControlClient
    from infraetl.exceptions import NotAuthorised

    keys = config.parse_keys(cluster.key_file.read_text(), "test")
    skewed = wire.Sealer(keys, ttl=3600, max_size=1 << 20, clock=lambda: time.time() + offset)
    with ControlClient(cluster.control, skewed, timeout=10) as client, \
            pytest.raises(NotAuthorised, match="clock"):
        client.call("status")
    assert json.loads(ctl(cluster, "status", "--json").stdout)["rejected"][reason] >= 1


def test_a_captured_start_run_stays_refused_after_a_producer_restart(cluster: LocalCluster) -> None:
    """The nonces a producer took are in its memory; a start-run's is kept with its run too, so a
    restart within the window does not let a captured frame start the run again."""
    sealer = cluster_sealer(cluster)
    start = sealer.seal(wire.make("control", os.urandom(6).hex(), 1, cmd="start-run",
                                  args={"users": 30, "seed": "restart-replay"}))

    def send(frame: bytes) -> bytes:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(cluster.control)
        try:
            sock.send(frame)
            assert sock.poll(10_000), "no answer from the producer"
            return sock.recv()
        finally:
            sock.close()
            ctx.term()

    run_id = sealer.open(send(start))["result"]["run_id"]
    ctl(cluster, "wait", run_id)
    assert cluster.producer is not None
    cluster.producer.stop()
    cluster.start_producer()
    assert send(start) == b"infraetl: not authorised"
    runs = json.loads(ctl(cluster, "status", "--json").stdout)["runs"]
    assert [r["run_id"] for r in runs].count(run_id) == 1 and len(runs) == 1
