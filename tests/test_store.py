"""The consumer's store: group commit (one WAL fsync for every transaction since the last)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import userfactory

from infraetl.audit import AuditSummary
from infraetl.exceptions import StoreError
from infraetl.store import Store
from infraetl.stream_stats import StatsSummary

KEY = b"k" * 32


def _apply(store: Store, seq: int, run: str = "r1") -> bool:
    cols = userfactory.make_columns(20, seed=seq)
    applied = store.apply_batch(run, seq, producer="p", delivered=20, kept=20, quarantined=0,
                                stats=StatsSummary.from_columns(cols),
                                audit=AuditSummary.from_columns(cols, KEY))
    return not applied.duplicate


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files os.fsync was called on (it still syncs them)."""
    calls: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


def test_one_fsync_of_the_wal_covers_every_commit_since_the_last(tmp_path: Path, fsyncs: list[str]) -> None:
    store = Store(tmp_path / "c.sqlite3")
    assert all(_apply(store, seq) for seq in (1, 2, 3))
    assert fsyncs == []  # committed (NORMAL), not yet promised
    store.sync()
    assert fsyncs == [str(tmp_path / "c.sqlite3-wal")]
    store.sync()  # nothing new since: no second fsync
    assert len(fsyncs) == 1
    assert not _apply(store, 2)  # a duplicate commits an empty transaction: synced again, harmlessly
    store.sync()
    assert len(fsyncs) == 2
    store.close()


def test_committed_but_unsynced_batches_survive_a_crash_and_stay_unique(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite3")
    assert _apply(store, 1) and _apply(store, 2)
    # No sync, no close: a kill -9 here leaves the transactions in the WAL (page cache).
    again = Store(tmp_path / "c.sqlite3")
    assert not _apply(again, 1) and not _apply(again, 2) and _apply(again, 3)
    again.sync()
    row = again.run("r1")
    assert row is not None and row["applied"] == 3 and row["kept"] == 60
    again.close()
    store.close()


def test_a_failed_sync_is_a_store_error_and_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "c.sqlite3")
    assert _apply(store, 1)
    real = os.fsync

    def broken(fd: int) -> Any:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(StoreError, match="state database sync failed: Input/output error"):
        store.sync()
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
    store.sync()  # the failed sync promised nothing: the next one still syncs
    assert len(calls) == 1
    store.close()


def test_the_consumer_sends_acks_only_after_the_store_synced_their_commits(tmp_path: Path) -> None:
    import zmq

    from infraetl.config import ConsumerSettings, new_key
    from infraetl.consumer import Consumer

    c = Consumer(ConsumerSettings(state_dir=tmp_path, keys=(new_key().encode(),), zxcvbn_workers=0))
    c.acks = c.ctx.socket(zmq.PUSH)
    c.acks.bind("inproc://acks")
    received = c.ctx.socket(zmq.PULL)
    received.connect("inproc://acks")
    events: list[str] = []
    real_sync = c.store.sync

    def sync() -> None:
        events.append(f"sync after {len(events)} ack(s) seen")
        real_sync()

    c.store.sync = sync  # type: ignore[method-assign]
    try:
        for seq in (1, 2):
            assert _apply(c.store, seq)
            c._ack({"run": "r1", "seq": seq, "producer": "p"}, "data", "applied")
        assert events == [] and received.poll(50) == 0   # committed and queued, not promised yet
        c._send_acks()
        assert events == ["sync after 0 ack(s) seen"]
        frames = [received.recv(), received.recv()]
        assert all(f.startswith(b"p\0") for f in frames) and received.poll(50) == 0

        # A sync that fails sends nothing: the store is marked failed and the producer re-sends.
        def broken() -> None:
            raise StoreError("state database sync failed: Input/output error")

        c.store.sync = broken  # type: ignore[method-assign]
        assert _apply(c.store, 3)
        c._ack({"run": "r1", "seq": 3, "producer": "p"}, "data", "applied")
        c._send_acks()
        assert received.poll(50) == 0 and c.store_error and "Input/output error" in c.store_error
        assert c._acks_due == []
    finally:
        received.close()
        c.acks.close()
        c.scorer.close()
        c.store.close()
        c.ctx.term()


def test_a_long_end_merge_tells_the_watchdog_it_is_alive(tmp_path: Path) -> None:
    # After a restart the END merges every partial of the run from the database: 20,000 for
    # the largest run, ~25 s, close to the units' WatchdogSec=30 without a sign of life.
    from infraetl.store import ALIVE_EVERY

    pings: list[int] = []
    store = Store(tmp_path / "c.sqlite3", alive=lambda: pings.append(1))
    batches = 3 * ALIVE_EVERY + 5
    for seq in range(batches, 0, -1):  # backwards: no in-memory aggregate, the END merges from disk
        assert _apply(store, seq)
    assert not pings
    done = store.end_run("r1", producer="p", batches=batches, requested=20 * batches)
    assert done.run_complete
    assert len(pings) == 3
    assert store.run("r1")["kept"] == 20 * batches
