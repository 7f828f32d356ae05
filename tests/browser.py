"""Shared Playwright helpers for the browser tests: launching Chromium, a watched page, the page's tables."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Each figure's table as {row key: [data-value of each cell]}, keyed "view/chart".
TABLES_JS = """() => {
  const out = {};
  for (const fig of document.querySelectorAll('section.view [data-chart]')) {
    const rows = {};
    for (const tr of fig.querySelectorAll('tr[data-key]')) {
      rows[tr.dataset.key] = [...tr.querySelectorAll('[data-value]')].map(c => c.dataset.value);
    }
    out[fig.closest('section').id + '/' + fig.dataset.chart] = {
      key: fig.dataset.key, rows, svg: !!fig.querySelector('svg[role=img][aria-label]'),
      titles: fig.querySelectorAll('svg title').length, empty: !!fig.querySelector('.empty') };
  }
  return out;
}"""


@contextmanager
def launch() -> Iterator[Any]:
    """Headless Debian Chromium with the flags that keep it off the network; closed on exit."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail the test at the deadline instead of hanging."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.01)


class Watched:
    """A page that records console errors, page errors, dialogs and every request URL."""

    def __init__(self, browser: Any, base: str, **context: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 900}, **context)
        self.page = self.context.new_page()
        self.base = base.rstrip("/")
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)  # an alert() means injected script ran
        dialog.dismiss()

    def open(self, path: str = "/") -> Any:
        self.page.goto(self.base + path, wait_until="load")
        return self.page

    def open_live(self) -> Any:
        """Open the page and wait until its script holds the /events stream open."""
        with self.page.expect_response(self.base + "/events", timeout=5000) as events:
            page = self.open("/")
        assert events.value.status == 200
        return page

    def assert_clean(self) -> None:
        """No console or page error, no dialog, and every request went to this server on 127.0.0.1."""
        assert self.errors == []
        assert self.dialogs == []
        assert self.requests, "the page made no request at all"
        assert [u for u in self.requests if urlsplit(u).hostname != "127.0.0.1"] == []
        assert [u for u in self.requests if not u.startswith(self.base + "/")] == []

    def close(self) -> None:
        self.context.close()
