"""Two hosts whose clocks disagree: every run still completes, each user counted once.

A frame is refused if its stamp is over ``--token-ttl`` old or over a minute ahead by the
receiver's clock. Hosts more than a minute apart stalled every run for good, without a word: the
consumer refused every frame, or the producer every ACK (a review, with faketime in two network
namespaces). Now the producer opens ACKs whatever their stamp and stamps its frames in the
consumer's time, which every ACK carries and which the consumer sends back with a ``clock``
ACK for a frame it refused for its stamp. The consumer runs here with a shifted ``time.time``
(``clockshift/sitecustomize.py``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import zmq
from helpers import cluster_sealer, ctl, figures_without_times, get_json, metric, push_frames, reference_run, wait_for

from infraetl import wire
from infraetl.localcluster import LocalCluster

USERS = 3000
SEED = "skew"
SHIFT_DIR = Path(__file__).parent / "clockshift"


def _shifted(c: LocalCluster, shift: float) -> LocalCluster:
    """The cluster with its consumer's clock ``shift`` seconds off the producer's (and ctl's)."""
    path = os.pathsep.join(p for p in (str(SHIFT_DIR), c.consumer.env.get("PYTHONPATH", "")) if p)
    c.consumer.env = {**c.consumer.env, "PYTHONPATH": path, "TEST_CLOCK_SHIFT_S": str(shift)}
    return c


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return reference_run(tmp_path_factory.mktemp("reference"), USERS, SEED)


@pytest.mark.parametrize("shift", [300, -300, 7200, -86400])
def test_a_run_completes_exactly_whatever_the_consumers_clock_says(tmp_path: Path, reference: dict,
                                                                   shift: float) -> None:
    # +2 h is past the token TTL (1 h): the consumer took every frame for expired; behind, for
    # frames from the future; ahead by 5 min, the producer took every ACK for one from the future.
    c = _shifted(LocalCluster(tmp_path / "cluster", key_file=reference["key_file"],
                              producer_args=["--resend-after", "1"]), shift)
    with c:
        out = ctl(c, "start-run", "--users", str(USERS), "--seed", SEED, "--timeout", "120").stdout
        run_id = re.search(r"run (\S+) complete", out).group(1)  # type: ignore[union-attr]
        # Its BEGIN, refused for its stamp and sent again, may land after its END: the page
        # then shows the run's source once it does (re-rendered).
        wait_for(lambda: get_json(c.url + "api/stats.json")["last_run"]["source"] == "synthetic", 30,
                 "the run's BEGIN")
        stats = get_json(c.url + "api/stats.json")
        assert figures_without_times(stats["last_run"]) == reference["figures"]
        assert stats["cumulative"]["total_users"] == USERS
        status = ctl(c, "status", "--json")
        offset = json.loads(status.stdout)["consumer_clock_offset_s"]
        assert abs(offset - shift) <= 3, offset
        assert f"the consumer's clock is {shift:+.0f} s off" in ctl(c, "status").stdout \
            or f"the consumer's clock is {shift - 1:+.0f} s off" in ctl(c, "status").stdout
        assert "set both hosts' clocks right" in c.producer.log()
        # Once, though the END went out again (--resend-after 1) and each copy was answered.
        assert c.producer.log().count(f"run {run_id} complete") == 1
        # What was refused for its stamp before the producer knew is counted, by reason.
        reason = "expired" if shift > 3600 else "from_future" if shift < 0 else None
        if reason:
            assert metric(c, "infraetl_frames_rejected_total", f'reason="{reason}"') >= 1
        assert c.consumer.alive() and c.producer.alive()


def test_clocks_that_agree_change_nothing(tmp_path: Path, reference: dict) -> None:
    c = _shifted(LocalCluster(tmp_path / "cluster", key_file=reference["key_file"]), 1.5)
    with c:
        ctl(c, "start-run", "--users", "500", "--seed", SEED)
        assert json.loads(ctl(c, "status", "--json").stdout)["consumer_clock_offset_s"] == 0
        assert "clock" not in c.producer.log()
        assert metric(c, "infraetl_frames_rejected_total", 'reason="from_future"') == 0


def test_only_a_producer_that_asks_is_told_the_time(tmp_path: Path) -> None:
    """An older producer takes any ACK but "pending" for its frame delivered, and drops it from
    its spool: a ``clock`` answer goes only to frames that ask for one (``clock_acks``)."""
    with LocalCluster(tmp_path / "cluster") as c:
        sealer = cluster_sealer(c)
        frames = []
        for producer in ("old", "new"):  # in this order: the answer to "new" comes after any to "old"
            msg = wire.make("begin", f"r-{producer}", 0, producer=producer, requested=1, source="synthetic")
            if producer == "new":
                msg["clock_acks"] = True
            frames.append(sealer.seal(msg, at=time.time() + 600))
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        try:
            for topic in (b"old\0", b"new\0"):
                sub.setsockopt(zmq.SUBSCRIBE, topic)
            sub.connect(c.consumer.endpoints["ack"])
            got: list[bytes] = []

            def answered() -> bool:
                # The SUB socket joins when it joins: send again until an answer comes.
                push_frames(c.consumer.endpoints["data"], frames)
                while sub.poll(200):
                    got.append(sub.recv())
                return any(g.startswith(b"new\0") for g in got)

            wait_for(answered, 30, "an answer to a frame from the future")
        finally:
            sub.close(0)
            ctx.term()
        assert all(g.startswith(b"new\0") for g in got), got
        ack = sealer.open(got[0].partition(b"\0")[2], check_time=False)
        assert (ack["kind"], ack["run"], ack["of"], ack["status"]) == ("ack", "r-new", "begin", "clock")
        assert abs(sealer.sealed_at(got[0].partition(b"\0")[2]) - time.time()) <= 2  # the consumer's own time
        assert metric(c, "infraetl_frames_rejected_total", 'reason="from_future"') >= 2
        assert "r-old" not in json.dumps(get_json(c.url + "api/runs.json"))  # refused: no run


def test_a_consumer_with_a_shorter_token_ttl_gets_each_frame_again_sealed_afresh(tmp_path: Path,
                                                                                reference: dict) -> None:
    """Frames that waited past the consumer's --token-ttl (2 s here, the producer's is 3600 s)
    were answered "clock" and sent again unchanged, at network speed, until half the producer's
    TTL had passed: a storm and a stalled run (a review). Each now goes again sealed afresh."""
    c = LocalCluster(tmp_path / "cluster", key_file=reference["key_file"],
                     consumer_args=["--token-ttl", "2"], producer_args=["--resend-after", "1"])
    with c:
        run_id = ctl(c, "start-run", "--users", str(USERS), "--seed", SEED, "--no-wait").stdout.strip()
        wait_for(lambda: metric(c, "infraetl_batches_applied_total") >= 1, 60, "a batch applied")
        c.consumer.signal(signal.SIGSTOP)  # whatever waits for it outlives its 2 s
        try:
            wait_for(lambda: c.producer is not None and "awaiting ACK" in ctl(c, "status").stdout, 10, "status")
            time.sleep(4)  # not a synchronisation: the pause itself
        finally:
            c.consumer.signal(signal.SIGCONT)
        ctl(c, "wait", run_id, "--timeout", "60")
        assert figures_without_times(get_json(c.url + "api/stats.json")["last_run"]) == reference["figures"]
        # The frames that waited were refused once or twice each, not thousands of times.
        assert metric(c, "infraetl_frames_rejected_total", 'reason="expired"') < 400


def test_answers_that_waited_for_a_stopped_producer_are_not_the_consumers_clock(tmp_path: Path,
                                                                                reference: dict) -> None:
    """ACKs queued while the producer stood still (SIGSTOP) are as old as the pause: they read as a
    consumer clock 25 s behind, with a warning to fix the clocks (a review). Only a prompt answer
    counts."""
    c = LocalCluster(tmp_path / "cluster", key_file=reference["key_file"])
    with c:
        run_id = ctl(c, "start-run", "--users", str(USERS), "--seed", SEED, "--no-wait").stdout.strip()
        wait_for(lambda: metric(c, "infraetl_batches_applied_total") >= 1, 60, "a batch applied")
        assert c.producer is not None
        c.producer.signal(signal.SIGSTOP)
        try:
            time.sleep(12)  # not a synchronisation: the pause itself, past PeerClock.TELL_AT
        finally:
            c.producer.signal(signal.SIGCONT)
        ctl(c, "wait", run_id, "--timeout", "60")
        assert json.loads(ctl(c, "status", "--json").stdout)["consumer_clock_offset_s"] == 0
        assert "clock is" not in c.producer.log()
