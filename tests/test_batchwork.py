"""Batch workers: the very Work the daemon would compute, in order, and a failed worker costs only time."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for

from infraetl import helperproc, wire
from infraetl.batchwork import BatchWorkers, compute
from infraetl.schema import rows_to_columns
from infraetl.sources import RunPlan
from infraetl.sources.synthetic import SyntheticSource
from infraetl.validate import check_rows

FP_KEY = b"f" * 32


def _plains(n_batches: int, size: int = 50, seed: str = "bw") -> list[bytes]:
    """Data messages' plaintexts, as the consumer hands them over."""
    sealer = wire.Sealer((b"A" * 43 + b"=",), ttl=3600, max_size=1 << 24)
    out = []
    batches = SyntheticSource().batches(RunPlan(users=n_batches * size, batch_size=size, seed=seed), check_rows)
    for seq, b in enumerate(batches, 1):
        msg = wire.make("data", "r", seq, producer="p", n=len(b.users), cols=rows_to_columns(b.users),
                        quarantine=dict(b.quarantine))
        out.append(sealer.open_plain(sealer.seal(msg))[1])
    return out


def _same(a, b) -> bool:  # noqa: ANN001
    return (a.stats == b.stats and a.audit.figures() == b.audit.figures() and a.kept == b.kept
            and a.quarantined == b.quarantined)


@pytest.fixture
def workers() -> Iterator[tuple[BatchWorkers, list[str]]]:
    failures: list[str] = []
    w = BatchWorkers(2, on_failure=failures.append)
    yield w, failures
    w.close()


def test_workers_give_the_work_of_the_daemon_itself_in_order(workers: tuple[BatchWorkers, list[str]]) -> None:
    w, failures = workers
    plains = _plains(6)
    tickets = [w.submit(p, FP_KEY, False) for p in plains[:4]]
    assert None not in tickets and len(w.pids) == 2
    got = [w.take(t) for t in tickets]  # type: ignore[arg-type]
    for p, work in zip(plains, got, strict=False):
        assert work is not None and work.encoded is not None
        assert _same(work, compute(wire._unpack(p), FP_KEY, False))
        # What the store keeps is what the daemon would have kept.
        assert work.encoded[0] == work.stats.to_bytes(canonical=False)
    assert failures == []


def test_forgotten_batches_are_dropped_and_do_not_clog_a_worker(workers: tuple[BatchWorkers, list[str]]) -> None:
    w, failures = workers
    plains = _plains(12, size=10)
    # Many batches whose answers are never asked for (duplicates, dropped unACKed): the workers
    # must keep taking work, and a later batch is still answered with its own work.
    for p in plains[:10]:
        t = w.submit(p, FP_KEY, False)
        w.forget(t)
    # Once their answers are in (dropped as they arrive), the workers take work again.
    last = wait_for(lambda: w.submit(plains[11], FP_KEY, False), 30, "a worker taking work")
    work = w.take(last)
    assert work is not None and _same(work, compute(wire._unpack(plains[11]), FP_KEY, False))
    assert failures == []


def test_a_full_pool_hands_the_batch_back(workers: tuple[BatchWorkers, list[str]]) -> None:
    w, _ = workers
    plains = _plains(8, size=10)
    tickets = [w.submit(p, FP_KEY, False) for p in plains]
    # Two workers of three batches each: the rest is for the daemon to compute itself.
    assert tickets.count(None) >= 1
    for t in tickets:
        if t is not None:
            assert w.take(t) is not None


def test_a_killed_worker_is_counted_and_its_batches_come_back_to_the_daemon(
        workers: tuple[BatchWorkers, list[str]]) -> None:
    w, failures = workers
    plains = _plains(3, size=10)
    t = w.submit(plains[0], FP_KEY, False)
    assert t is not None and w.take(t) is not None
    for pid in w.pids:
        os.kill(pid, signal.SIGKILL)
    t = w.submit(plains[1], FP_KEY, False)
    assert t is None or w.take(t) is None  # nothing arrives: the daemon computes it
    assert failures and ("died" in failures[0] or "stopped taking work" in failures[0])


def test_a_hung_worker_is_given_up_on_within_the_timeout(workers: tuple[BatchWorkers, list[str]]) -> None:
    w, failures = workers
    plains = _plains(2, size=10)
    t = w.submit(plains[0], FP_KEY, False)
    assert t is not None and w.take(t) is not None
    pids = w.pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        t = w.submit(plains[1], FP_KEY, False)
        assert t is not None and w.take(t, timeout=0.5) is None
        assert failures and "did not answer" in failures[0]
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def test_a_batch_the_worker_cannot_compute_is_handed_back() -> None:
    failures: list[str] = []
    w = BatchWorkers(1, on_failure=failures.append)
    try:
        t = w.submit(b"\xc1 not msgpack", FP_KEY, False)
        assert t is not None and w.take(t) is None  # the daemon tries, and handles what it raises
        assert failures == []  # the worker is fine
        good = _plains(1, size=5)[0]
        t = w.submit(good, FP_KEY, False)
        assert t is not None and w.take(t) is not None
    finally:
        w.close()


def test_no_workers_start_nothing() -> None:
    w = BatchWorkers(0)  # a real interpreter: a worker started anyway would take the batch
    assert w.submit(b"x", FP_KEY, False) is None and w.pids == []


def test_an_answer_kept_for_a_batch_never_taken_is_dropped_once_a_later_one_is(
        workers: tuple[BatchWorkers, list[str]]) -> None:
    # A store error before take() left its answer in the table for good (~35 KB a time).
    w, _ = workers
    plains = _plains(2, size=10)
    first = w.submit(plains[0], FP_KEY, False)
    assert first is not None
    worker = w._where[first]
    assert worker.helper.conn is not None
    wait_for(lambda: worker.helper.conn.poll(0), 30, "the first answer")
    second = wait_for(lambda: w.submit(plains[1], FP_KEY, False), 30, "the second batch taken")
    assert first in w._answers  # collected while submitting, for a batch that is then never taken
    assert w.take(second) is not None
    assert w._answers == {} and w._where == {}


def test_a_helper_stopping_in_the_middle_of_an_answer_cannot_hang_the_daemon(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # poll() said an answer was there; recv() then waited for its rest for ever.
    (tmp_path / "halfanswer.py").write_text(
        "import os, sys, time\n"
        "fd = int(sys.argv[1])\n"
        "os.read(fd, 1 << 16)\n"
        "os.write(fd, (1000).to_bytes(4, 'big') + b'x' * 10)  # a header promising 1000 bytes, then 10\n"
        "time.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(helperproc, "TAKE_TIMEOUT", 1.0)
    failures: list[str] = []
    h = helperproc.HelperProcess("halfanswer", "test helper", on_failure=failures.append)
    try:
        assert h.alive() and h.send(["anything"])
        t = time.monotonic()
        ok, _ = h.receive(5.0)
        assert not ok and time.monotonic() - t < 4 and failures and "died" in failures[0]
    finally:
        h.close()
