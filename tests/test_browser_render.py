"""The rendered dashboard in headless Chromium: clean load, numbers, live updates, no-JS, hostile data."""

from __future__ import annotations

import json
import pathlib
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from browser import CHROMIUM, TABLES_JS, Watched, wait_until
from sample_stats import GENERATED_AT, hostile_stats, sample_stats

from infraetl.dashboard.server import DashboardServer

ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "test-artifacts"
LIVE_MS = 2000  # a page left open shows the next run within 2 s of its completion
# Functions, not expression strings: Playwright evals a string, which our CSP (rightly) refuses.
UPDATED_TO = "(t) => Number(document.body.dataset.generatedAt) === t"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not pathlib.Path(CHROMIUM).exists(), reason="needs Debian chromium at /usr/bin/chromium"),
]
playwright_api = pytest.importorskip("playwright.sync_api")

@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[DashboardServer]:
    srv = DashboardServer("127.0.0.1", 0, site_dir=tmp_path, metrics=lambda: (b"", "text/plain"),
                          health=lambda: (200, {"status": "ok"}))
    srv.update(sample_stats(), GENERATED_AT)
    srv.start()
    yield srv
    srv.close()


@pytest.fixture
def watched(browser: Any, server: DashboardServer) -> Iterator[Watched]:
    w = Watched(browser, f"http://127.0.0.1:{server.port}")
    yield w
    w.close()


def api_stats(server: DashboardServer) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/stats.json", timeout=10) as resp:
        return json.load(resp)


def lookup(doc: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        doc = doc.get(part, {}) if isinstance(doc, dict) else {}
    return doc


def check_table(name: str, table: dict[str, Any], source: Any) -> None:
    """The figure's rows against the JSON it was drawn from."""
    rows = table["rows"]
    assert rows, name
    if isinstance(source, list):  # top passwords, reuse, masks: [{password|mask, count}]
        by_key = {str(r.get("password", r.get("mask", r.get("value")))): r["count"] for r in source}
        for key, cells in rows.items():
            assert float(cells[1] if table["svg"] else cells[-1]) == by_key[key], (name, key)
        return
    for key, cells in rows.items():
        want = source.get(key, 0)
        if isinstance(want, dict):  # weak share by nationality, from the counts
            assert float(cells[-1]) == pytest.approx(100 * want["weak"] / want["users"]), (name, key)
            assert float(cells[-1]) == pytest.approx(want["percent_weak"], abs=0.05), (name, key)  # rounded there
        else:
            assert float(cells[1]) == want, (name, key)
    shown = {k for k, v in rows.items() if float(v[1] if not isinstance(source.get(k), dict) else v[-1])}
    biggest = sorted(source, key=lambda k: -(source[k]["weak"] / source[k]["users"] if isinstance(source[k], dict)
                                             else source[k]))[:len(shown)]
    assert shown == set(biggest), name


def test_page_loads_clean_and_every_chart_matches_the_json(watched: Watched, server: DashboardServer) -> None:
    page = watched.open("/")
    tables = page.evaluate(TABLES_JS)
    stats = api_stats(server)
    charts = {"gender", "age_decades", "countries", "complexity", "password_length", "registration_years",
              "timezones", "strength", "entropy", "personal_info", "weak_by_nationality", "quarantine", "warnings",
              "first_names", "cities"}
    for view, figures in (("last", stats["last_run"]), ("all", stats["cumulative"])):
        present = {name.split("/", 1)[1] for name in tables if name.startswith(view + "/")}
        assert charts | {"top_passwords", "reuse", "masks"} <= present
        for chart in charts:
            table = tables[f"{view}/{chart}"]
            assert table["svg"] and table["titles"] == len(table["rows"]), chart
            check_table(f"{view}/{chart}", table, lookup(figures, table["key"]))
        for chart in ("top_passwords", "reuse", "masks"):
            table = tables[f"{view}/{chart}"]
            check_table(f"{view}/{chart}", table, lookup(figures, table["key"]))
    users = page.locator('#last [data-card="total_users"] .card-value').inner_text()
    assert users == f"{stats['last_run']['total_users']:,}"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    watched.assert_clean()


def test_switch_between_last_run_and_all_runs(watched: Watched) -> None:
    page = watched.open("/")
    assert page.locator("#last").is_visible() and not page.locator("#all").is_visible()
    page.click('.tab[data-view="all"]')
    assert page.locator("#all").is_visible() and not page.locator("#last").is_visible()
    page.click('.tab[data-view="last"]')
    assert page.locator("#last").is_visible()
    watched.assert_clean()


def test_switch_works_without_javascript(browser: Any, server: DashboardServer) -> None:
    w = Watched(browser, f"http://127.0.0.1:{server.port}", java_script_enabled=False)
    try:
        page = w.open("/")
        assert page.locator("#last").is_visible() and not page.locator("#all").is_visible()
        assert page.locator('#last [data-chart="gender"] svg').is_visible()
        page.click('.tab[data-view="all"]')
        assert page.locator("#all").is_visible() and not page.locator("#last").is_visible()
        w.assert_clean()
    finally:
        w.close()


def next_run(generated_at: float) -> dict[str, Any]:
    stats = sample_stats()
    run = {**stats["runs"][0], "run_id": "live-run-42", "started_at": generated_at - 5,
           "finished_at": generated_at - 1, "duration_s": 4.0, "delivered": 777, "requested": 777}
    stats["runs"].append(run)
    stats["last_run"].update(run_id="live-run-42", total_users=777, requested=777)
    return stats


def test_next_run_appears_without_a_reload(watched: Watched, server: DashboardServer) -> None:
    page = watched.open("/")
    page.wait_for_function("() => document.documentElement.classList.contains('js')")
    wait_until(lambda: server.subscribers >= 1)  # the page's EventSource is connected
    page.evaluate("() => { window.__sameDocument = true; }")
    # The consumer's payloads (consumer.py): progress every 10 batches, run-complete after the render.
    server.publish("progress", {"run_id": "live-run-42", "applied_batches": 3, "users": 300, "requested": 777})
    page.wait_for_function("() => document.getElementById('progress').textContent.includes('300')",
                           timeout=LIVE_MS)
    later = GENERATED_AT + 60
    server.update(next_run(later), later)
    server.publish("run-complete", {"generated_at": later, "run_id": "live-run-42"})
    page.wait_for_function(UPDATED_TO, arg=later, timeout=LIVE_MS)
    assert page.evaluate("() => window.__sameDocument") is True  # swapped in place, not reloaded
    assert page.locator('#runs tr[data-run="live-run-42"]').count() == 1
    assert page.locator('#last [data-card="total_users"] .card-value').inner_text() == "777"
    watched.assert_clean()


def test_polling_takes_over_when_the_event_stream_is_gone(watched: Watched, server: DashboardServer) -> None:
    watched.page.route("**/events", lambda route: route.abort())
    page = watched.open("/")
    page.wait_for_function("() => document.documentElement.classList.contains('js')")
    later = GENERATED_AT + 120
    server.update(next_run(later), later)  # no event: only polling can notice
    page.wait_for_function(UPDATED_TO, arg=later, timeout=LIVE_MS + 1000)
    assert page.locator('#runs tr[data-run="live-run-42"]').count() == 1
    watched.errors = [e for e in watched.errors if "events" not in e and "ERR_FAILED" not in e]
    watched.assert_clean()


def test_hostile_data_stays_text(watched: Watched, server: DashboardServer) -> None:
    server.update(hostile_stats(), GENERATED_AT)
    page = watched.open("/")
    page.click('.tab[data-view="all"]')
    for details in page.locator("details").all():
        details.evaluate("d => d.open = true")
    assert page.evaluate("() => window.__pwned") is None
    assert page.evaluate("() => document.querySelectorAll('img, iframe, object, embed').length") == 0
    assert page.evaluate("() => [...document.querySelectorAll('*')].filter(e => [...e.attributes]"
                         ".some(a => a.name.startsWith('on'))).length") == 0
    assert page.evaluate("() => document.querySelectorAll('script').length") == 1
    text = page.locator("body").inner_text()
    assert "<script>window.__pwned=1</script>" in text and "{{7*7}}" in text
    assert "\u202e" not in text
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-hostile.png"), full_page=True)
    watched.assert_clean()
