"""Helpers for the end-to-end tests: run infraetl-ctl, read the consumer's HTTP API."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from infraetl.crash import figures_without_times
from infraetl.localcluster import LocalCluster, wait_for

__all__ = ["cluster_sealer", "ctl", "get_json", "get_text", "metric", "push_frames", "wait_for",
           "figures_without_times"]


def ctl(cluster: LocalCluster, *args: str, timeout: float = 180, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``infraetl-ctl --producer <cluster> ARGS`` as a real process."""
    proc = subprocess.run(
        [sys.executable, "-m", "infraetl.ctl", "--producer", cluster.control, *args],
        env=env or cluster.env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"infraetl-ctl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def get_text(url: str, timeout: float = 10) -> tuple[int, dict[str, str], str]:
    """GET ``url``; return (status, headers, body) even for error statuses."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", "replace")


def get_json(url: str) -> Any:
    """GET and decode JSON."""
    status, _, body = get_text(url)
    assert status == 200, (url, status, body[:200])
    return json.loads(body)


def metric(cluster: LocalCluster, name: str, labels: str = "") -> float:
    """Read one sample from the consumer's /metrics (0 if absent)."""
    _, _, body = get_text(cluster.url + "metrics")
    want = f"{name}{{{labels}}}" if labels else name
    for line in body.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0




def push_frames(endpoint: str, frames: list[bytes | list[bytes]]) -> None:
    """Send frames (a list is one multi-part message) to a PULL endpoint, as a producer would."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    for f in frames:
        if isinstance(f, list):
            sock.send_multipart(f)
        else:
            sock.send(f)
    sock.close()
    ctx.term()


def cluster_sealer(cluster: LocalCluster) -> Any:
    """A sealer holding the cluster's key: frames a test pushes by hand, as a producer would."""
    from infraetl import config, wire

    return wire.Sealer(config.parse_keys(cluster.key_file.read_text(), "test"), ttl=3600, max_size=16 << 20)


def reference_run(root: Path, users: int, seed: str) -> dict[str, Any]:
    """A fault-free run's figures (times left out) and the key it ran under: what a run of the
    same users under faults must show."""
    with LocalCluster(root / "cluster") as c:
        ctl(c, "start-run", "--users", str(users), "--seed", seed)
        figures = figures_without_times(get_json(c.url + "api/stats.json")["last_run"])
    assert figures["total_users"] == users
    return {"figures": figures, "key_file": root / "cluster" / "etl-key"}
