"""Disk full and read-only state dir on the consumer: stop ACKing, say why, resume, lose nothing."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ctl, get_json, get_text, metric, wait_for

from infraetl.localcluster import LocalCluster

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MB tmpfs for the consumer's state directory."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    """Fill the file system under ``path``. Unbuffered: a buffered file keeps what the full
    disk refused and raises No space left again when it is closed."""
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        try:
            while f.write(chunk):
                pass
        except OSError:
            pass


def _health(c: LocalCluster) -> tuple[int, str]:
    status, _, body = get_text(c.url + "healthz")
    return status, body


def test_disk_full_then_read_only_then_back(tmp_path: Path, small_disk: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", producer_args=["--resend-after", "1"])
    c.consumer.state_dir = small_disk / "consumer"
    argv = c.consumer.argv
    argv[argv.index("--state-dir") + 1] = str(c.consumer.state_dir)
    with c:
        ctl(c, "start-run", "--users", "1000", "--seed", "warm")
        run_id = ctl(c, "start-run", "--users", "20000", "--seed", "full", "--no-wait").stdout.strip()
        wait_for(lambda: metric(c, "infraetl_batches_applied_total") >= 4, 60, "batches applied")
        ballast = small_disk / "ballast"
        _fill(ballast)
        wait_for(lambda: _health(c)[0] == 503, 60, "/healthz to report the full disk")
        assert "full" in _health(c)[1] or "disk" in _health(c)[1]
        assert "not ACKing" in c.consumer.log()
        applied = metric(c, "infraetl_batches_applied_total")
        ballast.unlink()
        wait_for(lambda: _health(c)[0] == 200, 30, "/healthz to recover")
        ctl(c, "wait", run_id, "--timeout", "120")
        assert metric(c, "infraetl_batches_applied_total") > applied
        stats = get_json(c.url + "api/stats.json")
        assert stats["cumulative"]["total_users"] == 1000 + 20000
        assert [r["state"] for r in stats["runs"]] == ["complete"] * 2
        assert c.consumer.alive()
    # No corrupt state: SQLite's own check passes.
    import sqlite3
    db = sqlite3.connect(str(small_disk / "consumer" / "consumer.sqlite3"))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_an_idle_consumer_says_its_disk_is_full_before_the_next_run(tmp_path: Path, small_disk: Path) -> None:
    """/healthz said "ok" on a full disk until a run's batch failed to commit (a review): an idle
    consumer checks every 10 s (consumer.IDLE_PROBE_S) that its disk has room. A write into the
    database cannot tell once it has worked (its WAL has room inside: a second review)."""
    c = LocalCluster(tmp_path / "cluster")
    c.consumer.state_dir = small_disk / "consumer"
    argv = c.consumer.argv
    argv[argv.index("--state-dir") + 1] = str(c.consumer.state_dir)
    with c:
        ctl(c, "start-run", "--users", "20000", "--seed", "before")  # its WAL then has room inside
        assert _health(c)[0] == 200
        ballast = small_disk / "ballast"
        _fill(ballast)
        wait_for(lambda: _health(c)[0] == 503, 30, "/healthz to report the full disk")
        assert metric(c, "infraetl_store_writable") == 0
        ballast.unlink()
        wait_for(lambda: _health(c)[0] == 200, 20, "/healthz to recover")
        assert metric(c, "infraetl_store_writable") == 1
        ctl(c, "start-run", "--users", "500", "--seed", "after")


def test_a_state_disk_out_of_inodes_but_not_of_space_keeps_committing(tmp_path: Path) -> None:
    """The first idle probe made a file of its own: a disk out of inodes, where SQLite still
    commits into its files, stopped the consumer (a review). The probe now makes none."""
    mnt = tmp_path / "few-inodes"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m,nr_inodes=400", "tmpfs", str(mnt)], check=True)
    try:
        c = LocalCluster(tmp_path / "cluster")
        c.consumer.state_dir = mnt / "consumer"
        argv = c.consumer.argv
        argv[argv.index("--state-dir") + 1] = str(c.consumer.state_dir)
        with c:
            ctl(c, "start-run", "--users", "2000", "--seed", "before")
            filler = mnt / "filler"
            filler.mkdir()
            with pytest.raises(OSError):
                for i in range(1000):
                    (filler / str(i)).touch()
            time.sleep(11)  # not a synchronisation: longer than the idle probe's period (IDLE_PROBE_S)
            assert _health(c)[0] == 200
            ctl(c, "start-run", "--users", "2000", "--seed", "after")
            assert get_json(c.url + "api/stats.json")["cumulative"]["total_users"] == 4000
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_only_state_dir_at_start_is_one_clear_error(tmp_path: Path, small_disk: Path) -> None:
    state = small_disk / "consumer"
    state.mkdir()
    # Immutable: root ignores mode bits, and a tmpfs in use cannot be remounted read-only.
    subprocess.run(["chattr", "+i", str(state)], check=True)
    try:
        c = LocalCluster(tmp_path / "cluster")
        argv = c.consumer.argv
        argv[argv.index("--state-dir") + 1] = str(state)
        proc = subprocess.run(argv, env=c.env, capture_output=True, text=True, timeout=30)
    finally:
        subprocess.run(["chattr", "-i", str(state)], check=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "cannot open the state database" in proc.stderr


@pytest.fixture
def producer_on_small_disk(tmp_path: Path, small_disk: Path) -> Iterator[LocalCluster]:
    """Both daemons, the producer's state directory (its spool) on the small tmpfs."""
    (small_disk / "producer").mkdir()
    c = LocalCluster(tmp_path / "cluster")
    (c.root / "producer").symlink_to(small_disk / "producer")
    try:
        yield c.start()
    finally:
        c.stop()


def test_a_full_disk_under_the_producer_refuses_a_run_in_one_sentence_and_the_daemon_lives(
        producer_on_small_disk: LocalCluster, small_disk: Path) -> None:
    c = producer_on_small_disk
    ctl(c, "start-run", "--users", "300")
    _fill(small_disk / "filler")
    refused = ctl(c, "start-run", "--users", "300", check=False)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "the producer's spool: state database" in refused.stderr  # whose disk: the ctl may be elsewhere
    assert c.producer is not None and c.producer.alive()
    (small_disk / "filler").unlink()
    ctl(c, "start-run", "--users", "300")
    assert get_json(c.url + "api/stats.json")["cumulative"]["total_users"] == 600


def test_a_producer_whose_disk_fills_mid_run_holds_its_work_and_finishes_when_space_is_back(
        producer_on_small_disk: LocalCluster, small_disk: Path) -> None:
    c = producer_on_small_disk
    # Room for the run's first frames, not for its window of them (~26 x 130 KB): the spool
    # runs out mid-run (once ACKed frames free pages, it stops growing).
    _fill(small_disk / "filler")
    os.truncate(small_disk / "filler", (small_disk / "filler").stat().st_size - (1 << 20))
    run_id = ctl(c, "start-run", "--users", "40000", "--no-wait").stdout.strip()
    assert c.producer is not None
    wait_for(lambda: "cannot spool" in c.producer.log(), 60, "the producer to hold its work")
    assert c.producer.alive()
    assert ctl(c, "status").returncode == 0  # still answering its operator
    (small_disk / "filler").unlink()
    ctl(c, "wait", run_id, "--timeout", "120")
    assert get_json(c.url + "api/stats.json")["cumulative"]["total_users"] == 40000
