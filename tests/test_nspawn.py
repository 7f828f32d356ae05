"""systemd for real: two booted Debian bookworm containers, one per role, installed with bin/infraetl-install.

Each container runs systemd as its PID 1 under ``systemd-nspawn`` (never on
the host), in one of the two network namespaces of tests/nettools.py: the
producer in infraetl-a, the consumer in infraetl-b. The units run with all
their hardening, so this module also proves that cryptography, numpy and
pyzmq work under it. The tests run in file order on one deployment: install,
run, kill -9 and restart, journal, key rotation, CURVE, nginx, stop, removal.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import pytest
from nettools import ADDR_A, ADDR_B, NS_B, REPO, Container, TwoHosts, require_root, require_tools, two_hosts, wheelhouse

from infraetl import config

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

SRC, WHEELS = "/mnt/infraetl-src", "/mnt/wheelhouse"
INSTALL = f"{SRC}/bin/infraetl-install"
DASHBOARD = f"http://{ADDR_B}:8000/"


class Deployment:
    """The two containers, the key they share and helpers to drive them."""

    def __init__(self, hosts: TwoHosts, consumer: Container, producer: Container, key: str) -> None:
        self.hosts = hosts
        self.consumer = consumer
        self.producer = producer
        self.key = key
        self.secrets: list[str] = [key]

    def install(self, box: Container, role: str, *args: str, key: str | None = None) -> str:
        argv = [INSTALL, role, "--wheelhouse", WHEELS, *args]
        if key is not None:
            argv += ["--key-file", "-"]
        proc = box.exec(argv, input=(key + "\n") if key is not None else None, check=False, timeout=600)
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{self.journal(box, role)}"
        for secret in self.secrets:
            assert secret not in proc.stdout + proc.stderr
        return proc.stdout

    def ctl(self, *args: str, box: Container | None = None, check: bool = True, timeout: float = 180) -> str:
        """infraetl-ctl as the operator runs it on a host (the installed wrapper, the host's key)."""
        proc = (box or self.consumer).exec(["infraetl-ctl", *args], check=False, timeout=timeout)
        if check:
            assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{self.journal(self.producer, 'producer')}"
        return proc.stdout + proc.stderr

    def show(self, box: Container, role: str) -> dict[str, str]:
        out = box.exec(["systemctl", "show", f"infraetl-{role}", "-p",
                        "ActiveState,SubState,MainPID,NRestarts,Result,ExecMainStatus,StatusText"]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, box: Container, role: str) -> str:
        return box.exec(["journalctl", "-u", f"infraetl-{role}", "--no-pager", "-o", "cat"], check=False).stdout

    def stats(self) -> dict:
        return self.hosts.http_json(NS_B, DASHBOARD + "api/stats.json")

    def run_exact(self, users: int, seed: str) -> dict:
        out = self.ctl("start-run", "--users", str(users), "--seed", seed)
        assert "complete" in out and DASHBOARD in out, out
        last = self.stats()["last_run"]
        assert last["requested"] == users and last["delivered"] == users
        assert last["total_users"] + last["quarantined"] == users
        return last


def _boot_and_install(d: Deployment, box: Container, role: str, errors: list[BaseException], *args: str) -> None:
    try:
        box.wait_booted()
        d.install(box, role, *args, key=d.key)
    except BaseException as e:  # reported by the fixture, in the main thread
        errors.append(e)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_root("systemd-nspawn containers")
    require_tools("systemd-nspawn", packages=["systemd-container"])
    require_tools("debootstrap", packages=["debootstrap"])
    wheels = wheelhouse()
    work = tmp_path_factory.mktemp("nspawn")
    binds = [(REPO, SRC), (wheels, WHEELS)]
    with two_hosts() as hosts:
        consumer = Container("etl-consumer", hosts.b, work, binds)
        producer = Container("etl-producer", hosts.a, work, binds)
        d = Deployment(hosts, consumer, producer, config.new_key())
        try:
            consumer.start()
            producer.start()
            errors: list[BaseException] = []
            # Both hosts install at once, as two operators would; the consumer listens on its
            # veth address and infraetl-ctl on its host talks to the producer across the link.
            jobs = [threading.Thread(target=_boot_and_install, args=(d, consumer, "consumer", errors,
                                                                     "--peer", ADDR_A, "--listen", ADDR_B)),
                    threading.Thread(target=_boot_and_install, args=(d, producer, "producer", errors,
                                                                     "--peer", ADDR_B))]
            for job in jobs:
                job.start()
            for job in jobs:
                job.join()
            if errors:
                raise errors[0]
            yield d
        finally:
            producer.request_stop()
            consumer.request_stop()
            producer.stop()
            consumer.stop()


def test_both_units_are_active_and_hardened(deployment: Deployment) -> None:
    d = deployment
    for box, role in ((d.consumer, "consumer"), (d.producer, "producer")):
        assert box.exec(["systemctl", "is-active", f"infraetl-{role}"]).stdout.strip() == "active"
        state = d.show(box, role)
        # Type=notify: "running" only after READY=1; the STATUS= line is what systemctl shows.
        assert state["SubState"] == "running" and state["StatusText"], state
        out = box.exec(["systemd-analyze", "security", "--no-pager", f"infraetl-{role}.service"]).stdout
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
        assert m, out
        score = float(m.group(1))
        print(f"infraetl-{role}.service (loaded, in the container): exposure {score}")
        assert score <= 2.0
        # DynamicUser=: not root; the key arrives as a credential only the service can read.
        uid = box.sh(f"stat -c %u /proc/{state['MainPID']}").stdout.strip()
        assert uid != "0"


def test_300_users_then_kill9_consumer_restarts_and_next_run_is_exact(deployment: Deployment) -> None:
    d = deployment
    first = d.run_exact(300, "nspawn-1")
    # The zxcvbn helper runs inside the hardened unit: a helper the sandbox refused would be
    # logged, and the audit would quietly score in-process instead.
    cmdlines = d.consumer.sh("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done").stdout
    assert "-m infraetl.scorer" in cmdlines, cmdlines
    assert "zxcvbn helper" not in d.journal(d.consumer, "consumer")
    before = d.show(d.consumer, "consumer")
    d.consumer.sh(f"kill -9 {before['MainPID']}")
    deadline = time.monotonic() + 30
    while True:
        now = d.show(d.consumer, "consumer")
        if now["SubState"] == "running" and now["MainPID"] not in ("0", before["MainPID"]):
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
    assert int(now["NRestarts"]) == int(before["NRestarts"]) + 1
    second = d.run_exact(300, "nspawn-2")
    assert second["run_id"] != first["run_id"]
    cumulative = d.stats()["cumulative"]
    assert cumulative["runs"] == 2 and cumulative["total_users"] == first["total_users"] + second["total_users"]
    assert "status=9/KILL" in d.journal(d.consumer, "consumer")


def test_journal_shows_the_runs_and_no_secret(deployment: Deployment) -> None:
    d = deployment
    runs = [r["run_id"] for r in d.stats()["runs"]]
    consumer_log = d.journal(d.consumer, "consumer")
    producer_log = d.journal(d.producer, "producer")
    for run_id in runs:
        assert f"run {run_id} complete" in consumer_log and f"run {run_id} complete" in producer_log
    everything = (d.consumer.exec(["journalctl", "--no-pager", "-o", "cat"]).stdout
                  + d.producer.exec(["journalctl", "--no-pager", "-o", "cat"]).stdout)
    for secret in d.secrets:
        assert secret not in everything
    assert "gAAAAA" not in everything  # no sealed frame either
    # Priorities from the <N> prefixes reach the journal (the prefix itself does not).
    assert "<6>" not in consumer_log
    assert d.consumer.exec(["journalctl", "-u", "infraetl-consumer", "-p", "info", "-o", "cat",
                            "--no-pager"]).stdout.strip()


def test_key_rotation_in_three_restarts(deployment: Deployment) -> None:
    d = deployment
    old, new = d.key, config.new_key()
    d.secrets.append(new)
    boxes = ((d.consumer, "consumer"), (d.producer, "producer"))
    # 1: both hosts open with both keys, still seal with the old one. 2: seal with the new one.
    # 3: drop the old one. The installer restarts a unit whose key changed; nothing is lost.
    for step, keys in enumerate((f"{old}\n{new}", f"{new}\n{old}", new), 1):
        for box, role in boxes:
            out = d.install(box, role, key=keys)
            assert f"restarting infraetl-{role}.service" in out
        d.run_exact(120, f"rotation-{step}")
    # The operator's old key no longer steers anything.
    refused = d.consumer.exec(["env", f"ETL_ENCRYPTION_KEY={old}", "infraetl-ctl", "status"], check=False)
    assert refused.returncode == 1 and "not authorised" in refused.stderr
    d.key = new


def test_curve_between_the_hosts(deployment: Deployment) -> None:
    d = deployment
    c, p = d.consumer, d.producer
    d.install(c, "consumer", "--curve")

    def copy(src: Container, src_path: str, dst: Container, dst_path: str) -> None:
        dst.exec(["sh", "-c", f"cat > {dst_path}"], input=src.exec(["cat", src_path]).stdout)

    # Public keys only cross between the hosts (operators copy them with scp).
    copy(c, "/etc/infraetl/curve/consumer.key", p, "/etc/infraetl/curve-consumer.key")
    p.sh("mkdir -p /etc/infraetl/curve && mv /etc/infraetl/curve-consumer.key /etc/infraetl/curve/consumer.key")
    d.install(p, "producer", "--curve")
    copy(p, "/etc/infraetl/curve/producer.key", c, "/etc/infraetl/curve/producers/etl-producer.key")
    copy(p, "/etc/infraetl/curve/producer.key", c, "/etc/infraetl/curve/producer.key")
    copy(c, "/etc/infraetl/curve/ctl.key", p, "/etc/infraetl/curve/clients/etl-consumer-ctl.key")
    # The producer's first handshake was refused (its key was not listed yet); ZeroMQ does not retry it.
    p.exec(["systemctl", "restart", "infraetl-producer"])
    for box in (c, p):
        d.secrets += re.findall(r'secret-key = "(.{40})"', box.sh("cat /etc/infraetl/curve/*.key_secret").stdout)
    d.run_exact(300, "curve")
    assert "CURVE: 1 public key(s) admitted" in d.journal(c, "consumer")
    # Turn it off again for the tests that follow.
    d.install(c, "consumer", "--no-curve")
    d.install(p, "producer", "--no-curve")
    d.run_exact(10, "curve-off")


def test_nginx_serves_the_static_copy(deployment: Deployment) -> None:
    d = deployment
    # Exactly the recipe of docs/operations.md.
    doc = (REPO / "docs" / "operations.md").read_text()
    dropin = re.search(r"```ini\n(# /etc/systemd/system/nginx.service.d/infraetl.conf\n.*?)```", doc, re.S)
    site = re.search(r"```nginx\n(# /etc/nginx/sites-available/infraetl\n.*?)```", doc, re.S)
    assert dropin and site, "docs/operations.md lost its nginx recipe"
    c = d.consumer
    c.exec(["sh", "-c", "mkdir -p /etc/systemd/system/nginx.service.d && "
                        "cat > /etc/systemd/system/nginx.service.d/infraetl.conf"], input=dropin.group(1))
    c.exec(["sh", "-c", "cat > /etc/nginx/sites-available/infraetl"], input=site.group(1))
    c.sh("rm -f /etc/nginx/sites-enabled/default && ln -sf ../sites-available/infraetl /etc/nginx/sites-enabled/ "
         "&& nginx -t && systemctl daemon-reload && systemctl enable --now nginx && systemctl restart nginx")
    served = d.hosts.http_json(NS_B, f"http://{ADDR_B}/api/stats.json")
    assert served["last_run"]["run_id"] == d.stats()["last_run"]["run_id"]
    page = c.exec(["/opt/infraetl/venv/bin/python", "-c",
                   "import urllib.request; r = urllib.request.urlopen('http://127.0.0.1/'); "
                   "print(r.status, r.headers['Content-Security-Policy'], r.headers['Content-Type'])"]).stdout
    assert page.split(maxsplit=1) == ["200", "default-src 'self' text/html\n"], page
    # A new run shows up in the copy nginx serves, with no restart of nginx.
    last = d.run_exact(50, "nginx")
    assert d.hosts.http_json(NS_B, f"http://{ADDR_B}/api/stats.json")["last_run"]["run_id"] == last["run_id"]


def test_systemctl_stop_is_clean_and_quick(deployment: Deployment) -> None:
    d = deployment
    for box, role in ((d.producer, "producer"), (d.consumer, "consumer")):
        t0 = time.monotonic()
        box.exec(["systemctl", "stop", f"infraetl-{role}"])
        assert time.monotonic() - t0 < 5
        state = d.show(box, role)
        assert state["Result"] == "success" and state["ExecMainStatus"] == "0", state
        box.exec(["systemctl", "start", f"infraetl-{role}"])
    d.run_exact(30, "after-stop")


def test_uninstall_removes_the_service(deployment: Deployment) -> None:
    d = deployment
    p = d.producer
    p.exec([INSTALL, "--uninstall", "producer"])
    state = p.exec(["systemctl", "is-active", "infraetl-producer"], check=False).stdout.strip()
    assert state in ("inactive", "unknown")
    assert p.exec(["test", "-e", "/opt/infraetl"], check=False).returncode == 1
    assert p.exec(["test", "-e", "/etc/infraetl/etl-key"]).returncode == 0  # kept unless --purge
