"""The RandomUser source through the real daemons, against our RandomUser-compatible server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apiserver import ApiServer, Faults
from helpers import ctl, get_json

from infraetl.localcluster import LocalCluster, wait_for


@pytest.fixture
def api_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[LocalCluster, ApiServer]]:
    faults = getattr(request, "param", None) or Faults()
    with ApiServer(faults) as srv:
        c = LocalCluster(tmp_path / "cluster",
                         producer_args=["--resend-after", "1", "--api-url", srv.url]).start()
        try:
            yield c, srv
        finally:
            c.stop()


@pytest.mark.parametrize("api_cluster", [Faults.realistic()], indirect=True)
def test_3000_users_exact_through_every_fault(api_cluster: tuple[LocalCluster, ApiServer]) -> None:
    cluster, srv = api_cluster
    proc = ctl(cluster, "start-run", "--users", "3000", "--source", "randomuser", "--seed", "faulty",
               "--deadline", "120")
    assert "complete" in proc.stdout
    last = get_json(cluster.url + "api/stats.json")["last_run"]
    # The producer sent exactly 3000 checked users; the consumer quarantined the bidi overrides
    # among the hostile strings (the other hostile strings are data, kept and escaped).
    bidi = sum(n for reason, n in last["quarantine"].items() if reason.startswith("bidi:"))
    assert last["received"] == 3000
    assert last["delivered"] == last["total_users"] == 3000 - bidi
    # Exactly 3000 users left the producer; the bad records it met are counted by reason.
    status = ctl(cluster, "status", "--json").stdout
    assert '"produced": 3000' in status
    producer_side = {r for r in last["quarantine"] if r.startswith(("missing:", "empty:", "null:", "type:",
                                                                    "duplicate:", "nat_not"))}
    assert producer_side, last["quarantine"]
    # 3000 users need one page of 3000 (the API allows 5000); faults and top-ups cost a few more.
    assert srv.requests <= 3 * 2 + 10, srv.requests


@pytest.mark.parametrize("api_cluster", [Faults(always="503")], indirect=True)
def test_api_that_never_recovers_fails_within_deadline(api_cluster: tuple[LocalCluster, ApiServer]) -> None:
    cluster, _ = api_cluster
    t = time.monotonic()
    proc = ctl(cluster, "start-run", "--users", "300", "--source", "randomuser", "--deadline", "4",
               check=False)
    assert time.monotonic() - t < 30
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "failed" in lines[0] and "503" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    # The answer is the producer's; the consumer learns of the failure from the run's ABORT,
    # which may still be on its way (a CI run read the dashboard first).
    stats = wait_for(lambda: (s := get_json(cluster.url + "api/stats.json"))["runs"] and s, 30,
                     "the consumer records the failed run")
    assert stats["last_run"] is None and stats["cumulative"]["total_users"] == 0
    assert stats["runs"][0]["state"] == "failed" and "503" in stats["runs"][0]["reason"]


@pytest.mark.parametrize("api_cluster", [Faults()], indirect=True)
def test_nat_filter_and_null_id_nationalities_kept(api_cluster: tuple[LocalCluster, ApiServer]) -> None:
    cluster, _ = api_cluster
    ctl(cluster, "start-run", "--users", "400", "--source", "randomuser", "--nat", "IR,NZ,TR,UA", "--seed", "n")
    last = get_json(cluster.url + "api/stats.json")["last_run"]
    assert last["total_users"] == 400
    assert set(last["nationalities"]) == {"IR", "NZ", "TR", "UA"}
    ctl(cluster, "start-run", "--users", "200", "--source", "randomuser", "--nat", "GB,FR", "--seed", "n")
    assert set(get_json(cluster.url + "api/stats.json")["last_run"]["nationalities"]) == {"GB", "FR"}
