"""The zxcvbn helper process: same results as in-process, and a dead or hung helper costs nothing but time."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for

from infraetl import entropy, helperproc, pwinfo
from infraetl.audit import AuditSummary
from infraetl.scorer import Scorer

PASSWORDS = ["octopus", "Tr0ub4dor&3", "yg(BI5L6ILt^3{JZ", "lazyparrot494", "", "correct horse"]


@pytest.fixture
def helper() -> Iterator[tuple[Scorer, list[str]]]:
    failures: list[str] = []
    s = Scorer(1, on_failure=failures.append)
    yield s, failures
    s.close()


def test_helper_scores_exactly_as_in_process(helper: tuple[Scorer, list[str]]) -> None:
    s, failures = helper
    # Duplicates and non-strings (even unhashable ones: validation comes later) are skipped.
    ticket = s.prefetch(PASSWORDS + ["octopus", 42, ["a list"], {"a": "map"}, None])
    got = s.take(ticket)
    assert got == {p: entropy.zxcvbn_strength(p) for p in PASSWORDS if p}
    assert failures == []


def test_a_later_ticket_collects_earlier_ones_and_owed_passwords_are_not_sent_twice(
        helper: tuple[Scorer, list[str]]) -> None:
    s, _ = helper
    first = s.prefetch(["alpha123", "beta456"])
    # Everything this batch needs is already owed under the first ticket.
    again = s.prefetch(["beta456"])
    assert again == first
    second = s.prefetch(["gamma789"])
    assert second is not None and second > first
    got = s.take(second)  # the first batch was never taken (a duplicate, say)
    assert set(got) == {"alpha123", "beta456", "gamma789"}
    assert s.take(None) == {}


def test_a_killed_helper_is_counted_and_replaced(helper: tuple[Scorer, list[str]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    s, failures = helper
    ticket = s.prefetch(["warm-up-1"])
    assert s.take(ticket) and s.pid is not None
    pid = s.pid
    os.kill(pid, signal.SIGKILL)
    # Dead for sure (a zombie until reaped): the next send or receive fails either way, which
    # one first was a race (this test failed one run in three).
    wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 10,
             "the killed helper to be gone")
    ticket = s.prefetch(["after-kill-1"])
    assert s.take(ticket) == {}  # nothing owed arrives: the audit computes in-process
    assert len(failures) == 1 and ("died" in failures[0] or "stopped taking work" in failures[0]), failures
    assert s.prefetch(["too-soon"]) is None  # no restart loop
    s._helper.retry_now()
    ticket = s.prefetch(["after-restart"])
    assert s.take(ticket) == {"after-restart": entropy.zxcvbn_strength("after-restart")}


def test_a_hung_helper_is_given_up_on_within_the_timeout(helper: tuple[Scorer, list[str]]) -> None:
    s, failures = helper
    assert s.take(s.prefetch(["warm-up-2"]))
    pid = s.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        assert s.take(s.prefetch(["while-stopped"]), timeout=0.5) == {}
        assert failures and "did not answer" in failures[0]
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # killed by the scorer, as it should be


def test_a_helper_that_stops_reading_cannot_block_the_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    # The consumer hands over up to four batches before it takes the first answer; a helper that
    # stops reading fills the pipe, and the next send must fail within the timeout, not hang.
    import random
    import string
    import threading

    monkeypatch.setattr(helperproc, "TAKE_TIMEOUT", 1.0)
    failures: list[str] = []
    s = Scorer(1, on_failure=failures.append)
    try:
        assert s.take(s.prefetch(["warm-up-3"]))
        pid = s.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        rng = random.Random(5)
        batches = [["".join(rng.choices(string.ascii_letters, k=12)) for _ in range(5000)] for _ in range(6)]
        sender = threading.Thread(target=lambda: [s.prefetch(b) for b in batches], daemon=True)
        sender.start()
        sender.join(20)
        assert not sender.is_alive(), "prefetch blocked on a helper that stopped reading"
        assert failures and "stopped taking work" in failures[0]
        assert not os.path.exists(f"/proc/{pid}/status") or s.pid is None  # killed and forgotten
    finally:
        s.close()


def test_disabled_scorer_starts_nothing() -> None:
    s = Scorer(0)
    assert s.prefetch(["anything"]) is None and s.pid is None
    assert s.take(None) == {}


def test_precomputed_strengths_are_what_the_audit_uses() -> None:
    cols = {"login.password": ["Unseen-Before-1x!", "octopus"], "nat": ["GB", "NZ"]}
    honest = AuditSummary.from_columns(cols, b"k" * 32).figures()
    pwinfo._cached_info.cache_clear()
    # A wrong answer shows in the figures, so the helper's answers are the ones used...
    pwinfo.add_strengths({"Unseen-Before-1x!": (0, 0.5)})
    lied = AuditSummary.from_columns(cols, b"k" * 32).figures()
    assert lied["zxcvbn_score"] != honest["zxcvbn_score"]
    pwinfo._cached_info.cache_clear()
    # ...and the right answer gives the very same figures as computing in-process.
    pwinfo.add_strengths({"Unseen-Before-1x!": entropy.zxcvbn_strength("Unseen-Before-1x!")})
    assert AuditSummary.from_columns(cols, b"k" * 32).figures() == honest
    pwinfo._cached_info.cache_clear()


def test_a_helper_that_cannot_start_is_a_counted_failure_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    failures: list[str] = []
    monkeypatch.setattr(helperproc.sys, "executable", "/nonexistent/python")
    s = Scorer(1, on_failure=failures.append)
    assert s.prefetch(["any"]) is None and s.take(None) == {}
    assert len(failures) == 1 and "cannot start" in failures[0]
    assert s.prefetch(["again"]) is None and len(failures) == 1  # no retry storm


@pytest.mark.slow
def test_re_sent_batches_whose_scores_nobody_takes_do_not_stall_the_consumer(tmp_path: Path) -> None:
    """A real consumer: batches of 5,000 users, then their re-sends (a producer's, to a consumer
    behind its backlog) and one new batch. The re-sends' scores are asked for and never taken:
    they filled the socket pair both ways, and the consumer's main thread stood 20 s in a send,
    then killed the helper (a review)."""
    import random
    import string

    from helpers import cluster_sealer, metric, push_frames, wait_for

    from infraetl import schema, wire
    from infraetl.localcluster import LocalCluster
    from infraetl.sources.synthetic import UserGenerator

    c = LocalCluster(tmp_path / "cluster")
    c.consumer.start()
    try:
        sealer = cluster_sealer(c)
        gen, rng = UserGenerator("stall"), random.Random(7)
        frames = []
        for seq in range(1, 11):
            users = gen.users(5000)
            for u in users:
                u["login"]["password"] = "".join(rng.choices(string.ascii_lowercase + string.digits, k=9))
            frames.append(sealer.seal(wire.make("data", "stall", seq, producer="by-hand", n=5000,
                                                cols=schema.to_columns(users), quarantine={})))
        push_frames(c.consumer.endpoints["data"], frames[:9])
        wait_for(lambda: metric(c, "infraetl_batches_applied_total") == 9, 300, "9 batches applied")
        push_frames(c.consumer.endpoints["data"], frames[:9] + [frames[9]])
        wait_for(lambda: metric(c, "infraetl_batches_applied_total") == 10, 300, "batch 10 applied")
        assert metric(c, "infraetl_batches_duplicate_total") == 9
        assert metric(c, "infraetl_zxcvbn_helper_failures_total") == 0, c.consumer.log()[-2000:]
    finally:
        c.stop()


def test_a_helper_ignores_the_hang_up_its_daemon_takes_for_a_key_reload() -> None:
    """``systemctl kill -s HUP`` reaches the whole unit: the helper died of it, counted as a failure."""
    failures: list[str] = []
    s = Scorer(1, on_failure=failures.append)
    try:
        ticket = s.prefetch(["warm-up"])
        assert s.take(ticket) and s.pid is not None
        os.kill(s.pid, signal.SIGHUP)
        ticket = s.prefetch(["after the hang-up"])
        assert s.take(ticket) == {"after the hang-up": entropy.zxcvbn_strength("after the hang-up")}
        assert failures == []
    finally:
        s.close()


def test_scores_offered_early_wait_for_their_batch() -> None:
    """A later batch's scores may come with an earlier one's take: the next offer (empty) threw
    them away, and that batch scored every password again in-process (the bench's cold audit
    took twice as long)."""
    cols = {"login.password": ["Offered-Early-2y!"], "nat": ["GB"]}
    pwinfo._cached_info.cache_clear()
    pwinfo.add_strengths({"Offered-Early-2y!": (0, 0.5)})  # a lie, to see that it is used
    pwinfo.add_strengths({})  # the take of the batch it belongs to found nothing more
    assert AuditSummary.from_columns(cols, b"k" * 32).figures()["zxcvbn_score"]["0"] == 1
    pwinfo._cached_info.cache_clear()
