"""A run's life across operator actions and restarts: a batch size changed under a run, a cancel
followed by a restart or racing the run's end, a consumer whose state is lost mid-run, a stop
with several runs in flight. Every run ends by itself, as what it is, counted once or not at all."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
from helpers import ctl, figures_without_times, get_json, get_text, metric, wait_for

from infraetl.localcluster import Daemon, LocalCluster


def _runs(c: LocalCluster) -> dict[str, dict]:
    return {r["run_id"]: r for r in json.loads(ctl(c, "status", "--json", "--limit", "100").stdout)["runs"]}


def _consumer_runs(c: LocalCluster) -> dict[str, dict]:
    return {r["run_id"]: r for r in get_json(c.url + "api/stats.json")["runs"]}


def _crashing_producer(c: LocalCluster, point: str) -> Daemon:
    d = c._producer()
    d.env = {**d.env, "INFRAETL_CRASH_AT": point}
    c.producer = d.start()
    c.producer_control = d.endpoints["control"]
    return d


@pytest.mark.slow
@pytest.mark.parametrize("before, after", [(100, 500), (500, 100)])
def test_a_producer_restarted_with_another_batch_size_resumes_the_run_in_its_own(
        tmp_path: Path, before: int, after: int) -> None:
    # The run kept no batch size: a restart skipped N batches of the new size, so 2,000 users
    # came out as 500 (or 2,800), and the run was still called complete.
    users, seed = 2000, "batch-size"
    with LocalCluster(tmp_path / "ref", producer_args=["--batch-size", str(before)]) as ref:
        ctl(ref, "start-run", "--users", str(users), "--seed", seed)
        want = figures_without_times(get_json(ref.url + "api/stats.json")["last_run"])
    c = LocalCluster(tmp_path / "c", key_file=tmp_path / "ref" / "etl-key",
                     producer_args=["--batch-size", str(before), "--resend-after", "1"])
    try:
        c.consumer.start()
        victim = _crashing_producer(c, "after_spool:3")  # BEGIN and two data batches spooled
        run_id = ctl(c, "start-run", "--users", str(users), "--seed", seed, "--no-wait").stdout.strip()
        assert victim.proc is not None and victim.proc.wait(60) == -signal.SIGKILL
        c.producer_args = ["--batch-size", str(after), "--resend-after", "1"]
        c.start_producer()
        ctl(c, "wait", run_id, "--timeout", "120")
        assert figures_without_times(get_json(c.url + "api/stats.json")["last_run"]) == want
        assert _runs(c)[run_id]["produced"] == users
    finally:
        c.stop()


@pytest.mark.slow
def test_a_cancel_once_answered_survives_a_producer_restart(tmp_path: Path) -> None:
    # The cancel only told the run's worker: a stop before the worker's ABORT was spooled
    # brought the run back at the restart, and it completed, counted.
    with LocalCluster(tmp_path / "c", producer_args=["--resend-after", "1"]) as c:
        run_id = ctl(c, "start-run", "--users", "30000", "--seed", "cancel", "--no-wait").stdout.strip()
        wait_for(lambda: metric(c, "infraetl_batches_applied_total") >= 2, 60, "some batches applied")
        assert ctl(c, "cancel", run_id).stdout.startswith(f"run {run_id}: cancelled; nothing of it is counted")
        assert c.producer is not None and c.producer.proc is not None
        c.producer.signal(signal.SIGTERM)
        assert c.producer.proc.wait(5) == 0
        c.start_producer()
        assert _runs(c)[run_id]["state"] == "cancelled"
        # Cancelled there too: /api/runs.json and the page used to say "failed".
        wait_for(lambda: _consumer_runs(c).get(run_id, {}).get("state") == "cancelled", 60,
                 "the consumer closes the run as cancelled")
        assert 'class="state state-cancelled"' in get_text(c.url)[2]  # the runs table
        stats = get_json(c.url + "api/stats.json")
        assert stats["cumulative"]["total_users"] == 0
        # /metrics says so: its applied users showed only as applied (a review).
        assert metric(c, "infraetl_runs_given_up_total", 'state="cancelled"') == 1
        assert metric(c, "infraetl_runs_given_up_total", 'state="failed"') == 0
        assert metric(c, "infraetl_runs_completed_total") == 0
        # Nothing of it comes back, and nothing is left to send.
        assert json.loads(ctl(c, "status", "--json").stdout)["in_flight"] == 0
        assert _runs(c)[run_id]["state"] == "cancelled"


@pytest.mark.slow
def test_a_cancel_racing_a_runs_end_is_either_not_counted_or_says_it_completed(tmp_path: Path) -> None:
    # A cancel answered while the worker had handed its END over let the END out: the operator
    # read "cancelling", the run completed and was counted.
    with LocalCluster(tmp_path / "c", producer_args=["--resend-after", "1"]) as c:
        ids = []
        for i in range(8):
            run_id = ctl(c, "start-run", "--users", "1", "--seed", f"race{i}", "--no-wait").stdout.strip()
            ctl(c, "cancel", run_id, check=False)  # "already complete" is a fair answer too
            ids.append(run_id)
        wait_for(lambda: all(_runs(c)[r]["state"] != "running" for r in ids), 60, "every run over")
        wait_for(lambda: json.loads(ctl(c, "status", "--json").stdout)["in_flight"] == 0, 60,
                 "every ABORT ACKed")
        states = {r: _runs(c)[r]["state"] for r in ids}
        consumer = _consumer_runs(c)
        for r, state in states.items():
            assert state in ("complete", "cancelled")
            assert consumer.get(r, {}).get("state", "cancelled") == state
        counted = sum(s == "complete" for s in states.values())
        assert get_json(c.url + "api/stats.json")["cumulative"]["total_users"] == counted


@pytest.mark.slow
def test_a_consumer_restarted_on_lost_state_fails_the_run_by_itself(tmp_path: Path) -> None:
    # The producer had dropped the batches the consumer ACKed; the consumer, restored empty,
    # waited for them for ever, and `cancel` refused the run (it had "delivered all its users").
    c = LocalCluster(tmp_path / "c", producer_args=["--resend-after", "1"])
    try:
        c.consumer.env = {**c.consumer.env, "INFRAETL_CRASH_AT": "after_sync:3"}
        c.start()
        run_id = ctl(c, "start-run", "--users", "20000", "--seed", "lost", "--no-wait").stdout.strip()
        assert c.consumer.proc is not None and c.consumer.proc.wait(60) == -signal.SIGKILL
        wait_for(lambda: _runs(c)[run_id]["acked"] >= 1, 30, "batches ACKed before the loss")
        shutil.rmtree(c.consumer.state_dir)
        c.consumer.env = {k: v for k, v in c.consumer.env.items() if k != "INFRAETL_CRASH_AT"}
        c.restart_consumer()
        t = time.monotonic()
        done = ctl(c, "wait", run_id, "--timeout", "120", check=False)
        assert done.returncode == 1 and time.monotonic() - t < 60
        row = _runs(c)[run_id]
        assert row["state"] == "failed" and "it had ACKed" in row["reason"]
        assert "Traceback" not in done.stderr and "it had ACKed" in done.stderr
        wait_for(lambda: _consumer_runs(c).get(run_id, {}).get("state") == "failed", 30, "consumer agrees")
        assert get_json(c.url + "api/stats.json")["cumulative"]["total_users"] == 0
        # The next run is exact.
        ctl(c, "start-run", "--users", "1000", "--seed", "after")
        assert get_json(c.url + "api/stats.json")["cumulative"]["total_users"] == 1000
    finally:
        c.stop()


def _idle(pid: int):  # type: ignore[no-untyped-def]
    """A condition: true once the process used next to no CPU (< 5%) since it was last asked."""
    from infraetl.bench import cpu_s

    last = [-1.0]

    def check() -> bool:
        now, before = cpu_s(pid), last[0]
        last[0] = now
        return before >= 0 and now - before < 0.05

    return check


@pytest.mark.slow
def test_sigterm_with_several_runs_blocked_exits_within_5_seconds(tmp_path: Path) -> None:
    # Each run's worker, told to cancel, tried to hand an ABORT to a full queue; the joins took
    # 2 s each, one after the other: 5 runs took 11 s, past systemd's TimeoutStopSec.
    with LocalCluster(tmp_path / "c", producer_args=["--window", "8"]) as c:
        c.consumer.signal(signal.SIGSTOP)  # nothing is ACKed: the window fills, the workers block
        try:
            ids = [ctl(c, "start-run", "--users", "200000", "--seed", f"stop{i}", "--no-wait").stdout.strip()
                   for i in range(4)]
            wait_for(lambda: json.loads(ctl(c, "status", "--json").stdout)["in_flight"] >= 8, 60,
                     "the window full")
            assert c.producer is not None and c.producer.proc is not None
            wait_for(_idle(c.producer.proc.pid), 60, "every worker blocked on the full queue", interval=1.0)
            t = time.monotonic()
            c.producer.signal(signal.SIGTERM)
            assert c.producer.proc.wait(10) == 0
            assert time.monotonic() - t < 5
        finally:
            c.consumer.signal(signal.SIGCONT)
        c.start_producer()
        # A stop is not a cancel: every run is still running, to resume.
        assert all(_runs(c)[r]["state"] == "running" for r in ids)


@pytest.mark.slow
def test_start_run_prints_what_the_consumer_counted_not_what_the_producer_sent(tmp_path: Path) -> None:
    # Every user carries a control character in its first name: the producer passes them all,
    # the consumer quarantines them all. `start-run` said "501 users applied, 0 quarantined".
    from infraetl.sources import RunPlan
    from infraetl.sources.synthetic import SyntheticSource

    users = [u for b in SyntheticSource().batches(RunPlan(users=501, seed="q")) for u in b.users]
    data = tmp_path / "users.jsonl"
    data.write_text("".join(json.dumps({**u, "name": {**u["name"], "first": u["name"]["first"] + "\x07"}})
                            + "\n" for u in users))
    with LocalCluster(tmp_path / "c") as c:
        out = ctl(c, "start-run", "--users", "501", "--source", f"file:{data}")
        assert "complete: 0 users applied, 501 quarantined" in out.stdout
        (row,) = json.loads(ctl(c, "status", "--json").stdout)["runs"]
        assert (row["applied_users"], row["quarantined"], row["acked_users"]) == (0, 501, 501)
        assert get_json(c.url + "api/stats.json")["last_run"]["total_users"] == 0


@pytest.mark.parametrize("consumer_max, producer_max, says", [
    (65536, None, "over the consumer's --max-frame 65,536"),
    (None, 65536, "over --max-frame 65,536"),
])
def test_frames_over_a_max_frame_fail_the_run_saying_so(tmp_path: Path, consumer_max: int | None,
                                                        producer_max: int | None, says: str) -> None:
    # A consumer's smaller --max-frame: its socket dropped the 500-user batches unseen, nothing
    # was counted, the producer blamed the network, and the run ran for ever. A producer's own
    # --max-frame was not applied at all.
    with LocalCluster(tmp_path / "c",
                      consumer_args=["--max-frame", str(consumer_max)] if consumer_max else [],
                      producer_args=["--resend-after", "1",
                                     *(["--max-frame", str(producer_max)] if producer_max else [])]) as c:
        done = ctl(c, "start-run", "--users", "2000", "--seed", "big", "--timeout", "60", check=False)
        assert done.returncode == 1 and says in done.stderr and "Traceback" not in done.stderr
        (row,) = _runs(c).values()
        assert row["state"] == "failed" and says in row["reason"]
        wait_for(lambda: next(iter(_consumer_runs(c).values()), {}).get("state") == "failed", 30,
                 "the consumer fails it too")
        # The same daemons take a run whose batches fit.
        ok = ctl(c, "start-run", "--users", "100", "--seed", "small")
        assert "complete: 100 users applied" in ok.stdout


def _producer_in_process(tmp_path: Path):  # type: ignore[no-untyped-def]
    from infraetl import config
    from infraetl.config import ProducerSettings
    from infraetl.producer import Producer

    s = ProducerSettings(state_dir=tmp_path / "p", keys=(config.new_key().encode(),),
                         data_connect="tcp://127.0.0.1:1", ack_connect="tcp://127.0.0.1:2",
                         control_bind="tcp://127.0.0.1:*", producer_id="p1")
    p = Producer(s)
    p._open_sockets()
    return p


def _close(p) -> None:  # type: ignore[no-untyped-def]
    import os

    for sock in (p.control, p.data, p.acks, p.work):
        sock.close(linger=0)
    p.ctx.term()
    p.spool.close()
    os.close(p._lock)


def _ack(p, run: str, seq: int, of: str, status: str, **extra) -> None:  # type: ignore[no-untyped-def]
    from infraetl import wire

    p._on_ack(b"p1\0" + p.sealer.seal(wire.make("ack", run, seq, producer="p1", of=of, status=status, **extra)))


def test_an_end_ack_crossing_a_cancel_does_not_answer_the_abort(tmp_path: Path) -> None:
    # The END and the ABORT that replaced it share their seq: the END's "complete" ACK took the
    # ABORT for answered, so it was never re-sent, and the producer said "cancelled, nothing
    # counted" while the consumer had counted the run. A "pending" one reported lost batches.
    from infraetl import wire
    from infraetl.producer import END_SEQ

    p = _producer_in_process(tmp_path)
    try:
        for status in ("pending", "complete"):
            run = f"r-{status}"
            p.spool.create_run(run, {"users": 10, "nat": [], "seed": "x", "source": "synthetic", "batch_size": 10})
            p.spool.add_frame(run, 1, "data", 10, b"x")
            p.spool.ack(run, 1)
            end = p.sealer.seal(wire.make("end", run, END_SEQ, producer="p1", batches=1, delivered=10,
                                          quarantine={}, requested=10))
            p.spool.add_frame(run, END_SEQ, "end", 0, end)
            p.in_flight[(run, END_SEQ)] = [end, "end", 0, time.monotonic()]
            p.cancel_run(run)
            _ack(p, run, END_SEQ, "end", status, missing=[2], url="http://c/", applied=10, kept=10, quarantined=0)
            row = p.spool.run(run)
            assert row is not None
            if status == "pending":  # no "lost batches" failure: the entry is the ABORT
                assert row.state == "cancelled" and row.reason == "cancelled by operator"
                assert p.in_flight[(run, END_SEQ)][1] == "abort"
            else:  # the run was counted there: complete here too, with the consumer's counts
                assert row.state == "complete" and "too late" in (row.reason or "")
                assert row.as_dict()["applied_users"] == 10
                _ack(p, run, END_SEQ, "abort", "complete", url="http://c/", applied=10, kept=10, quarantined=0)
                assert (run, END_SEQ) not in p.in_flight
    finally:
        _close(p)


def test_a_cancel_the_spool_refuses_changes_nothing(tmp_path: Path) -> None:
    # The cancel forgot the run's frames before the spool refused to record it: the run stayed
    # "running" with nothing in flight, for good.
    import sqlite3

    from infraetl.exceptions import StoreError

    p = _producer_in_process(tmp_path)
    try:
        run = "r1"
        p.spool.create_run(run, {"users": 10, "nat": [], "seed": "x", "source": "synthetic", "batch_size": 10})
        p.spool.add_frame(run, 1, "data", 10, b"frame")
        p.in_flight[(run, 1)] = [b"frame", "data", 10, time.monotonic()]
        p.spool._db.execute("PRAGMA busy_timeout=0")
        blocker = sqlite3.connect(tmp_path / "p" / "spool.sqlite3")
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError):
                p.cancel_run(run)
        finally:
            blocker.rollback()
            blocker.close()
        assert (run, 1) in p.in_flight and run not in p.failed_here
        assert p.spool.run(run).state == "running"  # type: ignore[union-attr]
        p.cancel_run(run)  # and once the spool takes writes, the cancel works
        assert p.spool.run(run).state == "cancelled"  # type: ignore[union-attr]
    finally:
        _close(p)


@pytest.mark.slow
def test_a_producer_restarted_with_frames_over_the_consumers_limit_still_fails_the_run(tmp_path: Path) -> None:
    # The consumer's limit came only with a BEGIN's ACK: a restarted producer whose BEGIN was
    # ACKed before never learnt it, and re-sent its too-large frames for ever.
    c = LocalCluster(tmp_path / "c", consumer_args=["--max-frame", "65536"], producer_args=["--resend-after", "1"])
    try:
        c.consumer.start()
        victim = _crashing_producer(c, "after_spool:2")  # BEGIN sent, batch 1 spooled, not yet sent
        run_id = ctl(c, "start-run", "--users", "2000", "--seed", "big", "--no-wait").stdout.strip()
        assert victim.proc is not None and victim.proc.wait(60) == -signal.SIGKILL
        c.start_producer()
        done = ctl(c, "wait", run_id, "--timeout", "60", check=False)
        assert done.returncode == 1 and "over the consumer's --max-frame 65,536" in done.stderr
    finally:
        c.stop()


def test_the_progress_line_says_when_the_producer_stops_answering(capsys: pytest.CaptureFixture[str]) -> None:
    # Was frozen, clock included, until the final error up to --timeout (900 s) later.
    from infraetl.cli_output import Progress
    from infraetl.exceptions import ControlError

    p = Progress(100, enabled=True)
    p({"applied_users": 40, "produced": 60})
    p.unanswered(ControlError("no answer from the producer"))
    p.close()
    err = capsys.readouterr().err
    assert "applied 40/100" in err and "the producer is not answering; retrying" in err



def test_an_operator_still_on_the_old_key_mid_rotation_reads_the_answer(tmp_path: Path) -> None:
    # Step 2 of a rotation (every daemon seals with the new key, still opens the old): the reply
    # was sealed with the new key, so the ctl said "unreadable reply" for a run it had started,
    # and a retry counted it twice (a review).
    from infraetl import config
    from infraetl.localcluster import write_key_file

    old, new = config.new_key(), config.new_key()
    keys = write_key_file(tmp_path / "ring", f"{new}\n{old}")
    with LocalCluster(tmp_path / "c", key_file=keys) as c:
        env = {**c.env, "ETL_ENCRYPTION_KEY_FILE": str(write_key_file(tmp_path / "old", old))}
        done = ctl(c, "start-run", "--users", "300", env=env, check=False)
        assert done.returncode == 0 and "300 users applied" in done.stdout, done.stderr
        assert get_json(c.url + "api/stats.json")["cumulative"]["total_users"] == 300


def test_the_producer_remembers_a_bounded_number_of_failed_runs(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Every cancelled or failed run stayed in a set for good (~120 B each; a review).
    import infraetl.producer

    monkeypatch.setattr(infraetl.producer, "FAILED_KEPT", 3)
    p = _producer_in_process(tmp_path)
    try:
        for i in range(5):
            p.spool.create_run(f"r{i}", {"users": 10, "nat": [], "seed": "x", "source": "synthetic",
                                         "batch_size": 10})
            p.cancel_run(f"r{i}")
        assert list(p.failed_here) == ["r2", "r3", "r4"]
        assert all(p.spool.run(f"r{i}").state == "cancelled" for i in range(5))  # type: ignore[union-attr]
    finally:
        _close(p)


# -- ACKs replayed: the producer opens an ACK whatever its stamp, so a copy captured on the
# network may come back at any age. A review replayed old ones to bring back an old frame limit,
# to make the producer re-seal and re-spool a batch a thousand times a second, and to fail a run
# the consumer had counted; and killed the producer between an END's ACK and its run's close.

def _sealed_ack(p, run: str, seq: int, of: str, status: str, at: float, **extra) -> bytes:  # type: ignore[no-untyped-def]
    from infraetl import wire

    return b"p1\0" + p.sealer.seal(wire.make("ack", run, seq, producer="p1", of=of, status=status, **extra), at=at)


def _run_in_flight(p, run: str, seqs: tuple[int, ...], *, end: bool) -> None:  # type: ignore[no-untyped-def]
    from infraetl import schema, wire
    from infraetl.producer import END_SEQ

    p.spool.create_run(run, {"users": 10 * len(seqs), "nat": [], "seed": "x", "source": "synthetic",
                             "batch_size": 10})
    for seq in seqs:
        frame = p.seal(wire.make("data", run, seq, producer="p1", n=0, quarantine={},
                                 cols={path: [] for path in schema.FIELD_PATHS}))
        p.spool.add_frame(run, seq, "data", 10, frame)
        p.in_flight[(run, seq)] = [frame, "data", 10, time.monotonic()]
    if end:
        frame = p.seal(wire.make("end", run, END_SEQ, producer="p1", batches=len(seqs),
                                 delivered=10 * len(seqs), quarantine={}, requested=10 * len(seqs)))
        p.spool.add_frame(run, END_SEQ, "end", 0, frame)
        p.in_flight[(run, END_SEQ)] = [frame, "end", 0, time.monotonic()]


def test_an_old_ack_replayed_does_not_bring_back_an_old_frame_limit(tmp_path: Path) -> None:
    p = _producer_in_process(tmp_path)
    try:
        now = time.time()
        _run_in_flight(p, "r-new", (1, 2), end=False)
        p._on_ack(_sealed_ack(p, "r-new", 1, "data", "applied", now, max_frame=16 << 20))
        assert p.consumer_max_frame == 16 << 20
        # Captured back when the consumer had --max-frame 65536: it answers nothing in flight now.
        p._on_ack(_sealed_ack(p, "r-old", 3, "data", "applied", now - 3600, max_frame=65536))
        p._on_ack(_sealed_ack(p, "r-new", 1, "data", "applied", now - 3600, max_frame=65536))
        assert p.consumer_max_frame == 16 << 20
        # An answer to a frame in flight says the limit now, whatever its stamp (a clock stepped back).
        p._on_ack(_sealed_ack(p, "r-new", 2, "data", "applied", now - 600, max_frame=1 << 20))
        assert p.consumer_max_frame == 1 << 20
    finally:
        _close(p)


def test_a_clock_answer_seals_again_only_the_copy_it_refused(tmp_path: Path) -> None:
    p = _producer_in_process(tmp_path)
    try:
        _run_in_flight(p, "r1", (1,), end=False)
        first = p.in_flight[("r1", 1)][0]
        from infraetl import wire

        ack = _sealed_ack(p, "r1", 1, "data", "clock", time.time(), copy=wire.copy_id(first))
        p._on_ack(ack)
        second = p.in_flight[("r1", 1)][0]
        assert second != first  # sealed again, and spooled so
        assert p.spool._db.execute("SELECT frame FROM frames WHERE run_id='r1' AND seq=1").fetchone()[0] == second
        for _ in range(50):  # the same answer again, and again: it names a copy no longer in flight
            p._on_ack(ack)
        assert p.in_flight[("r1", 1)][0] == second
        # An answer without the name (an older consumer) is taken as before.
        p._on_ack(_sealed_ack(p, "r1", 1, "data", "clock", time.time()))
        assert p.in_flight[("r1", 1)][0] != second
    finally:
        _close(p)


def test_a_stale_pending_answer_does_not_fail_a_run_the_consumer_counted(tmp_path: Path) -> None:
    from infraetl import wire
    from infraetl.config import ProducerSettings
    from infraetl.producer import END_SEQ, Producer

    p = _producer_in_process(tmp_path)
    try:
        _run_in_flight(p, "r1", (1, 2), end=True)
        now = time.time()
        # The END was answered "pending [1, 2]" (captured), then both batches came and were ACKed.
        first = p.in_flight[("r1", END_SEQ)][0]
        stale = _sealed_ack(p, "r1", END_SEQ, "end", "pending", now, missing=[1, 2], copy=wire.copy_id(first))
        for seq in (1, 2):
            p._on_ack(_sealed_ack(p, "r1", seq, "data", "applied", now))
        for _ in range(3):  # replayed
            p._on_ack(stale)
        row = p.spool.run("r1")
        assert row is not None and row.state == "running", row
        # The END went out before those ACKs: it is sealed again, once, to be asked afresh.
        second = p.in_flight[("r1", END_SEQ)][0]
        assert second != first
        settings = p.s
    finally:
        _close(p)
    # A restart forgets what this host knew: an answer about the END copy spooled then is not
    # taken either (the END is sealed anew first).
    assert isinstance(settings, ProducerSettings)
    p = Producer(settings)
    p._open_sockets()
    p._resume()
    try:
        spooled = p.in_flight[("r1", END_SEQ)][0]
        p._on_ack(_sealed_ack(p, "r1", END_SEQ, "end", "pending", now, missing=[1, 2],
                              copy=wire.copy_id(spooled)))
        row = p.spool.run("r1")
        assert row is not None and row.state == "running", row
        # A consumer that really lacks them (its state was reset) answers the fresh copy: the run
        # fails, saying so, whatever that consumer's clock says (its stamp is 10 minutes back).
        fresh = p.in_flight[("r1", END_SEQ)][0]
        assert fresh != spooled
        p._on_ack(_sealed_ack(p, "r1", END_SEQ, "end", "pending", now - 600, missing=[1, 2],
                              copy=wire.copy_id(fresh)))
        row = p.spool.run("r1")
        assert row is not None and row.state == "failed" and "lacks batch(es) 1, 2" in (row.reason or "")
    finally:
        _close(p)


def test_an_end_answer_the_spool_cannot_record_leaves_the_run_to_be_answered_again(tmp_path: Path) -> None:
    """The END's ACK and the run's close are one transaction: when the close fails (a trigger
    stands for a disk that fails right then; a kill between the two did the same), the END is
    still waiting, and its next answer completes the run. Before, the END was ACKed and the run
    left running for good."""
    from infraetl.producer import END_SEQ

    p = _producer_in_process(tmp_path)
    try:
        _run_in_flight(p, "r1", (1,), end=True)
        p._on_ack(_sealed_ack(p, "r1", 1, "data", "applied", time.time()))
        p.spool._db.execute("CREATE TRIGGER no_close BEFORE UPDATE OF state ON runs "
                            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
        done = _sealed_ack(p, "r1", END_SEQ, "end", "complete", time.time(), url="http://c/", applied=10,
                           kept=10, quarantined=0)
        p._on_ack(done)
        assert ("r1", END_SEQ) in p.in_flight
        acked = p.spool._db.execute("SELECT acked FROM frames WHERE run_id='r1' AND seq=?", (END_SEQ,)).fetchone()
        assert acked == (0,)
        p.spool._db.execute("DROP TRIGGER no_close")
        p._on_ack(done)
        row = p.spool.run("r1")
        assert row is not None and row.state == "complete" and row.as_dict()["applied_users"] == 10
        assert ("r1", END_SEQ) not in p.in_flight
    finally:
        _close(p)


@pytest.mark.slow
def test_a_run_an_older_producer_left_with_its_end_answered_but_open_completes(tmp_path: Path) -> None:
    """A producer of an older release killed between the END's ACK and the run's close came
    back with the run running for good. This one asks the consumer again, and closes it."""
    import sqlite3

    from infraetl.producer import END_SEQ

    c = LocalCluster(tmp_path / "cluster", producer_args=["--batch-size", "100"])
    try:
        c.start()
        ctl(c, "start-run", "--users", "700")
        c.producer.stop()  # type: ignore[union-attr]
        db = sqlite3.connect(c.root / "producer" / "spool.sqlite3")
        with db:  # what the older release left: END ACKed, the run open
            (run_id,) = db.execute("SELECT run_id FROM runs").fetchone()
            db.execute("UPDATE runs SET state='running', finished_at=NULL, url=NULL, outcome=NULL")
            db.execute("INSERT INTO frames (run_id, seq, kind, users, frame, acked) VALUES (?, ?, 'end', 0, NULL, 1)",
                       (run_id, END_SEQ))
        db.close()
        c.start_producer()
        done = ctl(c, "wait", run_id, "--timeout", "60", check=False)
        assert done.returncode == 0, done.stderr
        row = json.loads(ctl(c, "status", "--json").stdout)["runs"][0]
        assert row["state"] == "complete" and row["applied_users"] == 700, row
        assert "asking the consumer again" in c.producer.log()  # type: ignore[union-attr]
        assert get_json(c.url + "api/stats.json")["cumulative"]["total_users"] == 700  # counted once
    finally:
        c.stop()


def test_a_status_the_spool_cannot_read_is_an_error_reply_not_the_daemons_end(tmp_path: Path) -> None:
    import os

    from infraetl import wire
    from infraetl.control import handle_control

    p = _producer_in_process(tmp_path)
    try:
        p.spool._db.close()  # stands for a spool that can no longer be read
        request = p.sealer.seal(wire.make("control", os.urandom(6).hex(), 1, cmd="status", args={}))
        reply = p.sealer.open(handle_control(p, request), check_time=False)
        assert reply["ok"] is False and "state database unavailable" in reply["error"], reply
    finally:
        _close(p)


# -- Capacity (a review): runs waiting on the consumer failed their deadline, 100-200 runs at once
# starved the producer's loop past the watchdog, and --window held frames in memory without bound.

@pytest.mark.slow
def test_a_run_waiting_for_the_consumer_is_not_charged_to_its_deadline(tmp_path: Path) -> None:
    """``--deadline`` is the source's time: a run whose frames wait for a consumer that is away
    failed "deadline reached" the moment it came back, blaming the source."""
    c = LocalCluster(tmp_path / "c", producer_args=["--window", "2"])
    try:
        c.start()
        c.consumer.stop()
        run_id = ctl(c, "start-run", "--users", "5000", "--deadline", "2", "--no-wait").stdout.strip()
        wait_for(lambda: _runs(c)[run_id]["sent"] >= 1, 30, "the window full (a BEGIN, a batch), the consumer away")
        t = time.monotonic()
        time.sleep(3)  # not a synchronisation: the deadline's two seconds pass while the run waits
        assert time.monotonic() - t >= 3
        c.restart_consumer()
        done = ctl(c, "wait", run_id, "--timeout", "60", check=False)
        assert done.returncode == 0, done.stderr
        assert get_json(c.url + "api/stats.json")["cumulative"]["total_users"] == 5000
    finally:
        c.stop()


@pytest.mark.slow
def test_runs_beyond_the_producing_limit_wait_their_turn_and_a_waiting_one_can_be_cancelled(
        tmp_path: Path) -> None:
    from infraetl.producer import MAX_PRODUCING

    c = LocalCluster(tmp_path / "c")
    try:
        c.start()
        c.consumer.stop()  # the runs stay in progress
        runs = [ctl(c, "start-run", "--users", "2000", "--seed", f"s{i}", "--no-wait").stdout.strip()
                for i in range(MAX_PRODUCING + 2)]
        assert c.producer is not None
        wait_for(lambda: c.producer.log().count("waits its turn") == 2, 30, "two runs waiting")  # type: ignore[union-attr]
        last = runs[-1]
        assert ctl(c, "cancel", last).stdout.startswith(f"run {last}: cancelled")
        c.restart_consumer()
        for run_id in runs[:-1]:
            assert ctl(c, "wait", run_id, "--timeout", "120", check=False).returncode == 0
        states = _runs(c)
        assert [states[r]["state"] for r in runs] == ["complete"] * (MAX_PRODUCING + 1) + ["cancelled"]
        assert get_json(c.url + "api/stats.json")["cumulative"]["total_users"] == 2000 * (MAX_PRODUCING + 1)
    finally:
        c.stop()


def test_frames_in_flight_stay_within_their_byte_budget_whatever_the_window(tmp_path: Path) -> None:
    """The bytes in flight are counted (a window by the last frame's size let a small frame
    open it again to big ones: a review), and no work is taken once they reach the budget."""
    from infraetl import producer as prod

    p = _producer_in_process(tmp_path)
    try:
        p.s = p.s.__class__(**{**p.s.__dict__, "window": 100_000})
        big, small = b"x" * (prod.IN_FLIGHT_BYTES // 8), b"y" * 250
        for i in range(8):
            p.in_flight[("r", i)] = [big, "data", 5000, 0.0]
        p.in_flight[("r", -1)] = [small, "end", 0, 0.0]  # a small frame last
        assert p.in_flight.bytes == 8 * len(big) + len(small)
        assert p._room() == 0
        p.in_flight.pop(("r", 3))
        del p.in_flight[("r", 4)]
        assert p._room() == 100_000 - 7
        p.in_flight[("r", 5)] = [small, "data", 1, 0.0]  # re-sealed, say, to another size
        assert p.in_flight.bytes == 5 * len(big) + 2 * len(small)
    finally:
        _close(p)
