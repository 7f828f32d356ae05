"""bin/infraetl-install into a directory tree (``--root DIR``): layout, key handling, idempotence, removal.

The installation is real (a venv built from this tree's wheel and its
dependencies' wheels, offline from a wheelhouse); only systemctl is limited to
``systemctl --root``. tests/test_nspawn.py runs the same installer on booted
Debian systems.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nettools import REPO, run, wheelhouse

from infraetl import config

INSTALL = REPO / "bin" / "infraetl-install"


def python() -> str:
    """Debian's python3 when it can make venvs (as on a real host), else this interpreter."""
    system = Path("/usr/bin/python3")
    if system.exists() and subprocess.run([str(system), "-c", "import ensurepip, venv"],
                                          capture_output=True).returncode == 0:
        return str(system)
    import sys

    return sys.executable


def install(root: Path, *args: str, key: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the installer into ``root``; ``key`` goes to standard input."""
    argv = [str(INSTALL), *args, "--root", str(root), "--wheelhouse", str(wheelhouse()), "--python", python()]
    if key is not None:
        argv += ["--key-file", "-"]
    proc = subprocess.run(argv, input=key + "\n" if key is not None else "", capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"infraetl-install exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def fleet_key() -> str:
    return config.new_key()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory,
              fleet_key: str) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """One consumer installed from scratch; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("root")
    proc = install(root, "consumer", "--peer", "10.0.0.1", key=fleet_key)
    yield root, proc


@pytest.fixture
def copy(installed: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> Path:
    """A copy of the installed tree to change (hard links: cheap, and replaced files do not leak back)."""
    dest = tmp_path / "root"
    run(["cp", "-al", str(installed[0]), str(dest)])
    return dest


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every path outside the venv's insides, with its mode and content hash (or link target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith("opt/infraetl/releases/") and rel.count("/") > 3:
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("-> " + os.readlink(path), 0)
        elif stat.S_ISREG(st.st_mode):
            out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode))
        else:
            out[rel] = ("dir", stat.S_IMODE(st.st_mode))
    return out


def env_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def test_install_lays_out_a_host(installed: tuple[Path, subprocess.CompletedProcess[str]], fleet_key: str) -> None:
    root, proc = installed
    unit = root / "etc/systemd/system/infraetl-consumer.service"
    assert unit.read_bytes() == (REPO / "systemd/infraetl-consumer.service").read_bytes()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    if shutil.which("systemctl"):
        wants = root / "etc/systemd/system/multi-user.target.wants/infraetl-consumer.service"
        assert os.readlink(wants) == "/etc/systemd/system/infraetl-consumer.service"
    key = root / "etc/infraetl/etl-key"
    assert key.read_text().strip() == fleet_key and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert env_lines(root / "etc/infraetl/consumer.env") == [
        "INFRAETL_DATA_BIND=tcp://*:5555", "INFRAETL_ACK_BIND=tcp://*:5556", "INFRAETL_HTTP_BIND=0.0.0.0:8000"]
    # The peer's address: infraetl-ctl on the consumer's host talks to the producer there.
    assert env_lines(root / "etc/infraetl/ctl.env") == ["INFRAETL_PRODUCER=tcp://10.0.0.1:5557"]
    version = config_version()
    assert os.readlink(root / "opt/infraetl/venv") == f"releases/{version}"
    venv = root / "opt/infraetl/venv/bin"
    for exe in ("infraetl-consumer", "infraetl-producer", "infraetl-ctl"):
        assert run([str(venv / exe), "--help"]).stdout.startswith("Usage:")
    assert os.access(root / "usr/local/bin/infraetl-ctl", os.X_OK)
    assert (root / "opt/infraetl/docs/operations.md").exists()
    assert fleet_key not in proc.stdout + proc.stderr


def config_version() -> str:
    for line in (REPO / "setup.cfg").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip()
    raise AssertionError("no version in setup.cfg")


def test_reinstall_changes_nothing_and_keeps_operator_edits(copy: Path) -> None:
    before = snapshot(copy)
    again = install(copy, "consumer")  # no key, no peer: everything is kept
    assert "nothing changed" in again.stdout and snapshot(copy) == before
    env = copy / "etc/infraetl/consumer.env"
    env.write_text(env.read_text() + "INFRAETL_LOG_LEVEL=DEBUG\n")
    changed = install(copy, "consumer", "--listen", "10.0.0.2")
    assert "/etc/infraetl/consumer.env" in changed.stdout
    assert env_lines(env) == ["INFRAETL_DATA_BIND=tcp://10.0.0.2:5555", "INFRAETL_ACK_BIND=tcp://10.0.0.2:5556",
                              "INFRAETL_HTTP_BIND=10.0.0.2:8000", "INFRAETL_LOG_LEVEL=DEBUG",
                              "INFRAETL_PUBLIC_URL=http://10.0.0.2:8000/"]


def test_second_role_on_the_same_host_shares_the_venv_and_key(copy: Path, fleet_key: str) -> None:
    proc = install(copy, "producer", "--peer", "fd00::2", "--set", "RESEND_AFTER=2")
    assert env_lines(copy / "etc/infraetl/producer.env") == [
        "INFRAETL_CONTROL_BIND=tcp://*:5557", "INFRAETL_DATA_CONNECT=tcp://[fd00::2]:5555",
        "INFRAETL_ACK_CONNECT=tcp://[fd00::2]:5556", "INFRAETL_RESEND_AFTER=2"]
    assert (copy / "etc/infraetl/etl-key").read_text().strip() == fleet_key
    assert "releases" not in proc.stdout  # no second venv
    assert (copy / "etc/systemd/system/infraetl-producer.service").exists()


def test_key_from_a_file_replaces_the_key_with_mode_0600(copy: Path, tmp_path: Path) -> None:
    new = config.new_key()
    source = tmp_path / "new-key"
    source.write_text(f"{new}\n")
    source.chmod(0o644)
    proc = install(copy, "consumer", "--key-file", str(source))
    key = copy / "etc/infraetl/etl-key"
    assert key.read_text().strip() == new and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert new not in proc.stdout + proc.stderr


@pytest.mark.parametrize("bad", ["not-a-key", "A" * 44, config.new_key()[:-2]])
def test_a_malformed_key_is_refused_without_echoing_it(copy: Path, bad: str, fleet_key: str) -> None:
    proc = install(copy, "consumer", key=bad, check=False)
    assert proc.returncode == 1
    assert "not a Fernet key" in proc.stderr and bad not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert (copy / "etc/infraetl/etl-key").read_text().strip() == fleet_key


def test_curve_on_and_off(copy: Path) -> None:
    install(copy, "consumer", "--curve")
    curve = copy / "etc/infraetl/curve"
    for name in ("consumer", "ctl"):
        assert stat.S_IMODE((curve / f"{name}.key_secret").stat().st_mode) == 0o600
        assert "secret-key" not in (curve / f"{name}.key").read_text()
    assert (curve / "producers").is_dir()
    dropin = copy / "etc/systemd/system/infraetl-consumer.service.d/curve.conf"
    text = dropin.read_text()
    assert "LoadCredential=curve-secret:/etc/infraetl/curve/consumer.key_secret" in text
    assert "INFRAETL_CURVE_SECRET=%d/curve-secret" in text
    assert "INFRAETL_CURVE_ALLOW=/etc/infraetl/curve/producers" in text
    assert "INFRAETL_CURVE_SECRET=/etc/infraetl/curve/ctl.key_secret" in (copy / "etc/infraetl/ctl.env").read_text()
    secret = (curve / "consumer.key_secret").read_bytes()
    assert "nothing changed" in install(copy, "consumer", "--curve").stdout  # keys are never regenerated
    assert (curve / "consumer.key_secret").read_bytes() == secret
    install(copy, "consumer", "--no-curve")
    assert not dropin.exists() and (curve / "consumer.key_secret").exists()
    assert "CURVE" not in (copy / "etc/infraetl/ctl.env").read_text()


def test_uninstall_keeps_config_and_purge_removes_it(copy: Path) -> None:
    install(copy, "producer", "--peer", "10.0.0.2")
    run([str(INSTALL), "--uninstall", "producer", "--root", str(copy)])
    assert not (copy / "etc/systemd/system/infraetl-producer.service").exists()
    assert not (copy / "etc/systemd/system/multi-user.target.wants/infraetl-producer.service").exists()
    assert (copy / "opt/infraetl/venv/bin/infraetl-consumer").exists()  # the consumer still needs it
    run([str(INSTALL), "--uninstall", "consumer", "--root", str(copy)])
    assert not (copy / "opt/infraetl").exists() and not (copy / "usr/local/bin/infraetl-ctl").exists()
    assert (copy / "etc/infraetl/etl-key").exists() and (copy / "etc/infraetl/consumer.env").exists()
    (copy / "var/lib/private/infraetl-consumer").mkdir(parents=True)
    run([str(INSTALL), "--uninstall", "consumer", "--purge", "--root", str(copy)])
    assert not (copy / "etc/infraetl").exists() and not (copy / "var/lib/private/infraetl-consumer").exists()


def test_purging_one_role_removes_its_curve_secret_and_keeps_the_others(copy: Path) -> None:
    install(copy, "consumer", "--curve")
    install(copy, "producer", "--curve", "--peer", "10.0.0.2")
    curve = copy / "etc/infraetl/curve"
    assert (curve / "producer.key_secret").exists() and (curve / "consumer.key_secret").exists()
    run([str(INSTALL), "--uninstall", "producer", "--purge", "--root", str(copy)])
    assert not (curve / "producer.key_secret").exists() and not (curve / "producer.key").exists()
    assert (curve / "consumer.key_secret").exists() and (copy / "etc/infraetl/etl-key").exists()


@pytest.mark.parametrize("args, message", [
    ([], "name the role"),
    (["consumer", "--bogus"], "unknown argument"),
    (["consumer", "--purge"], "--purge goes with --uninstall"),
    (["consumer", "--set", "lower=1"], "NAME=VALUE"),
    (["consumer", "--peer", "a;b"], "host name or address"),
])
def test_usage_errors_exit_2_with_one_clear_line(args: list[str], message: str, tmp_path: Path) -> None:
    proc = subprocess.run([str(INSTALL), *args, "--root", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("option, needs", [("--peer", "a HOST"), ("--key-file", "a FILE or -"),
                                           ("--set", "NAME=VALUE"), ("--root", "a DIR")])
def test_an_option_missing_its_value_is_a_usage_error(option: str, needs: str, tmp_path: Path) -> None:
    # Was bash's own "line 69: 2: --peer needs a HOST", exit 1.
    args = [] if option == "--root" else ["--root", str(tmp_path)]
    proc = subprocess.run([str(INSTALL), "consumer", *args, option], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"{option} needs {needs}" in proc.stderr and "line " not in proc.stderr


def test_producer_needs_the_consumers_address(tmp_path: Path) -> None:
    proc = subprocess.run([str(INSTALL), "producer", "--root", str(tmp_path), "--wheelhouse", str(wheelhouse())],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--peer CONSUMER_HOST" in proc.stderr
    assert not (tmp_path / "opt").exists()


def test_a_host_without_a_key_is_told_how_to_get_one(copy: Path) -> None:
    (copy / "etc/infraetl/etl-key").unlink()
    proc = install(copy, "consumer", check=False)
    assert proc.returncode == 1 and "--key-file" in proc.stderr and "--generate-key" in proc.stderr
    proc = install(copy, "consumer", "--generate-key")
    config.parse_keys((copy / "etc/infraetl/etl-key").read_text(), "test")
    assert (copy / "etc/infraetl/etl-key").read_text().strip() not in proc.stdout


def test_installed_units_pass_systemd_analyze_verify(installed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    if os.geteuid() != 0 or not shutil.which("systemd-analyze"):
        pytest.skip("needs root and systemd-analyze (tests/test_units.py checks the units without them)")
    root = installed[0]
    unit = root / "etc/systemd/system/infraetl-consumer.service"
    # The installed venv at its real path, in a private mount namespace only.
    script = (f"mount --bind {root}/opt /opt && "
              f"exec systemd-analyze verify --man=no {unit}")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
