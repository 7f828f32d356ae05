"""``infraetl-ctl crash``: the crash suite at any size, with faults at random moments.

The suite in ``tests/test_crash.py`` kills the daemons at precise points of a
12,000-user run. This is its longer form for an operator or a release check:

1. a fresh consumer and producer on 127.0.0.1 run N synthetic users without
   faults: the reference figures;
2. a second pair, under the same key, runs the very same users while faults
   drawn from :data:`FAULTS` hit it at random moments (a seeded generator, so
   a failing sequence can be replayed): ``kill -9`` of either daemon or of the
   consumer's zxcvbn helper, ``SIGSTOP`` of either daemon for longer than the
   producer's resend timeout, ``SIGTERM`` of either (which must exit cleanly
   within 5 s). A daemon that went down is started again, as systemd would;
3. the run must complete without anybody's help, with figures identical to
   the reference (every user counted exactly once) and the dashboard's
   cumulative total equal to N.

Waiting between faults is the pacing of the experiment, not synchronisation:
each fault waits for what it needs (an exit, a restart bound to its sockets).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config, wire
from .control import ControlClient, wait_run
from .exceptions import ControlError
from .localcluster import Daemon, LocalCluster
from .soak import children

#: The faults, in the order of their names in reports.
FAULTS: tuple[str, ...] = (
    "kill -9 consumer", "kill -9 producer", "kill -9 zxcvbn helper",
    "SIGSTOP consumer", "SIGSTOP producer", "SIGTERM consumer", "SIGTERM producer",
)
#: The producer's resend timeout in the faulty run, and how long a SIGSTOP lasts (longer).
RESEND_AFTER_S = 1.0
STOPPED_FOR_S = 2.5
#: A SIGTERMed daemon must be gone within this.
CLEAN_EXIT_S = 5.0
#: What differs between two runs of the same users and is not a figure.
TIME_KEYS = frozenset({"run_id", "started_at", "finished_at", "duration_s", "generated_at"})


def figures_without_times(figures: dict[str, Any]) -> dict[str, Any]:
    """A run's figures without ids and times, for comparing two runs of the same users."""
    return {k: v for k, v in figures.items() if k not in TIME_KEYS}


@dataclass
class Fault:
    """One fault as it happened."""

    t: float
    kind: str
    applied_before: int | None  # users the consumer had ACKed, when the producer could say
    note: str = ""


@dataclass
class CrashResult:
    """What the crash run found."""

    users: int
    seed: str
    random_seed: int
    faults: list[Fault] = field(default_factory=list)
    reference_s: float = 0.0
    faulty_s: float = 0.0
    state: str = ""
    total_users: int = 0
    differing: list[str] = field(default_factory=list)
    unclean_exits: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Under at least one fault: complete, exact, identical to the reference, and every
        SIGTERM a clean exit."""
        return (bool(self.faults) and self.state == "complete" and self.total_users == self.users
                and not self.differing and not self.unclean_exits)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "users": self.users, "seed": self.seed, "random_seed": self.random_seed, "ok": self.ok,
            "state": self.state, "dashboard_total_users": self.total_users,
            "figures_identical": not self.differing, "differing_figures": self.differing,
            "unclean_exits": self.unclean_exits,
            "reference_s": round(self.reference_s, 2), "faulty_s": round(self.faulty_s, 2),
            "faults_by_kind": dict(Counter(f.kind for f in self.faults)),
            "faults": [{"t": round(f.t, 2), "kind": f.kind, "applied_before": f.applied_before,
                        "note": f.note} for f in self.faults],
        }


def _stats(cluster: LocalCluster) -> dict[str, Any]:
    with urllib.request.urlopen(cluster.url + "api/stats.json", timeout=30) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def helper_pid(consumer: Daemon) -> int | None:
    """The consumer's zxcvbn helper: a child process running ``infraetl.scorer``."""
    pids = helper_pids(consumer, "infraetl.scorer")
    return pids[0] if pids else None


def helper_pids(consumer: Daemon, module: str) -> list[int]:
    """The consumer's child processes running ``module`` (``infraetl.batchwork``, say)."""
    if not consumer.alive():
        return []
    found = []
    for child in children(consumer.pid):
        try:
            if module.encode() in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


class _Injector:
    """Applies one fault to a cluster and brings it back, as systemd's Restart= would."""

    def __init__(self, cluster: LocalCluster, result: CrashResult) -> None:
        self.c = cluster
        self.result = result

    def apply(self, kind: str) -> str:
        verb, role = kind.rsplit(" ", 1)
        if role == "helper":
            pid = helper_pid(self.c.consumer)
            if pid is None:
                return "no helper running (it is started on demand, and after a failure within 10 s)"
            os.kill(pid, signal.SIGKILL)
            return f"helper pid {pid}"
        daemon = self.c.consumer if role == "consumer" else self.c.producer
        assert daemon is not None and daemon.proc is not None
        if verb == "kill -9":
            daemon.kill9()
        elif verb == "SIGSTOP":
            daemon.signal(signal.SIGSTOP)
            time.sleep(STOPPED_FOR_S)  # the fault itself: stopped for longer than the resend timeout
            daemon.signal(signal.SIGCONT)
            return f"stopped {STOPPED_FOR_S:g} s"
        else:
            t = time.monotonic()
            daemon.signal(signal.SIGTERM)
            code: int | None
            try:
                code = daemon.proc.wait(CLEAN_EXIT_S)
            except subprocess.TimeoutExpired:
                daemon.kill9()
                code = None
            took = time.monotonic() - t
            if code != 0:
                self.result.unclean_exits.append(f"{kind}: exit {code} after {took:.1f} s")
            note = f"exited {code} in {took:.2f} s"
            self._restart(role)
            return note
        self._restart(role)
        return ""

    def _restart(self, role: str) -> None:
        if role == "consumer":
            self.c.consumer.stop()  # closes its log; the process is already gone
            self.c.restart_consumer()
        else:
            assert self.c.producer is not None
            self.c.producer.stop()
            self.c.start_producer()


def run_crash(users: int, *, faults: int = 20, every: float = 2.0, seed: str = "crash",
              random_seed: int = 1, workdir: Path | None = None,
              on_fault: Callable[[Fault], None] | None = None) -> CrashResult:
    """Run ``users`` twice, without and with ``faults`` faults about ``every`` seconds apart."""
    result = CrashResult(users=users, seed=seed, random_seed=random_seed)
    rng = random.Random(random_seed)
    with tempfile.TemporaryDirectory(prefix="infraetl-crash-") as tmp:
        root = workdir or Path(tmp)
        reference = LocalCluster(root / "reference")
        try:
            reference.start()
            row = _run(reference, users, seed, lambda client, run_id: None)
            result.reference_s = _took(row)
            if row["state"] != "complete":
                raise ControlError(f"the reference run ended {row['state']}: {row.get('reason')}")
            expected = figures_without_times(_stats(reference)["last_run"])
        finally:
            reference.stop()
        faulty = LocalCluster(root / "faulty", key_file=reference.key_file,
                              producer_args=["--resend-after", f"{RESEND_AFTER_S:g}"])
        injector = _Injector(faulty, result)

        def inject(client: ControlClient, run_id: str) -> None:
            t0 = time.monotonic()
            while len(result.faults) < faults:
                row, over = _pace(client, run_id, rng.uniform(0.5, 1.5) * every)
                if over:
                    return  # the run is over: later faults would test nothing
                kind = rng.choice(FAULTS)
                fault = Fault(time.monotonic() - t0, kind, row["applied_users"] if row else None)
                fault.note = injector.apply(kind)
                result.faults.append(fault)
                if on_fault:
                    on_fault(fault)

        try:
            faulty.start()
            row = _run(faulty, users, seed, inject)
            result.faulty_s = _took(row)
            result.state = row["state"]
            stats = _stats(faulty)
            result.total_users = stats["cumulative"]["total_users"]
            got = figures_without_times(stats["last_run"])
            result.differing = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        finally:
            faulty.stop()
    return result


def _pace(client: ControlClient, run_id: str, seconds: float) -> tuple[dict[str, Any] | None, bool]:
    """Wait ``seconds`` between faults, looking at the run meanwhile; (its last row or None if the
    producer did not answer, whether it is over). An end is noticed within 0.2 s, not after the pause."""
    until = time.monotonic() + seconds
    row = None
    while True:
        try:
            row = client.call("status", run_id=run_id)["runs"][0]
        except ControlError:
            row = None  # a producer still starting: it answers the next time
        if row is not None and row["state"] != "running":
            return row, True
        if time.monotonic() >= until:
            return row, False
        time.sleep(min(0.2, max(0.0, until - time.monotonic())))


def _took(row: dict[str, Any]) -> float:
    """Seconds from a run's start to its end, as its producer recorded them."""
    return float((row.get("finished_at") or 0.0) - (row.get("created_at") or 0.0))


def _run(cluster: LocalCluster, users: int, seed: str,
         during: Callable[[ControlClient, str], None]) -> dict[str, Any]:
    """Start a run of synthetic users, call ``during``, and wait for the run to end."""
    keys = config.parse_keys(cluster.key_file.read_text(), "the crash run's key")
    sealer = wire.Sealer(keys, ttl=config.TOKEN_TTL, max_size=1 << 20)
    with ControlClient(cluster.control, sealer, timeout=10) as client:
        run_id = client.call("start-run", users=users, source="synthetic", seed=seed)["run_id"]
        during(client, run_id)
        # Generous: a run under faults pays restarts and resend timeouts.
        return wait_run(client, run_id, timeout=120 + users / 500, check=cluster.check)


def format_report(result: CrashResult) -> str:
    """The crash run, as text."""
    d = result.as_dict()
    lines = [f"{result.users:,} users (seed {result.seed!r}), faults drawn with --random-seed {result.random_seed}",
             f"reference run without faults: {d['reference_s']} s"]
    lines += [f"  {f.t:7.1f} s  {f.kind:<22} {'' if f.applied_before is None else f'{f.applied_before:,} applied'}"
              f"{'  (' + f.note + ')' if f.note else ''}" for f in result.faults]
    lines.append(f"run under {len(result.faults)} faults: {d['faulty_s']} s, {result.state}; "
                 f"dashboard total {result.total_users:,}")
    lines.append("figures identical to the reference" if not result.differing
                 else "figures DIFFER from the reference: " + ", ".join(result.differing))
    lines += [f"not a clean exit: {u}" for u in result.unclean_exits]
    return "\n".join(lines)
