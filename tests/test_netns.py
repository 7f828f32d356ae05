"""Two hosts on one machine: the producer in netns infraetl-a, the consumer in infraetl-b.

The namespaces are joined by a veth pair with addresses that exist only
inside them; infraetl-ctl runs in infraetl-b and talks to the producer across
the link, as an operator on the consumer's host would. The link is cut
(carrier down, or silent nftables drops) mid-run for longer than the re-send
timeout and the heartbeat timeout, then restored: the run still completes,
with exactly the figures of a fault-free run of the same users.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import figures_without_times
from nettools import ADDR_A, ADDR_B, NS_A, NS_B, TwoHosts, run, two_hosts

from infraetl.localcluster import Daemon, wait_for, write_key_file

pytestmark = pytest.mark.netns

RESEND_AFTER = 2.0
OUTAGE = 9.0  # > RESEND_AFTER and > the ZeroMQ heartbeat timeout (6 s): connections really break


class Pipeline:
    """A consumer in infraetl-b and a producer in infraetl-a, as plain processes."""

    def __init__(self, hosts: TwoHosts, root: Path) -> None:
        self.hosts = hosts
        self.root = root
        key_file = write_key_file(root / "etl-key")
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("INFRAETL_", "ETL_ENCRYPTION_KEY", "NOTIFY_SOCKET", "WATCHDOG_"))}
        self.env.update(ETL_ENCRYPTION_KEY_FILE=str(key_file), PYTHONUNBUFFERED="1")
        py = sys.executable
        self.consumer = Daemon("consumer", root / "consumer", hosts.cmd(NS_B, [
            py, "-m", "infraetl.consumer", "--state-dir", str(root / "consumer"),
            "--data-bind", f"tcp://{ADDR_B}:5555", "--ack-bind", f"tcp://{ADDR_B}:5556",
            "--http-bind", f"{ADDR_B}:8000"]), self.env, root / "consumer.log")
        self.producer = Daemon("producer", root / "producer", hosts.cmd(NS_A, [
            py, "-m", "infraetl.producer", "--state-dir", str(root / "producer"),
            "--data-connect", f"tcp://{ADDR_B}:5555", "--ack-connect", f"tcp://{ADDR_B}:5556",
            "--control-bind", f"tcp://{ADDR_A}:5557", "--resend-after", str(RESEND_AFTER)]),
            self.env, root / "producer.log")
        self.url = f"http://{ADDR_B}:8000/"

    def start(self) -> Pipeline:
        self.consumer.start()
        self.producer.start()
        return self

    def stop(self) -> None:
        self.producer.stop()
        self.consumer.stop()

    def ctl(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """infraetl-ctl on the consumer's host (infraetl-b), steering the producer across the link."""
        return run(self.hosts.cmd(NS_B, [sys.executable, "-m", "infraetl.ctl", "--producer",
                                         f"tcp://{ADDR_A}:5557", *args]), timeout=timeout, env=self.env)

    def stats(self) -> dict:
        return self.hosts.http_json(NS_B, self.url + "api/stats.json")

    def applied_batches(self) -> float:
        code = ("import sys, urllib.request\n"
                "for line in urllib.request.urlopen(sys.argv[1], timeout=10).read().decode().splitlines():\n"
                "    if line.startswith('infraetl_batches_applied_total '): print(line.split()[-1])")
        out = run(self.hosts.cmd(NS_B, [sys.executable, "-c", code, self.url + "metrics"])).stdout.strip()
        return float(out or 0)

    def logs(self) -> str:
        return f"--- producer\n{self.producer.log()[-4000:]}\n--- consumer\n{self.consumer.log()[-4000:]}"


@pytest.fixture
def hosts() -> Iterator[TwoHosts]:
    with two_hosts() as h:
        yield h


@pytest.fixture
def pipeline(hosts: TwoHosts, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(hosts, tmp_path)
    try:
        yield p.start()
    finally:
        p.stop()


def test_the_link_exists_only_inside_the_namespaces(hosts: TwoHosts) -> None:
    assert run(["ip", "link", "show", "ietl-a"], check=False).returncode != 0
    assert run(["ip", "link", "show", "ietl-b"], check=False).returncode != 0
    routes = run(["ip", "-n", NS_A, "route"]).stdout
    assert "default" not in routes and "10.213.47.0/24" in routes
    ping = [sys.executable, "-c", f"import socket; socket.create_connection(('{ADDR_B}', 9), 2)"]
    refused = run(hosts.cmd(NS_A, ping), check=False)
    assert "ConnectionRefused" in refused.stderr  # the peer answers across the link (RST from port 9)


def test_300_users_across_the_link_exact(pipeline: Pipeline) -> None:
    proc = pipeline.ctl("start-run", "--users", "300", "--seed", "netns")
    assert "complete" in proc.stdout, proc.stderr + pipeline.logs()
    last = pipeline.stats()["last_run"]
    assert last["requested"] == 300 and last["delivered"] == 300
    assert last["total_users"] + last["quarantined"] == 300


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["link-down", "nft-drop"])
def test_link_cut_mid_run_longer_than_the_resend_timeout(outage: str, pipeline: Pipeline, hosts: TwoHosts) -> None:
    users, seed = 50000, f"cut-{outage}"  # enough that the cut surely lands mid-run
    run_id = pipeline.ctl("start-run", "--users", str(users), "--seed", seed, "--no-wait").stdout.strip()
    wait_for(lambda: pipeline.applied_batches() >= 3, 60, "the first batches to land")
    if outage == "link-down":
        hosts.link(up=False)
    else:
        hosts.drop(NS_B, [5555, 5556], on=True)
    try:
        time.sleep(OUTAGE)
        # The cut really came mid-run: the consumer has not got everything.
        assert pipeline.applied_batches() < users // 500, "run finished before the outage; test proves nothing"
    finally:
        if outage == "link-down":
            hosts.link(up=True)
        else:
            hosts.drop(NS_B, [5555, 5556], on=False)
    done = pipeline.ctl("wait", run_id, "--timeout", "120")
    assert "complete" in done.stdout, done.stderr + pipeline.logs()
    faulty = figures_without_times(pipeline.stats()["last_run"])
    assert faulty["total_users"] + faulty["quarantined"] == users
    pipeline.ctl("start-run", "--users", str(users), "--seed", seed)
    reference = figures_without_times(pipeline.stats()["last_run"])
    assert faulty == reference
