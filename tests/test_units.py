"""The systemd units: `systemd-analyze verify` passes and `security` rates each 2.0 or lower."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from nettools import REPO, require_tools

ROLES = ("producer", "consumer")
MAX_EXPOSURE = 2.0


@pytest.fixture(scope="module", autouse=True)
def systemd_analyze() -> None:
    """The tool comes with Debian's systemd package; install it if missing (as root)."""
    require_tools("systemd-analyze", packages=["systemd"])


def unit_path(role: str) -> Path:
    return REPO / "systemd" / f"infraetl-{role}.service"


def settings(role: str) -> dict[str, list[str]]:
    """The [Service] and [Unit] settings of a unit file (repeated keys keep every value)."""
    out: dict[str, list[str]] = {}
    for line in unit_path(role).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("role", ROLES)
def test_systemd_analyze_verify(role: str, tmp_path: Path) -> None:
    # verify checks that ExecStart= exists; the venv is not installed on the test host, so a
    # stand-in is mounted over /opt in a private mount namespace (the host's /opt is untouched).
    exe = f"/opt/infraetl/venv/bin/infraetl-{role}"
    script = (f"mount -t tmpfs tmpfs /opt && mkdir -p {os.path.dirname(exe)} && "
              f"printf '#!/bin/sh\\n' > {exe} && chmod 755 {exe} && "
              f"exec systemd-analyze verify --man=no {unit_path(role)}")
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.insert(1, "--map-root-user")
    proc = subprocess.run([*unshare, "sh", "-c", script], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and "unshare failed" in proc.stderr and os.geteuid() != 0:
        pytest.skip(f"cannot make a private mount namespace without root: {proc.stderr.strip()}")
    # Any message, even a warning that verify exits 0 on, is a defect in the unit.
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", (
        proc.stdout + proc.stderr)


@pytest.mark.parametrize("role", ROLES)
def test_systemd_analyze_security_exposure(role: str) -> None:
    # v252's --threshold is on the 0-100 scale: 20 is "2.0".
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                           f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit_path(role))],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    print(f"infraetl-{role}.service exposure {m.group(1)}")
    assert float(m.group(1)) <= MAX_EXPOSURE, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("role", ROLES)
def test_unit_has_the_supervision_contract(role: str) -> None:
    s = settings(role)
    expect = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "Restart": ["on-failure"],
        "LoadCredential": ["etl-key:/etc/infraetl/etl-key"],
        "StateDirectory": [f"infraetl-{role}"],
        "DynamicUser": ["yes"],
        "EnvironmentFile": [f"-/etc/infraetl/{role}.env"],
        "ExecStart": [f"/opt/infraetl/venv/bin/infraetl-{role}"],
        "MemoryDenyWriteExecute": ["yes"],
        "WantedBy": ["multi-user.target"],
    }
    for key, value in expect.items():
        assert s.get(key) == value, (key, s.get(key))
    assert 0 < int(s["WatchdogSec"][0]) <= 60
    # SIGTERM is the stop signal (the default) and systemd waits long enough for a clean exit.
    assert "KillSignal" not in s and int(s["TimeoutStopSec"][0]) >= 5
    # A reload could not refresh the LoadCredential= copy of the key (v252): restart is the way.
    assert "ExecReload" not in s


def test_units_differ_only_where_the_roles_do() -> None:
    def normalised(role: str) -> list[str]:
        keep = []
        for key, values in settings(role).items():
            if key in ("Description", "ExecStart", "EnvironmentFile", "StateDirectory",
                       "SyslogIdentifier", "UMask"):
                continue
            keep += [f"{key}={v}" for v in values]
        return keep

    assert normalised("producer") == normalised("consumer")
    assert settings("producer")["UMask"] == ["0077"]


def test_no_unit_puts_the_key_on_a_command_line_or_in_the_environment() -> None:
    for role in ROLES:
        text = unit_path(role).read_text()
        assert "ETL_ENCRYPTION_KEY" not in text
        assert not re.search(r"[A-Za-z0-9_-]{43}=", text)

