"""The producer's spool: frames until ACKed, ACK counts on the run, bounded across runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from infraetl.spool import SCHEMA, Spool


def _frames(spool: Spool, run: str) -> list[tuple[int, int]]:
    return spool._db.execute("SELECT seq, acked FROM frames WHERE run_id=? ORDER BY seq", (run,)).fetchall()


def _spooled_run(spool: Spool, run: str, batches: int, users: int = 500) -> None:
    spool.create_run(run, {"users": batches * users})
    spool.add_frame(run, 0, "begin", 0, b"begin")
    for seq in range(1, batches + 1):
        spool.add_frame(run, seq, "data", users, b"frame %d" % seq, {"type:email": 1})
    spool.add_frame(run, -1, "end", 0, b"end")


def test_acks_are_counted_on_the_run_and_a_complete_run_leaves_no_frame_rows(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    _spooled_run(spool, "r1", 3)
    assert spool.ack("r1", 0) and spool.ack("r1", 2) and spool.ack("r1", 1)
    assert not spool.ack("r1", 2)  # the same ACK again counts nothing
    row = spool.run("r1")
    assert row is not None and (row.acked_batches, row.acked_users) == (2, 1000)
    assert [seq for _, seq, *_ in spool.unacked()] == [-1, 3]
    assert spool.ack("r1", 3) and spool.ack("r1", -1)
    spool.finish("r1", "complete", url="http://b/")
    assert _frames(spool, "r1") == []
    done = spool.run("r1")
    assert done is not None and done.as_dict()["applied_users"] == 1500 and done.as_dict()["acked"] == 3
    assert done.batches == 3 and done.quarantine == {"type:email": 3}


def test_a_finished_run_keeps_only_frames_still_waiting_for_an_ack(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    _spooled_run(spool, "r1", 2)
    spool.add_frame("r1", -2, "abort", 0, b"abort")
    spool.ack("r1", 1)
    spool.finish("r1", "cancelled", reason="cancelled by operator")
    assert _frames(spool, "r1") == [(-2, 0), (-1, 0), (0, 0), (2, 0)]  # re-sent after a restart
    assert spool.ack("r1", -2)
    assert _frames(spool, "r1") == [(-1, 0), (0, 0), (2, 0)]  # gone once ACKed: the run is over
    row = spool.run("r1")
    assert row is not None and row.acked_batches == 1


def test_a_spool_from_before_the_ack_counts_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    old_schema = SCHEMA.replace(
        "    finished_at REAL,\n    acked_batches INTEGER NOT NULL DEFAULT 0,   -- data batches the consumer ACKed\n"
        "    acked_users   INTEGER NOT NULL DEFAULT 0,   -- their users\n"
        "    nonce       TEXT,                -- the start-run request's nonce (taken once, restarts too)\n"
        "    outcome     TEXT                 -- JSON: what the consumer counted (kept, quarantined) once complete\n",
        "    finished_at REAL\n")
    assert old_schema != SCHEMA
    db = sqlite3.connect(path)
    db.executescript(old_schema)
    db.executescript(
        "INSERT INTO runs (run_id, spec, state, created_at) VALUES ('done', '{}', 'complete', 1), "
        "('going', '{}', 'running', 2);"
        "INSERT INTO frames (run_id, seq, kind, users, frame, acked) VALUES "
        "('done', 1, 'data', 500, NULL, 1), ('done', 2, 'data', 300, NULL, 1), ('done', -1, 'end', 0, NULL, 1),"
        "('going', 1, 'data', 500, NULL, 1), ('going', 2, 'data', 500, x'00', 0);")
    db.commit()
    db.close()
    spool = Spool(path)
    counts = {r.run_id: (r.acked_batches, r.acked_users) for r in spool.runs()}
    assert counts == {"done": (2, 800), "going": (1, 500)}
    assert _frames(spool, "done") == []
    assert _frames(spool, "going") == [(1, 1), (2, 0)]
    spool.close()
    spool = Spool(path)
    assert {r.run_id: (r.acked_batches, r.acked_users) for r in spool.runs()} == counts
    spool.create_run("new", {}, nonce="abc")  # and it keeps start-run nonces now
    assert spool.started_by("abc") == "new" and spool.started_by("other") is None
    spool.finish("new", "complete", outcome={"kept": 7, "quarantined": 3})  # and the consumer's counts
    new = spool.run("new")
    assert new is not None and (new.as_dict()["applied_users"], new.as_dict()["quarantined"]) == (7, 3)
    # and `status` reads the newest runs by an index, not every run
    plan = spool._db.execute("EXPLAIN QUERY PLAN SELECT run_id FROM runs r ORDER BY r.created_at DESC "
                             "LIMIT 20").fetchall()
    assert "runs_created" in str(plan)


def test_an_abort_closes_its_run_as_it_is_spooled_and_an_older_stuck_run_is_closed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    spool.create_run("cancelled", {})
    spool.add_frame("cancelled", -1, "abort", 0, b"sealed", finish=("cancelled", "by operator"))
    row = spool.run("cancelled")
    assert row is not None and (row.state, row.reason, row.ended) == ("cancelled", "by operator", True)
    # What a producer killed between the two steps of older code left: ABORT spooled, run running.
    spool.create_run("stuck", {})
    spool.add_frame("stuck", -1, "abort", 0, b"sealed")
    spool.create_run("ending", {})
    spool.add_frame("ending", -1, "end", 0, b"sealed")  # waiting for the consumer: stays running
    spool.close()
    spool = Spool(tmp_path / "spool.sqlite3")
    assert spool.close_aborted() == ["stuck"]
    stuck = spool.run("stuck")
    assert stuck is not None and stuck.state == "failed" and "restart" in (stuck.reason or "")
    assert [r.run_id for r in spool.unfinished_runs()] == ["ending"]
    assert spool.close_aborted() == []


def test_a_run_still_running_behind_a_thousand_newer_ones_is_resumed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    spool.create_run("long", {})
    for i in range(1005):
        spool.create_run(f"short-{i}", {})
        spool.finish(f"short-{i}", "complete")
    assert [r.run_id for r in spool.unfinished_runs()] == ["long"]


def test_old_finished_runs_rows_go_past_both_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every run's row stayed for good (~0.3 KB a run, and a start read them all; a review).
    import infraetl.spool

    monkeypatch.setattr(infraetl.spool, "RUNS_KEPT", 2)
    monkeypatch.setattr(infraetl.spool, "PRUNE_EVERY_S", 0.0)
    spool = Spool(tmp_path / "spool.sqlite3")
    for run in ("old", "old-waiting", "running-long", "recent"):
        spool.create_run(run, {"users": 1})
    spool.add_frame("old-waiting", -2, "abort", 0, b"abort")  # its ABORT still waits for an ACK
    for run in ("old", "old-waiting"):
        spool.finish(run, "cancelled", reason="cancelled by operator")
    month = infraetl.spool.RUN_ROWS_KEPT_S + 60
    spool._db.execute("UPDATE runs SET created_at=created_at-?, finished_at=finished_at-? WHERE run_id "
                      "IN ('old', 'old-waiting', 'running-long')", (month, month))
    for run in ("new1", "new2"):
        spool.create_run(run, {"users": 1})
    spool.finish("recent", "complete")
    assert sorted(r.run_id for r in spool.runs(100)) == ["new1", "new2", "old-waiting", "recent", "running-long"]
    assert [r.run_id for r in spool.unfinished_runs()] == ["running-long", "new1", "new2"]
    plan = spool._db.execute("EXPLAIN QUERY PLAN SELECT run_id FROM runs r WHERE r.state='running' "
                             "ORDER BY r.created_at").fetchall()
    assert "runs_running" in str(plan)


def test_old_runs_rows_go_the_oldest_first_however_many_there_are(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import infraetl.spool

    monkeypatch.setattr(infraetl.spool, "RUNS_KEPT", 2)
    monkeypatch.setattr(infraetl.spool, "PRUNE_EVERY_S", 0.0)
    monkeypatch.setattr(infraetl.spool, "PRUNE_CHUNK", 3)
    spool = Spool(tmp_path / "spool.sqlite3")
    for i in range(8):
        spool.create_run(f"old{i}", {"users": 1})
        spool.finish(f"old{i}", "complete")
    month = infraetl.spool.RUN_ROWS_KEPT_S + 60
    spool._db.execute("UPDATE runs SET created_at=created_at-?, finished_at=finished_at-?", (month, month))
    for run in ("new1", "new2"):
        spool.create_run(run, {"users": 1})
    spool.finish("new1", "complete")
    assert sorted(r.run_id for r in spool.runs(100)) == ["new1", "new2", "old3", "old4", "old5", "old6", "old7"]
    spool.finish("new2", "complete")
    assert sorted(r.run_id for r in spool.runs(100)) == ["new1", "new2", "old6", "old7"]


def test_an_older_consumers_count_of_quarantined_users_leaves_the_nat_filter_out(tmp_path: Path) -> None:
    # A new producer and an older consumer: "1532 quarantined, 1532 left out by --nat" (a review).
    spool = Spool(tmp_path / "spool.sqlite3")
    for run, outcome in (("old", {"kept": 321, "quarantined": 1540}),
                         ("new", {"kept": 321, "quarantined": 8, "filtered_apart": True})):
        spool.create_run(run, {"users": 321})
        spool.add_frame(run, 1, "data", 321, b"f", {"nat_not_requested": 1532, "missing:email": 8})
        spool.finish(run, "complete", outcome=outcome)
        row = spool.run(run)
        assert row is not None and (row.as_dict()["quarantined"], row.as_dict()["filtered"]) == (8, 1532)


def test_a_run_given_up_keeps_only_its_abort_and_counts_none_of_its_users(tmp_path: Path) -> None:
    # A mutation test found neither untested: frames of a cancelled run left in the spool go
    # out again after every restart; and status showed its ACKed users as applied.
    spool = Spool(tmp_path / "spool.sqlite3")
    _spooled_run(spool, "r1", 4)
    spool.ack("r1", 0)
    spool.ack("r1", 1)
    spool.ack("r1", 2)  # 1,000 users ACKed, batches 3, 4 and the END still waiting
    spool.fail_run("r1", -1, b"abort", "cancelled by operator", state="cancelled")
    assert [(run, seq, kind) for run, seq, kind, _ in spool.unacked()] == [("r1", -1, "abort")]
    row = spool.run("r1")
    assert row is not None and row.acked_users == 1000
    assert row.as_dict()["applied_users"] == 0 and row.as_dict()["state"] == "cancelled"


def test_runs_an_older_release_acked_show_their_acks_again_after_an_upgrade(tmp_path: Path) -> None:
    """A release before the runs' ACK counts flagged ACKs in the frames only: rolled back to, it
    finished runs that showed 0 ACKed under this one for good (a review). Recounted at open."""
    spool = Spool(tmp_path / "spool.sqlite3")
    _spooled_run(spool, "old", 3)
    _spooled_run(spool, "new", 2)
    spool.ack("new", 1)
    spool.close()
    db = sqlite3.connect(tmp_path / "spool.sqlite3")
    with db:  # what the older release did: flags in the frames, the run closed, no counts
        db.execute("UPDATE frames SET acked=1, frame=NULL WHERE run_id='old'")
        db.execute("UPDATE runs SET state='complete', finished_at=1 WHERE run_id='old'")
    db.close()
    again = Spool(tmp_path / "spool.sqlite3")
    old, new = again.run("old"), again.run("new")
    assert old is not None and (old.acked_batches, old.acked_users) == (3, 1500)
    assert new is not None and (new.acked_batches, new.acked_users) == (1, 500)  # its own counts
    assert _frames(again, "old") == []  # and its rows go, as this release's own do
    again.close()
