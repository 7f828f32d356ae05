"""The consumer's store: group commit (one WAL fsync for every transaction since the last)."""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import userfactory

from infraetl.audit import AuditSummary
from infraetl.exceptions import StoreError
from infraetl.store import Store
from infraetl.stream_stats import StatsSummary

KEY = b"k" * 32


def _apply(store: Store, seq: int, run: str = "r1", *, reveal: bool = False) -> bool:
    cols = userfactory.make_columns(20, seed=seq)
    applied = store.apply_batch(run, seq, producer="p", delivered=20, kept=20, quarantined=0,
                                stats=StatsSummary.from_columns(cols),
                                audit=AuditSummary.from_columns(cols, KEY, reveal=reveal))
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


def _run_figures(store: Store, run: str, batches: int) -> tuple[bytes, bytes]:
    assert store.end_run(run, producer="p", batches=batches, requested=20 * batches).run_complete
    summaries = store.run_summaries(run)
    assert summaries is not None
    return summaries[0].to_bytes(), summaries[1].to_bytes()


def _partials_held(store: Store, run: str) -> int:
    return store._db.execute("SELECT COUNT(*) FROM batches WHERE run_id=? AND stats IS NOT NULL",
                             (run,)).fetchone()[0]


@pytest.mark.parametrize("arrival", ["in order", "restart after 10", "10 after 11", "10 last", "1 last"])
def test_checkpoints_bound_a_run_and_give_the_same_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           arrival: str) -> None:
    import infraetl.store

    batches = 23
    reference = _run_figures(_applied_in_order(tmp_path / "ref.sqlite3", batches), "r1", batches)
    monkeypatch.setattr(infraetl.store, "CHECKPOINT_EVERY", 4)
    path = tmp_path / "c.sqlite3"
    store = Store(path)
    order = {"in order": list(range(1, batches)),
             "restart after 10": list(range(1, batches)),
             "10 after 11": [*range(1, 10), 11, 10, *range(12, batches)],
             "10 last": [*range(1, 10), *range(11, batches), 10],
             "1 last": [*range(2, batches), 1]}[arrival]
    for seq in order:
        assert _apply(store, seq)
        if arrival == "restart after 10" and seq == 10:
            store.close()
            store = Store(path)  # the in-memory aggregate is gone; batches 9 and 10 are on disk
    if arrival == "1 last":
        assert _partials_held(store, "r1") == batches - 1  # never in order: nothing to checkpoint
    elif arrival == "10 last":
        # Checkpoint 1..8; 9 and 11..22 held, and the END merges them onto the checkpoint.
        assert _partials_held(store, "r1") == 1 + (batches - 1 - 10) + 1
    else:
        # Batches 1..20 are in the last checkpoint; only 21 and 22 are still held one by one.
        assert _partials_held(store, "r1") == 2
    assert _apply(store, batches)
    assert _run_figures(store, "r1", batches) == reference
    assert store._db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 0


def test_live_aggregates_are_kept_for_a_bounded_number_of_runs(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # A run whose producer never comes back must not hold its aggregate in memory for ever; a
    # run dropped from memory that goes on is rebuilt from disk, with the very same figures.
    import infraetl.store

    batches = 11
    reference = _run_figures(_applied_in_order(tmp_path / "ref.sqlite3", batches), "r1", batches)
    monkeypatch.setattr(infraetl.store, "CHECKPOINT_EVERY", 4)
    monkeypatch.setattr(infraetl.store, "LIVE_RUNS", 2)
    store = Store(tmp_path / "c.sqlite3")
    runs = ["r1", "r2", "r3"]
    for seq in range(1, batches + 1):
        for run in runs:  # three at once, round robin: each batch finds its run dropped
            assert _apply(store, seq, run)
            assert len(store._live) <= 2
    for run in runs:
        assert _run_figures(store, run, batches) == reference
    assert not store._live


def _applied_in_order(path: Path, batches: int) -> Store:
    store = Store(path)
    for seq in range(1, batches + 1):
        assert _apply(store, seq)
    return store


def test_a_failed_run_leaves_no_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import infraetl.store

    monkeypatch.setattr(infraetl.store, "CHECKPOINT_EVERY", 4)
    store = _applied_in_order(tmp_path / "c.sqlite3", 9)
    assert store._db.execute("SELECT upto FROM checkpoints WHERE run_id='r1'").fetchone() == (8,)
    store.fail_run("r1", producer="p", reason="cancelled")
    assert store._db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 0


def test_a_failed_or_cancelled_run_counts_no_user_in_the_run_table(tmp_path: Path) -> None:
    """The run table showed 39,000 users "delivered" for a cancelled run that counted none (a review)."""
    from infraetl.dashboard import render
    from infraetl.figures import build_stats

    store = _applied_in_order(tmp_path / "c.sqlite3", 3)
    store.fail_run("r1", producer="p", reason="cancelled by operator", state="cancelled")
    _apply(store, 1, run="r2")
    store.end_run("r2", producer="p", batches=1, requested=20)
    _apply(store, 1, run="r3")  # still running: its users so far
    runs = {r["run_id"]: r for r in build_stats(store)["runs"]}
    assert runs["r1"]["received"] == 60 and runs["r1"]["counted"] is False
    assert runs["r1"]["delivered"] == runs["r1"]["kept"] == runs["r1"]["quarantined"] == 0
    assert runs["r2"]["delivered"] == 20 and runs["r2"]["counted"] is True
    assert runs["r3"]["delivered"] == 20 and runs["r3"]["counted"] is True
    rows = {r["run_id"]: r for r in render.build_context(build_stats(store), generated_at=1.0)["runs"]["rows"]}
    assert (rows["r1"]["delivered"], rows["r1"]["quarantined"]) == ("–", "–")
    assert (rows["r2"]["delivered"], rows["r3"]["delivered"]) == ("20", "20")


def test_a_complete_run_leaves_no_batch_rows_and_its_batches_stay_applied_once(tmp_path: Path) -> None:
    # The database stays bounded across runs: what a complete run leaves is its row (and its
    # share of the cumulative row), not one row per batch.
    store = _applied_in_order(tmp_path / "c.sqlite3", 6)
    store.end_run("r1", producer="p", batches=6, requested=120)
    assert store._db.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 0
    before = store.cumulative()[1].to_bytes()
    assert store.applied("r1", 3) and store.applied("r1", 99)  # a late re-send needs no work
    assert not _apply(store, 3)  # and is a duplicate if it gets this far
    assert store.cumulative()[1].to_bytes() == before
    assert store.run("r1")["kept"] == 120


def test_a_batch_numbered_outside_the_run_fails_it_rather_than_stand_in_for_a_missing_one(
        tmp_path: Path) -> None:
    # A producer sends seq 3 of a two-batch run; batch 2 is still on its way. The run must not
    # complete on the wrong batch (nor take batch 2 for a duplicate while it waits); once every
    # batch is in, batches that are not the END's fail the run: nothing of it is counted.
    store = Store(tmp_path / "c.sqlite3")
    assert _apply(store, 1) and _apply(store, 3)
    done = store.end_run("r1", producer="p", batches=2, requested=40)
    assert not done.run_complete and done.failed is None
    applied = store.apply_batch("r1", 2, producer="p", delivered=20, kept=20, quarantined=0,
                                stats=StatsSummary.empty(), audit=AuditSummary.empty())
    assert not applied.duplicate and not applied.run_complete
    assert applied.failed and "3 batches where its END counts 2" in applied.failed
    assert store.run("r1")["state"] == "failed" and store.cumulative()[0] == 0
    again = store.end_run("r1", producer="p", batches=2, requested=40)  # the END's re-send
    assert again.failed == applied.failed and not again.duplicate


def test_batches_holding_other_users_than_the_end_counts_fail_the_run(tmp_path: Path) -> None:
    # A producer restarted mid-run with another --batch-size (before runs kept their own) cut
    # the run two ways: the batches 1..N are all there, but they hold 200 users, not 120.
    store = _applied_in_order(tmp_path / "c.sqlite3", 6)
    store.apply_batch("r2", 1, producer="p", delivered=20, kept=20, quarantined=0,
                      stats=StatsSummary.empty(), audit=AuditSummary.empty())
    done = store.end_run("r1", producer="p", batches=6, requested=100, delivered=100)
    assert done.failed and "hold 120 users where its END counts 100" in done.failed
    assert store.run("r1")["state"] == "failed" and store.cumulative()[0] == 0
    assert store.end_run("r2", producer="p", batches=1, requested=20, delivered=20).run_complete


def test_missing_names_the_batches_an_end_still_waits_for(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite3")
    assert store.missing("r1") == []  # no END yet: nothing is known to be missing
    assert _apply(store, 2) and _apply(store, 5)
    assert not store.end_run("r1", producer="p", batches=6, requested=120, delivered=120).run_complete
    assert store.missing("r1") == [1, 3, 4, 6]
    assert store.missing("r1", limit=2) == [1, 3]


def test_the_fingerprint_secret_outlives_a_key_rotation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from cryptography.fernet import Fernet

    from infraetl.audit import fingerprint_key
    from infraetl.consumer import FP_SECRET, fingerprint_secret

    k1, k2, k3 = (Fernet.generate_key() for _ in range(3))
    store = Store(tmp_path / "c.sqlite3")
    first = fingerprint_secret(store, (k1,))
    assert first == fingerprint_key(k1)  # what fingerprints were made with before it was kept
    assert fingerprint_secret(store, (k1, k2)) == first
    assert fingerprint_secret(store, (k2, k1)) == first
    Fernet(k2).decrypt(store.secret(FP_SECRET) or b"")  # re-sealed under the new sealing key
    store.close()
    store = Store(tmp_path / "c.sqlite3")
    assert fingerprint_secret(store, (k2,)) == first
    assert first not in (store.secret(FP_SECRET) or b"")  # sealed, not in the clear
    with caplog.at_level("WARNING"):
        assert fingerprint_secret(store, (k3,)) == fingerprint_key(k3)  # the old key dropped at once
    assert "count afresh" in caplog.text


def test_a_full_disk_does_not_keep_the_consumer_from_its_fingerprint_secret(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Storing or re-sealing the secret is a write; a consumer on a full disk starts all the same
    (and runs degraded, as on any full disk) instead of exiting, as before the secret was kept."""
    from cryptography.fernet import Fernet

    from infraetl.audit import fingerprint_key
    from infraetl.consumer import fingerprint_secret

    k1, k2 = Fernet.generate_key(), Fernet.generate_key()
    store = Store(tmp_path / "c.sqlite3")
    assert fingerprint_secret(store, (k1,)) == fingerprint_key(k1)
    store.close()
    store = Store(tmp_path / "c.sqlite3")
    store._db.execute("PRAGMA query_only=ON")  # every write now fails, as on a full disk
    with caplog.at_level("WARNING"):
        assert fingerprint_secret(store, (k2, k1)) == fingerprint_key(k1)  # the re-seal fails
    assert "used all the same" in caplog.text
    store.close()
    # First start on a full disk: nothing stored. A rotation (SIGHUP) once the disk is back keeps
    # the secret in use instead of deriving one from the new sealing key.
    store = Store(tmp_path / "fresh.sqlite3")
    store._db.execute("PRAGMA query_only=ON")
    first = fingerprint_secret(store, (k1,))
    store._db.execute("PRAGMA query_only=OFF")
    assert fingerprint_secret(store, (k2, k1), current=first) == first
    assert fingerprint_secret(store, (k2,)) == first  # and it was stored, under k2


def test_missing_matches_a_plain_count_on_random_gaps(tmp_path: Path) -> None:
    import random

    rng = random.Random(7)
    for trial in range(5):
        store = Store(tmp_path / f"m{trial}.sqlite3")
        expected = rng.randint(1, 400)
        held = sorted(rng.sample(range(1, expected + 1), rng.randint(0, expected)))
        for seq in held:
            store.apply_batch("r", seq, producer="p", delivered=1, kept=1, quarantined=0,
                              stats=StatsSummary.empty(), audit=AuditSummary.empty())
        store.end_run("r", producer="p", batches=expected, requested=expected)
        want = [q for q in range(1, expected + 1) if q not in set(held)]
        for limit in (1, 3, 64, 1000):
            assert store.missing("r", limit=limit) == want[:limit]


def _complete_runs(store: Store, runs: list[str], *, reveal: bool = False) -> None:
    for run in runs:
        assert _apply(store, 1, run, reveal=reveal)
        assert store.end_run(run, producer="p", batches=1, requested=20, delivered=20).run_complete


def _figure_sets(store: Store) -> list[str]:
    return [r for (r,) in store._db.execute("SELECT run_id FROM run_figures ORDER BY run_id")]


def test_only_the_latest_complete_runs_keep_their_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every run kept its ~110 KB of merged figures: 100,000 runs made an 11 GB database, and the
    # dashboard's re-render read them without an index (370 ms).
    import infraetl.store
    from infraetl.figures import build_stats

    monkeypatch.setattr(infraetl.store, "RUN_FIGURES_KEPT", 3)
    store = Store(tmp_path / "c.sqlite3")
    runs = [f"r{i}" for i in range(1, 7)]
    _complete_runs(store, runs)
    assert _figure_sets(store) == ["r4", "r5", "r6"]
    stats = build_stats(store)
    assert stats["last_run"]["run_id"] == "r6" and stats["last_run"]["total_users"] == 20
    assert stats["cumulative"]["runs"] == 6 and stats["cumulative"]["total_users"] == 120
    # Every run is still listed, with its counts.
    assert sorted(r["run_id"] for r in stats["runs"]) == runs
    assert all(r["delivered"] == 20 and r["state"] == "complete" for r in stats["runs"])


def test_old_finished_runs_rows_go_past_both_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every run's row stayed for good (~1-3 KB a run in pages left half empty, a review).
    import infraetl.store

    monkeypatch.setattr(infraetl.store, "RUNS_KEPT", 3)
    monkeypatch.setattr(infraetl.store, "PRUNE_EVERY_S", 0.0)
    store = Store(tmp_path / "c.sqlite3")
    _complete_runs(store, [f"r{i}" for i in range(1, 5)])
    assert store.runs() and len(store.runs()) == 4  # past RUNS_KEPT, but not yet old enough
    month = infraetl.store.RUN_ROWS_KEPT_S + 60
    store._db.execute("UPDATE runs SET started_at=started_at-?, finished_at=finished_at-? WHERE run_id='r1'",
                      (month, month))
    store._db.execute("UPDATE runs SET finished_at=finished_at-? WHERE run_id='r4'", (month,))
    assert _apply(store, 1, "running-long-ago")
    store._db.execute("UPDATE runs SET started_at=0 WHERE run_id='running-long-ago'")
    _complete_runs(store, ["r5"])
    # r1 went (old, and past the 3 newest); r2 is past them but recent; r4 is old but among
    # them; a running run stays whatever its age.
    assert sorted(r["run_id"] for r in store.runs()) == ["r2", "r3", "r4", "r5", "running-long-ago"]
    assert store.cumulative()[0] == 5



def test_old_runs_rows_go_the_oldest_first_however_many_there_are(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the rows ranked just past the newest were looked at: with more runs a day than the
    # window, older rows were never pruned (a review).
    import infraetl.store

    monkeypatch.setattr(infraetl.store, "RUNS_KEPT", 2)
    monkeypatch.setattr(infraetl.store, "PRUNE_EVERY_S", 0.0)
    monkeypatch.setattr(infraetl.store, "PRUNE_CHUNK", 3)
    store = Store(tmp_path / "c.sqlite3")
    _complete_runs(store, [f"old{i}" for i in range(8)])
    month = infraetl.store.RUN_ROWS_KEPT_S + 60
    store._db.execute("UPDATE runs SET started_at=started_at-?, finished_at=finished_at-?", (month, month))
    _complete_runs(store, ["new1"])
    assert sorted(r["run_id"] for r in store.runs(100)) == ["new1", "old3", "old4", "old5", "old6", "old7"]
    _complete_runs(store, ["new2"])
    assert sorted(r["run_id"] for r in store.runs(100)) == ["new1", "new2", "old6", "old7"]


def test_a_store_that_kept_every_runs_figures_in_its_rows_is_upgraded_at_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import infraetl.store

    path = tmp_path / "c.sqlite3"
    store = Store(path)
    _complete_runs(store, [f"r{i}" for i in range(1, 8)])
    # As an older release left it: the figures in each run's row, no run_figures, no index.
    store._db.execute("UPDATE runs SET stats=(SELECT stats FROM run_figures f WHERE f.run_id=runs.run_id), "
                      "audit=(SELECT audit FROM run_figures f WHERE f.run_id=runs.run_id)")
    store._db.execute("DROP TABLE run_figures")
    store._db.execute("DROP INDEX runs_started")
    want = build_figures(store, "r7")
    store.close()
    monkeypatch.setattr(infraetl.store, "RUN_FIGURES_KEPT", 2)
    monkeypatch.setattr(infraetl.store, "PRUNE_CHUNK", 2)  # several transactions, a watchdog ping each
    pings: list[int] = []
    store = Store(path, alive=lambda: pings.append(1))
    assert _figure_sets(store) == ["r6", "r7"] and len(pings) == 4
    # Only the latest run's row keeps its figures: where the older release reads them.
    assert store._db.execute("SELECT run_id FROM runs WHERE stats IS NOT NULL").fetchall() == [("r7",)]
    names = {r for (r,) in store._db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "runs_started" in names
    assert store.last_complete_run() == "r7" and store.cumulative()[0] == 7
    assert build_figures(store, "r7") == want
    _complete_runs(store, ["r8"])
    assert _figure_sets(store) == ["r7", "r8"]
    assert store._db.execute("SELECT run_id FROM runs WHERE stats IS NOT NULL").fetchall() == [("r8",)]


def test_an_upgrade_cut_short_is_finished_by_the_next_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The upgrade ran only while run_figures did not exist: a start killed part-way, or a run
    # completed while the disk was full, left the older figures in the rows for good.
    import infraetl.store

    path = tmp_path / "c.sqlite3"
    store = Store(path)
    _complete_runs(store, [f"r{i}" for i in range(1, 6)])
    store._db.execute("UPDATE runs SET stats=(SELECT stats FROM run_figures f WHERE f.run_id=runs.run_id), "
                      "audit=(SELECT audit FROM run_figures f WHERE f.run_id=runs.run_id)")
    store.close()

    class Killed(Exception):
        pass

    def kill() -> None:
        raise Killed

    monkeypatch.setattr(infraetl.store, "PRUNE_CHUNK", 2)
    with pytest.raises(Killed):  # after its first chunk, as a kill -9 would
        Store(path, alive=kill)
    store = Store(path)
    assert store._db.execute("SELECT run_id FROM runs WHERE stats IS NOT NULL").fetchall() == [("r5",)]
    assert store.last_complete_run() == "r5"


def test_runs_an_older_release_completed_after_a_roll_back_are_the_latest(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = Store(path)
    _complete_runs(store, ["r1", "r2"])
    want = build_figures(store, "r1")
    # An older release completes r3 as it did: figures in the row, none in run_figures.
    store._db.execute("INSERT INTO runs (run_id, producer, started_at, finished_at, state, stats, audit) "
                      "SELECT 'r3', r.producer, r.started_at + 10, r.finished_at + 10, 'complete', f.stats, f.audit "
                      "FROM run_figures f JOIN runs r USING (run_id) WHERE run_id='r1'")
    assert store.last_complete_run() == "r3" and build_figures(store, "r3") == want
    store.close()
    store = Store(path)  # the upgrade moves it
    assert _figure_sets(store) == ["r1", "r2", "r3"] and store.last_complete_run() == "r3"
    assert store._db.execute("SELECT run_id FROM runs WHERE stats IS NOT NULL").fetchall() == [("r3",)]


def build_figures(store: Store, run_id: str) -> Any:
    summaries = store.run_summaries(run_id)
    assert summaries is not None
    return summaries[0].figures(), summaries[1].figures()


def test_an_older_store_that_cannot_be_upgraded_still_shows_its_last_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # As on a full disk: the consumer starts (and runs degraded) instead of exiting, and reads
    # the figures where the older release kept them.
    path = tmp_path / "c.sqlite3"
    store = Store(path)
    _complete_runs(store, ["r1", "r2"])
    store._db.execute("UPDATE runs SET stats=(SELECT stats FROM run_figures f WHERE f.run_id=runs.run_id), "
                      "audit=(SELECT audit FROM run_figures f WHERE f.run_id=runs.run_id)")
    store._db.execute("DROP TABLE run_figures")
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET finished_at=finished_at+1 WHERE run_id='r2'")  # the later one
    import infraetl.sqlite

    real = infraetl.sqlite.open_db

    def read_only(*a: Any, **kw: Any) -> Any:
        db = real(*a, **kw)
        db.execute("PRAGMA query_only=ON")  # every write now fails, as on a full disk
        return db

    import infraetl.store

    with caplog.at_level("WARNING"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(infraetl.store, "open_db", read_only)
        store = Store(path)
    assert "cannot upgrade the state database now" in caplog.text
    assert store.last_complete_run() == "r2" and store.run_summaries("r2") is not None


def test_the_latest_run_is_the_last_completed_whatever_the_clock_did(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Completion was stamped with the wall clock and "latest" chosen by it: a clock stepped back
    # (or two completions in one tick) showed the run before, and an older release, rolled
    # back to, read that run's cleared figures and could not start (a review).
    import infraetl.store

    store = Store(tmp_path / "c.sqlite3")
    _complete_runs(store, ["a"])
    real = time.time
    monkeypatch.setattr(infraetl.store.time, "time", lambda: real() - 120)
    _complete_runs(store, ["b"])
    monkeypatch.setattr(infraetl.store.time, "time", lambda: 1_000_000.0)  # frozen: a tie
    _complete_runs(store, ["c"])
    _complete_runs(store, ["d"])
    assert store.last_complete_run() == "d"
    assert store._db.execute("SELECT run_id FROM runs WHERE stats IS NOT NULL").fetchall() == [("d",)]
    # What the older release picks: the newest complete run by finished_at, figures in its row.
    assert store._db.execute("SELECT run_id FROM runs WHERE state='complete' ORDER BY finished_at DESC "
                             "LIMIT 1").fetchone() == ("d",)


def test_plaintext_in_run_figures_is_masked_after_a_roll_back_cleared_the_first_mark(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = Store(path)
    _complete_runs(store, ["r1", "r2"], reveal=True)
    # An older release, rolled back to without --reveal-passwords, masks the tables it knows and
    # deletes the mark it knows.
    store._db.execute("DELETE FROM marks WHERE name='revealed'")
    assert store.mask_revealed() > 0
    for (blob,) in store._db.execute("SELECT audit FROM run_figures"):
        assert not AuditSummary.from_bytes(blob).revealed


@pytest.mark.parametrize("ends", ["complete", "failed"])
def test_a_clock_stepped_back_mid_run_gives_no_negative_duration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 ends: str) -> None:
    # An NTP step back of 50 s mid-run showed "-40.2 s" on the dashboard (a review).
    import infraetl.store

    store = Store(tmp_path / "c.sqlite3")
    assert _apply(store, 1)
    real = time.time
    monkeypatch.setattr(infraetl.store.time, "time", lambda: real() - 50)
    if ends == "complete":
        assert store.end_run("r1", producer="p", batches=1, requested=20, delivered=20).run_complete
    else:
        store.fail_run("r1", producer="p", reason="cancelled by operator", state="cancelled")
    row = store.run("r1")
    assert row["finished_at"] >= row["started_at"] and row["duration_s"] >= 0


def test_masking_reaches_every_table_that_holds_a_revealed_audit(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A run in flight under --reveal-passwords has its aggregate in ``checkpoints`` and partials
    in ``batches``; a mutation test found no test that masks them (dropping either table from
    the masking passed every test)."""
    import infraetl.store

    monkeypatch.setattr(infraetl.store, "CHECKPOINT_EVERY", 4)
    store = Store(tmp_path / "c.sqlite3")
    for seq in range(1, 7):  # a checkpoint at 4, partials 5 and 6 after it
        assert _apply(store, seq, reveal=True)
    _complete_runs(store, ["done"], reveal=True)
    held = {t: store._db.execute(f"SELECT COUNT(*) FROM {t} WHERE audit IS NOT NULL").fetchone()[0]  # noqa: S608
            for t in ("checkpoints", "batches", "runs", "run_figures", "cumulative")}
    assert held == {"checkpoints": 1, "batches": 2, "runs": 1, "run_figures": 1, "cumulative": 1}
    assert store.mask_revealed() == sum(held.values())
    for table in held:
        for (blob,) in store._db.execute(f"SELECT audit FROM {table} WHERE audit IS NOT NULL"):  # noqa: S608
            assert not AuditSummary.from_bytes(blob).revealed, table


def test_the_figures_kept_beside_the_summaries_are_theirs(tmp_path: Path) -> None:
    # A render decoded the summaries every time: 221 ms once the password tally was full. The
    # figures are kept as JSON beside them; whatever path a render takes, it shows the same.
    from infraetl.figures import build_stats

    path = tmp_path / "c.sqlite3"
    store = Store(path)
    _complete_runs(store, ["r1", "r2", "r3"])
    kept = build_stats(store)
    store._db.execute("DELETE FROM figures_docs")  # as a store of an older release has none
    recomputed = build_stats(store)
    for doc in (kept, recomputed):
        doc.pop("generated_at")
    assert kept == recomputed and kept["cumulative"]["runs"] == 3


def test_a_copy_whose_summaries_changed_under_it_is_not_taken_and_goes(tmp_path: Path) -> None:
    # An older release, rolled back to without --reveal-passwords, masks the summaries but not
    # the copies it does not know: the page showed the plaintext the summaries no longer held,
    # and the copies kept it on disk (a review).
    from infraetl.figures import build_stats

    path = tmp_path / "c.sqlite3"
    store = Store(path)
    _complete_runs(store, ["r1", "r2"], reveal=True)
    shown = build_stats(store)["cumulative"]["audit"]["top_passwords"][0]["password"]
    for table, key in (("cumulative", "id"), ("run_figures", "run_id")):
        for k, blob in store._db.execute(f"SELECT {key}, audit FROM {table}").fetchall():
            a = AuditSummary.from_bytes(blob)
            a.mask()
            store._db.execute(f"UPDATE {table} SET audit=? WHERE {key}=?", (a.to_bytes(), k))
    store._db.execute("DELETE FROM marks")  # an intermediate build that knew run_figures
    doc = build_stats(store)
    assert doc["cumulative"]["audit"]["top_passwords"][0]["password"] != shown
    assert not doc["last_run"]["audit"]["revealed"]
    store.close()
    store = Store(path)
    assert store._db.execute("SELECT COUNT(*) FROM figures_docs").fetchone()[0] == 0


def test_a_run_named_like_the_cumulative_copy_keeps_its_own(tmp_path: Path) -> None:
    from infraetl.figures import build_stats

    store = Store(tmp_path / "c.sqlite3")
    _complete_runs(store, ["r1", "", "cumulative"])
    assert build_stats(store)["last_run"]["total_users"] == 20
    assert store.cumulative_figures()[1]["stats"]["total_users"] == 60


def test_batch_rows_an_older_release_left_of_a_run_it_closed_go_at_the_next_start(tmp_path: Path) -> None:
    """A run closed by an older release (rolled back to) kept its batch rows for good (a review):
    the next start of this one drops them; a running run's stay."""
    store = Store(tmp_path / "c.sqlite3")
    for seq in (1, 2):
        _apply(store, seq, "old")
        _apply(store, seq, "live")
    assert store.end_run("old", producer="p", batches=2, requested=40).run_complete
    store.sync()
    # What the older release left: the rows of the run it completed.
    store._db.execute("INSERT INTO batches (run_id, seq, users, applied_at) VALUES ('old', 1, 20, 0), "
                      "('old', 2, 20, 0)")
    store.close()
    again = Store(tmp_path / "c.sqlite3")
    rows = dict(again._db.execute("SELECT run_id, COUNT(*) FROM batches GROUP BY run_id").fetchall())
    assert rows == {"live": 2}
    assert again.run("old")["kept"] == 40  # type: ignore[index]
    again.close()
