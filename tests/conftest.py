"""Shared fixtures: a clean environment, keys, and real daemons on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infraetl import config, wire
from infraetl.localcluster import LocalCluster, write_key_file

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test never depends on the developer's INFRAETL_* or key variables."""
    for name in list(os.environ):
        if name.startswith(("INFRAETL_", "ETL_ENCRYPTION_KEY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET",
                            "WATCHDOG_")):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def key() -> str:
    """A fresh Fernet key (text)."""
    return config.new_key()


@pytest.fixture
def key_file(tmp_path: Path, key: str) -> Path:
    """A 0600 file holding ``key``."""
    return write_key_file(tmp_path / "etl-key", key)


@pytest.fixture
def sealer(key: str) -> wire.Sealer:
    """A Sealer for ``key`` with a one-hour window."""
    return wire.Sealer((key.encode(),), ttl=3600, max_size=16 << 20)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A running consumer + producer; their logs are printed if the test fails."""
    c = LocalCluster(tmp_path / "cluster", producer_args=["--resend-after", "1"]).start()
    yield c
    c.stop()


@pytest.fixture
def artifacts() -> Path:
    """Directory for screenshots and other test artefacts."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the daemons' logs to a failing test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        c = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
        if isinstance(c, LocalCluster):
            report.sections.append(("consumer log", c.consumer.log()[-5000:]))
            if c.producer is not None:
                report.sections.append(("producer log", c.producer.log()[-5000:]))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for a module's browser tests (skips where playwright is missing)."""
    import browser as browser_helpers

    with browser_helpers.launch() as b:
        yield b


@pytest.fixture
def watched(browser: Any, cluster: LocalCluster) -> Iterator[Any]:
    """A watched page on the cluster's dashboard."""
    from browser import Watched

    w = Watched(browser, cluster.url)
    yield w
    w.close()
