"""The zxcvbn helper process: same results as in-process, and a dead or hung helper costs nothing but time."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

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
    os.kill(s.pid, signal.SIGKILL)
    ticket = s.prefetch(["after-kill-1"])
    assert s.take(ticket) == {}  # nothing owed arrives: the audit computes in-process
    assert len(failures) == 1 and "died" in failures[0]
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
