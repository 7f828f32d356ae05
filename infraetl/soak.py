"""``infraetl-ctl soak``: many users through both daemons, throughput over time, RSS start and end.

The run uses the offline synthetic source, so it needs no network and no
data file. Every ``interval`` seconds it samples the users the consumer has
applied (from the producer's view of the ACKs) and both daemons' resident
memory, then reports the throughput of each slice, the consumer's RSS after
the first 10,000 users and at the end (bounded state: the difference must
stay small however many users pass), and whether the count is exact.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config, wire
from .control import ControlClient
from .localcluster import LocalCluster


def proc_status_mb(pid: int, field: str) -> float:
    """A memory field of /proc/PID/status (VmRSS, VmHWM) in MB; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (0 if it is gone)."""
    return proc_status_mb(pid, "VmRSS")


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (empty if it is gone)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def children_rss_mb(pid: int) -> float:
    """Resident memory of a process's live children (the consumer's zxcvbn helper), in MB."""
    return sum(map(rss_mb, children(pid)))


#: Seconds between two looks at the run (its end and the 10k mark are noticed this closely).
POLL_S = 0.05


@dataclass
class Sample:
    """One observation during the soak."""

    t: float
    applied: int
    consumer_rss: float
    producer_rss: float


@dataclass
class SoakResult:
    """What the soak measured."""

    users: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    state: str = ""
    applied: int = 0
    total_users: int = 0
    rss_after_10k: float | None = None
    #: Users applied when ``rss_after_10k`` was read (the first poll at or past 10,000).
    rss_after_10k_at: int | None = None
    #: VmHWM of the consumer and the producer at the end: the peaks, not the largest sample.
    consumer_peak: float = 0.0
    producer_peak: float = 0.0
    helper_rss: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        first, last = self.samples[0], self.samples[-1]
        return {
            "users": self.users, "seconds": round(self.seconds, 2), "state": self.state,
            "applied": self.applied, "dashboard_total_users": self.total_users,
            "users_per_s": round(self.users / self.seconds) if self.seconds else None,
            "consumer_rss_mb": {"start": round(first.consumer_rss, 1), "after_10k": self.rss_after_10k,
                                "after_10k_at_users": self.rss_after_10k_at,
                                "end": round(last.consumer_rss, 1), "peak": round(self.consumer_peak, 1),
                                "helper_at_end": round(self.helper_rss, 1)},
            "producer_rss_mb": {"start": round(first.producer_rss, 1), "end": round(last.producer_rss, 1),
                                "peak": round(self.producer_peak, 1)},
            "timeline": [{"t": round(s.t, 1), "applied": s.applied, "consumer_rss_mb": round(s.consumer_rss, 1)}
                         for s in self.samples],
        }


def run_soak(users: int, *, interval: float = 1.0, workdir: Path | None = None,
             on_sample: Callable[[Sample], None] | None = None) -> SoakResult:
    """Push ``users`` synthetic users through a fresh consumer and producer."""
    import json
    import urllib.request

    with tempfile.TemporaryDirectory(prefix="infraetl-soak-") as tmp:
        cluster = LocalCluster((workdir or Path(tmp)) / "cluster", producer_args=[])
        try:
            cluster.start()
            assert cluster.producer is not None
            keys = config.parse_keys(cluster.key_file.read_text(), "the soak key")
            sealer = wire.Sealer(keys, ttl=config.TOKEN_TTL, max_size=1 << 20)
            result = SoakResult(users=users, seconds=0.0)
            with cluster.blaming_daemons(), ControlClient(cluster.control, sealer, timeout=30) as client:
                t0 = time.monotonic()
                run_id = client.call("start-run", users=users, source="synthetic", seed="soak")["run_id"]
                next_sample = t0
                while True:
                    # The run is looked at every POLL_S (its end, the 10k mark, to the poll);
                    # progress and memory are sampled every ``interval``.
                    cluster.check()
                    row = client.call("status", run_id=run_id)["runs"][0]
                    now, applied, over = time.monotonic(), row["applied_users"] or 0, row["state"] != "running"
                    if result.rss_after_10k is None and applied >= 10_000:
                        result.rss_after_10k = round(rss_mb(cluster.consumer.pid), 1)
                        result.rss_after_10k_at = applied
                    if now >= next_sample or over:
                        s = Sample(now - t0, applied, rss_mb(cluster.consumer.pid), rss_mb(cluster.producer.pid))
                        result.samples.append(s)
                        next_sample = now + interval
                        if on_sample:
                            on_sample(s)
                    if over:
                        break
                    time.sleep(POLL_S)
                result.seconds = now - t0
                result.consumer_peak = proc_status_mb(cluster.consumer.pid, "VmHWM")
                result.producer_peak = proc_status_mb(cluster.producer.pid, "VmHWM")
                result.helper_rss = children_rss_mb(cluster.consumer.pid)
                result.state = row["state"]
                result.applied = row["applied_users"] or 0
            with urllib.request.urlopen(cluster.url + "api/stats.json", timeout=30) as r:
                result.total_users = json.loads(r.read())["cumulative"]["total_users"]
            return result
        finally:
            cluster.stop()


def format_timeline(result: SoakResult, slices: int = 10) -> str:
    """Throughput per slice of the run and RSS at its end, as text."""
    lines = [f"{'t (s)':>8} {'applied':>10} {'users/s':>9} {'consumer RSS':>13} {'producer RSS':>13}"]
    step = max(1, len(result.samples) // slices)
    prev = result.samples[0]
    picked = result.samples[step::step]
    if result.samples[-1] not in picked:
        picked.append(result.samples[-1])
    for s in picked:
        dt = s.t - prev.t
        rate = (s.applied - prev.applied) / dt if dt > 0 else 0.0
        lines.append(f"{s.t:8.1f} {s.applied:10,} {rate:9,.0f} {s.consumer_rss:10.1f} MB {s.producer_rss:10.1f} MB")
        prev = s
    d = result.as_dict()
    lines.append(f"{result.users:,} users in {d['seconds']} s = {d['users_per_s']:,} users/s; run {result.state}; "
                 f"dashboard total {result.total_users:,}")
    c = d["consumer_rss_mb"]
    lines.append(f"consumer RSS: start {c['start']} MB, after 10k users {c['after_10k']} MB (read at "
                 f"{c['after_10k_at_users'] or 0:,} users), end {c['end']} MB, peak {c['peak']} MB; "
                 f"its zxcvbn helper {c['helper_at_end']} MB at the end")
    return "\n".join(lines)
