"""The CI-sized soak: 100,000 users through both daemons, exact, with bounded consumer memory."""

from __future__ import annotations

import os
import signal

import pytest

from infraetl.soak import format_timeline, run_soak


@pytest.mark.slow
def test_soak_100k_exact_and_bounded() -> None:
    result = run_soak(100_000, interval=0.5)
    print(format_timeline(result))
    assert result.state == "complete"
    assert result.applied == 100_000 and result.total_users == 100_000
    d = result.as_dict()
    # Bounded state: memory after 100k users is close to memory after the first 10k.
    assert d["consumer_rss_mb"]["after_10k"] is not None
    assert d["consumer_rss_mb"]["end"] - d["consumer_rss_mb"]["after_10k"] < 50
    # Read near the mark, not at whichever 1 s sample first passed it (that was 28,000 users).
    assert 10_000 <= d["consumer_rss_mb"]["after_10k_at_users"] <= 20_000
    assert result.consumer_peak >= max(s.consumer_rss for s in result.samples)  # unrounded, as the samples


def test_soak_timings_do_not_depend_on_the_sampling_interval() -> None:
    # The end was noticed only after a whole --interval: 50,000 users at --interval 8 "took"
    # 8 s (6,240 users/s) for a run of 3, with no sample past the start.
    result = run_soak(20_000, interval=60)
    assert result.state == "complete" and result.total_users == 20_000
    assert result.seconds < 30 and len(result.samples) == 2  # the first one and the end
    assert result.samples[-1].applied == 20_000


@pytest.mark.slow
def test_bench_command_reports_every_figure_from_a_real_run() -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "infraetl.ctl", "bench", "--users", "3000", "--json"],
                         capture_output=True, text=True, timeout=600, check=True)
    r = json.loads(out.stdout)["median"]
    # Both runs (cold, then warm through the same daemons) delivered every user.
    assert r["users"] == r["applied_users"] == 3000
    assert r["batches"] == 6 and r["batch_size"] == 500
    assert r["end_to_end_users_per_s"] > 0 and r["warm_end_to_end_users_per_s"] > 0
    assert set(r["consumer_stages_s"]) >= {"open", "validate", "stats", "audit", "commit", "render"}
    assert set(r["producer_stages_s"]) >= {"read", "seal", "spool", "send"}
    assert all(v > 0 for v in r["consumer_stages_s"].values())
    assert r["consumer_over_floor"] == pytest.approx(r["consumer_total_s"] / r["floor_s"], rel=0.05)
    # The yardstick layout (one map per API user, hashes and pictures included) opens several
    # times slower than the columnar batches: a floor measured on the wrong frames would not.
    assert r["dict_floor_users_per_s"] * 2 < r["floor_users_per_s"]
    assert r["consumer_over_dict_floor"] * 2 < r["consumer_over_floor"]
    # The zxcvbn helper did the first-seen passwords' work, and the report counts it.
    assert r["consumer_helper_cpu_s"] > 0
    cpu_s = (r["cpu_us_per_user"]["consumer"] + r["cpu_us_per_user"]["helper"]) * r["users"] / 1e6
    assert r["consumer_with_helper_over_floor"] == pytest.approx(cpu_s / r["floor_s"], rel=0.1)
    # Caches were warm for the second run: its audit cost less than the first's.
    assert r["warm_consumer_stages_s"]["audit"] < r["consumer_stages_s"]["audit"]
    # The peer: the original's whole run, its transform + audit alone, and the lean VM2; each
    # part of the whole is faster than the whole.
    assert set(r["peer_phases_s"]) == {"extract", "transform", "audit", "load"}
    assert r["peer_users_per_s"] < r["peer_transform_audit_users_per_s"]
    assert r["speedup_vs_peer"] > r["speedup_vs_peer_transform_audit"] > 0
    assert r["lean_peer_users_per_s"] > 0 and r["speedup_vs_lean_peer"] > 0
    assert 0.9 * 3000 < r["peer_kept_users"] <= 3000
    assert r["peak_rss_mb"]["consumer"] > 0 and r["peak_rss_mb"]["producer"] > 0
    # CPU per user of each process in the cold run, from /proc (the helper's too).
    cpu = r["cpu_us_per_user"]
    assert set(cpu) == {"producer", "consumer", "helper"}
    assert cpu["producer"] > 0 and cpu["consumer"] > 0 and cpu["helper"] >= 0
    # CPU of the three / (wall time x cores); /proc counts 10 ms ticks, a short run rounds up.
    assert 0 < r["cores_busy_share"] <= 1.5
    # The consumer's own whole re-render after each run, and the page alone from the same figures.
    assert 0 < r["page_render_ms"] < r["render_ms"] < 1000 and 0 < r["warm_render_ms"] < 1000
    assert r["peak_rss_mb"]["consumer_helper"] > 0
    # The consumer by itself took a whole run of the same users, twice, and rendered it.
    alone = r["consumer_alone"]
    assert alone["applied_users"] == 3000
    assert alone["cold_users_per_s"] > 0 and alone["warm_users_per_s"] > 0
    assert alone["cpu_us_per_user"]["consumer"] > 0 and alone["cpu_us_per_user"]["helper"] >= 0
    assert 0 < alone["cores_busy_share"] <= 1.5


def test_tuned_allocator_reuses_frame_sized_buffers_instead_of_faulting_in_fresh_pages() -> None:
    import subprocess
    import sys

    code = (
        "import os, resource, sys\n"
        "from infraetl.daemon import MALLOC\n"
        "if sys.argv[1] == 'tuned':\n"
        "    MALLOC.tune()\n"
        "else:\n"
        "    MALLOC._libc.mallopt(MALLOC.M_MMAP_THRESHOLD, 128 * 1024)  # every frame mmap-ed\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(200):\n"
        "    frame = os.urandom(300_000)  # a batch's frame: allocated, written, freed\n"
        "    del frame\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("tuned", "mmap")}
    pages = 200 * 300_000 // 4096
    assert faults["mmap"] > pages // 2        # the mechanism the tuning avoids: fresh pages every time
    assert faults["tuned"] < pages // 20      # reused from the heap


def _stderr_tail(proc) -> str:  # type: ignore[no-untyped-def]
    return proc.stderr.read()[-2000:] if proc.stderr else ""


def _children(pid: int) -> list[int]:
    from infraetl.soak import children

    return children(pid)


def _ctl_command(*args: str):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "infraetl.ctl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("command", [["bench", "--users", "200000", "--no-peer"], ["soak", "--users", "200000"],
                                     ["demo", "--users", "2000000", "--http-port", "0"]])
def test_sigterm_to_a_long_command_stops_its_daemons_and_removes_its_directory(command: list[str]) -> None:
    # timeout(1), a cancelled CI job: both daemons were left running, with their directory.
    from pathlib import Path

    from infraetl.localcluster import wait_for

    proc = _ctl_command(*command)
    try:
        daemons = wait_for(lambda: (lambda c: c if len(c) >= 2 else None)(_children(proc.pid)), 120,
                           "both daemons started")
        args = Path(f"/proc/{daemons[0]}/cmdline").read_bytes().decode().split("\0")
        state_dir = Path(args[args.index("--state-dir") + 1])
        # The command's own temporary directory, whatever lies under it.
        state = next(d for d in [state_dir, *state_dir.parents] if d.name.startswith("infraetl-"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 130
    finally:
        proc.kill()
        proc.wait()
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in daemons
            if Path(f"/proc/{pid}").exists() and b"infraetl." in Path(f"/proc/{pid}/cmdline").read_bytes()}
    assert not left, (left, _stderr_tail(proc))
    assert not state.exists()


@pytest.mark.slow
def test_a_bench_whose_producer_dies_says_so_instead_of_waiting() -> None:
    from pathlib import Path

    from infraetl.localcluster import wait_for

    proc = _ctl_command("bench", "--users", "200000", "--no-peer")
    try:
        pid = wait_for(lambda: next((c for c in _children(proc.pid)
                                     if b"infraetl.producer" in open(f"/proc/{c}/cmdline", "rb").read()), None),
                       120, "the bench's producer")
        args = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")
        log = Path(args[args.index("--state-dir") + 1]).parent / "producer.log"
        wait_for(lambda: " started: " in log.read_text(), 120, "the bench's run started")  # mid-run
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)  # it waited for the run for up to an hour
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1 and "Traceback" not in err
    assert "the producer exited with status -9" in err


def test_crash_with_no_fault_injected_is_not_a_pass() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "infraetl.ctl", "crash", "--users", "1000", "--faults", "3",
                          "--every", "60", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "no fault was injected" in out.stderr and "Traceback" not in out.stderr
    import json

    r = json.loads(out.stdout)
    assert r["ok"] is False and r["faults_by_kind"] == {}
    # Timed by the runs' own start and end, not by the pause before a fault that never came.
    assert r["faulty_s"] < 30
