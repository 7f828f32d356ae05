"""Helpers for the tests that need root: network namespaces, a wheelhouse, nspawn containers.

Two "hosts" on one machine are the network namespaces ``infraetl-a`` and
``infraetl-b`` joined by a veth pair whose ends are created directly inside
them, with addresses from 10.213.47.0/24 that exist nowhere else: nothing
is routed to or from the host's own network.

The Debian root file system for ``systemd-nspawn`` and the dependency wheels
are cached between runs in ``/var/cache/infraetl-test`` (outside the
repository), keyed by a hash of what went into them. Every namespace, mount
and container a test creates is removed by the fixture that created it, also
when the test fails.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
NS_A, NS_B = "infraetl-a", "infraetl-b"
VETH_A, VETH_B = "ietl-a", "ietl-b"
ADDR_A, ADDR_B = "10.213.47.1", "10.213.47.2"
SUITE = "bookworm"
ROOTFS_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "nginx")
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cache_dir() -> Path:
    """Where built things survive between runs (never inside the repository)."""
    if os.geteuid() == 0:
        path = Path("/var/cache/infraetl-test")
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infraetl-test"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Serialise builders of one cache entry (two test runs at once must not collide)."""
    with open(cache_dir() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 120, input: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; on failure raise with the output in the message."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input,
                          env=env, stdin=None if input is not None else subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
    return proc


# --- capabilities -----------------------------------------------------------

def require_root(what: str) -> None:
    """Skip (with the reason printed) unless we are root: the only reason to skip."""
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (run the suite as root, as CI does)")


def require_tools(*tools: str, packages: Sequence[str] = ()) -> None:
    """Make sure the commands exist: install the Debian packages as root, else skip."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get") and packages:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if run(["apt-get", "install", "-y", "-qq", *packages], timeout=600, env=env, check=False).returncode:
            run(["apt-get", "update", "-qq"], timeout=600, env=env)  # empty or stale package lists
            run(["apt-get", "install", "-y", "-qq", *packages], timeout=600, env=env)
        missing = [t for t in tools if shutil.which(t) is None]
        if missing:
            raise AssertionError(f"installed {' '.join(packages)} but {' '.join(missing)} is still missing")
        return
    pytest.skip(f"{' '.join(missing)} not installed and cannot install {' '.join(packages)} (not root)")


# --- wheelhouse -------------------------------------------------------------

def _source_copy(dest: Path) -> Path:
    """The files a wheel is built from, copied (a build must not litter the repository)."""
    for name in ("setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "infraetl", dest / "infraetl",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@functools.cache
def wheelhouse() -> Path:
    """A directory with this tree's infraetl wheel and every dependency's wheel.

    Dependencies are cached by a hash of the packaging metadata; the infraetl
    wheel is rebuilt once per test session from the current code.
    """
    meta = b"".join((REPO / n).read_bytes() for n in ("setup.cfg", "pyproject.toml"))
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    deps = cache_dir() / f"wheels-{tag}-{hashlib.sha256(meta).hexdigest()[:12]}"
    work = Path(tempfile.mkdtemp(prefix="infraetl-wheels-"))
    atexit.register(shutil.rmtree, work, True)
    src = _source_copy(Path(tempfile.mkdtemp(prefix="src-", dir=work)))
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
    with _locked(deps.name):
        for old in cache_dir().glob("wheels-*"):
            # Wheels for metadata that changed more than a day ago: nobody needs them now.
            if old.is_dir() and old != deps and time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
        if not deps.is_dir():
            tmp = deps.with_name(deps.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            run([*pip, str(src), "-w", str(tmp)], timeout=900)
            for whl in tmp.glob("infraetl-*.whl"):
                whl.unlink()
            tmp.rename(deps)
    out = work / "wheelhouse"
    out.mkdir()
    for whl in deps.glob("*.whl"):
        os.link(whl, out / whl.name)
    run([*pip, "--no-deps", str(src), "-w", str(out)], timeout=600)
    shutil.rmtree(src)
    return out


# --- network namespaces -----------------------------------------------------

class TwoHosts:
    """``infraetl-a`` (ADDR_A) and ``infraetl-b`` (ADDR_B) joined by one veth pair."""

    a, b = NS_A, NS_B
    addr = {NS_A: ADDR_A, NS_B: ADDR_B}
    veth = {NS_A: VETH_A, NS_B: VETH_B}

    def create(self) -> TwoHosts:
        for ns in (NS_A, NS_B):
            if Path(f"/run/netns/{ns}").exists():
                pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
                if pids:
                    raise AssertionError(f"network namespace {ns} exists with processes {pids} in it "
                                         "(left by an earlier run?); stop them first")
                run(["ip", "netns", "del", ns])
            run(["ip", "netns", "add", ns])
        # Both ends are born inside the namespaces: the host's network never sees them.
        run(["ip", "link", "add", VETH_A, "netns", NS_A, "type", "veth", "peer", "name", VETH_B, "netns", NS_B])
        for ns in (NS_A, NS_B):
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{self.addr[ns]}/24", "dev", self.veth[ns]])
            run(["ip", "-n", ns, "link", "set", self.veth[ns], "up"])
        return self

    def destroy(self) -> None:
        for ns in (NS_A, NS_B):
            if Path(f"/run/netns/{ns}").exists():
                run(["ip", "netns", "del", ns], check=False)

    def link(self, up: bool) -> None:
        """Take the link between the hosts down or bring it back (both ends)."""
        for ns in (NS_A, NS_B):
            run(["ip", "-n", ns, "link", "set", self.veth[ns], "up" if up else "down"])

    def drop(self, ns: str, ports: Sequence[int], on: bool) -> None:
        """Silently drop (nftables) TCP to ``ports`` in ``ns``: no RST, no carrier change."""
        if on:
            rules = (f"table inet infraetl_test {{\n chain input {{\n  type filter hook input priority 0;\n"
                     f"  tcp dport {{ {', '.join(map(str, ports))} }} drop\n }}\n}}\n")
            run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules)
        else:
            run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "infraetl_test"])

    def cmd(self, ns: str, argv: Sequence[str]) -> list[str]:
        """``argv`` to run inside ``ns`` (nsenter execs: the pid stays the command's)."""
        return ["nsenter", f"--net=/run/netns/{ns}", "--", *argv]

    def http_json(self, ns: str, url: str, timeout: float = 20) -> Any:
        """GET ``url`` from inside ``ns`` and decode its JSON."""
        code = ("import sys, urllib.request; "
                "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")
        proc = run(self.cmd(ns, [sys.executable, "-c", code, url]), timeout=timeout)
        return json.loads(proc.stdout)


@contextlib.contextmanager
def two_hosts() -> Iterator[TwoHosts]:
    """Create the two namespaces; remove them afterwards whatever happened."""
    require_root("network namespaces")
    require_tools("ip", "nsenter", packages=["iproute2", "util-linux"])
    hosts = TwoHosts()
    try:
        yield hosts.create()
    finally:
        hosts.destroy()


# --- a Debian root file system and nspawn containers ------------------------

def _mirror() -> str:
    """The Debian mirror this machine's apt already uses."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            texts.append(path.read_text())
    text = "\n".join(texts)
    for block in re.split(r"\n\s*\n", text):  # deb822 .sources
        uris = re.search(r"^URIs:\s*(\S+)", block, re.M)
        suites = re.search(r"^Suites:\s*(.+)$", block, re.M)
        if uris and suites and SUITE in suites.group(1).split() and "/debian" in uris.group(1):
            return uris.group(1)
    m = re.search(rf"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian/?)\s+{SUITE}\s", text, re.M)
    return m.group(1) if m else "http://deb.debian.org/debian"


@functools.cache
def rootfs() -> Path:
    """A cached bookworm tree (debootstrap minbase + systemd + python3) for the containers."""
    require_tools("debootstrap", packages=["debootstrap"])
    recipe = json.dumps({"suite": SUITE, "variant": "minbase", "packages": ROOTFS_PACKAGES, "v": 1})
    final = cache_dir() / f"rootfs-{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    with _locked(final.name):
        if (final / "usr/bin/python3").exists():
            return final
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}"]
        keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
        if keyring.exists():
            cmd.append(f"--keyring={keyring}")
        run([*cmd, SUITE, str(tmp), _mirror()], timeout=1800)
        # Each container gets its own host name and machine id; nginx only where a test wants it.
        (tmp / "etc/hostname").unlink(missing_ok=True)
        (tmp / "etc/machine-id").write_text("")
        run(["systemctl", f"--root={tmp}", "disable", "nginx.service"], check=False)
        for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                     "dpkg-db-backup.timer", "console-getty.service"):
            run(["systemctl", f"--root={tmp}", "mask", unit], check=False)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (tmp / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        tmp.rename(final)
    return final


class Container:
    """A booted Debian in ``systemd-nspawn`` on an overlay of :func:`rootfs`, in a given netns."""

    def __init__(self, name: str, netns: str, workdir: Path, binds: Sequence[tuple[Path, str]] = ()) -> None:
        self.name = name
        self.netns = netns
        self.dir = workdir / name
        self.merged = self.dir / "root"
        self.binds = list(binds)
        self.log_path = self.dir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid = 0
        self._mounted = False

    def start(self) -> Container:
        """Mount the overlay and boot; returns before boot is complete (see :meth:`wait_booted`)."""
        base = rootfs()
        for sub in ("upper", "work", "root"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={base},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}", str(self.merged)])
        self._mounted = True
        cmd = ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit", "--settings=no",
               "--link-journal=no", f"--directory={self.merged}", f"--machine={self.name}",
               f"--network-namespace-path=/run/netns/{self.netns}"]
        cmd += [f"--bind-ro={src}:{dst}" for src, dst in self.binds]
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def _find_init(self) -> int:
        assert self.proc is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                # nspawn's helper children come and go; the container's PID 1 is systemd itself.
                if ppid == self.proc.pid and (entry / "comm").read_text().strip() == "systemd":
                    return int(entry.name)
        return 0

    def wait_booted(self, timeout: float = 90) -> Container:
        """Wait until systemd in the container reports running (or degraded)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not self.init_pid:
            if self.proc.poll() is not None:
                raise AssertionError(f"nspawn {self.name} exited {self.proc.returncode}:\n{self.console()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no init in container {self.name}:\n{self.console()}")
            self.init_pid = self._find_init()
            time.sleep(0.05)
        state = ""
        while state not in ("running", "degraded"):
            # "offline" until systemd listens on its private socket; --wait covers the rest of boot.
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                failed = self.sh("systemctl --failed --no-legend", check=False).stdout
                raise AssertionError(f"container {self.name} is {state!r}; failed units: {failed}\n"
                                     f"{self.console()}")
            state = self.sh("systemctl is-system-running --wait", check=False, timeout=left).stdout.strip()
            if state in ("offline", ""):
                time.sleep(0.2)
        return self

    def exec(self, argv: Sequence[str], *, check: bool = True, timeout: float = 120,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container (its namespaces, a clean environment)."""
        assert self.init_pid, "container not booted"
        return run(["nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p", "--",
                    "/usr/bin/env", "-i", f"PATH={CLEAN_PATH}", "HOME=/root", "LANG=C.UTF-8", "TERM=dumb",
                    *argv], check=check, timeout=timeout, input=input)

    def sh(self, script: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a shell snippet inside the container."""
        return self.exec(["/bin/sh", "-c", script], **kw)

    def console(self) -> str:
        """What the container printed on its console (the tail)."""
        try:
            return self.log_path.read_text("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def request_stop(self) -> None:
        """Ask for an orderly poweroff (SIGTERM to nspawn) without waiting for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Shut the container down (SIGTERM to nspawn = orderly poweroff), then unmount."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._mounted:
            if run(["umount", str(self.merged)], check=False).returncode != 0:
                run(["umount", "--lazy", str(self.merged)], check=False)
            self._mounted = False
        if not os.path.ismount(self.merged):
            shutil.rmtree(self.dir, ignore_errors=True)
