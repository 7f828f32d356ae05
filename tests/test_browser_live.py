"""The open page's live updates in headless Chromium, against the real daemons: what it keeps
across an update, how it recovers from a failed fetch or a consumer that went away, and what
it costs the server while hidden or cut off."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from browser import CHROMIUM, Watched, wait_until
from helpers import ctl, metric

from infraetl.localcluster import LocalCluster

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not pathlib.Path(CHROMIUM).exists(), reason=f"needs Debian chromium at {CHROMIUM}"),
]

LIVE_S = 5.0
SHOWS = """(run) => document.querySelector(`#runs tr[data-run="${run}"]`) !== null"""
HIDE = """() => { Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
                  document.dispatchEvent(new Event('visibilitychange')); }"""
SHOW = """() => { Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
                  document.dispatchEvent(new Event('visibilitychange')); }"""


def start(cluster: LocalCluster, users: int, seed: str) -> str:
    return ctl(cluster, "start-run", "--users", str(users), "--seed", seed, "--no-wait").stdout.strip()


def test_an_open_numbers_table_and_the_focus_on_it_survive_a_live_update(watched: Watched,
                                                                         cluster: LocalCluster) -> None:
    ctl(cluster, "start-run", "--users", "50", "--seed", "keep-a")
    page = watched.open_live()
    page.locator('#last [data-chart="gender"] summary').click()  # opens it, and takes the focus
    run_id = start(cluster, 70, "keep-b")
    ctl(cluster, "wait", run_id)
    page.wait_for_function(SHOWS, arg=run_id, timeout=LIVE_S * 1000)
    kept = page.evaluate("""() => ({
        open: [...document.querySelectorAll('details[open]')].map(d => d.closest('[data-chart]').dataset.chart),
        focus: document.activeElement.closest('[data-chart]')?.dataset.chart })""")
    assert kept == {"open": ["gender"], "focus": "gender"}
    watched.assert_clean()


def test_a_failed_sections_fetch_is_retried_until_it_lands(watched: Watched, cluster: LocalCluster) -> None:
    """A failed fetch after a run was dropped: with the stream up, the page stayed a run behind."""
    page = watched.open_live()
    failures = [2]

    def flaky(route: Any) -> None:
        if failures[0] > 0:
            failures[0] -= 1
            route.abort()
        else:
            route.continue_()

    page.route("**/api/sections.json", flaky)
    run_id = start(cluster, 40, "flaky")
    ctl(cluster, "wait", run_id)
    page.wait_for_function(SHOWS, arg=run_id, timeout=15_000)
    assert failures == [0]


def test_a_cancelled_run_is_named_cancelled_on_the_open_page(watched: Watched, cluster: LocalCluster) -> None:
    """The page said the previous run was "complete" when a run was cancelled (then "failed")."""
    page = watched.open_live()
    run_id = start(cluster, 2_000_000, "to-cancel")
    wait_until(lambda: metric(cluster, "infraetl_batches_applied_total") >= 2, 60)
    ctl(cluster, "cancel", run_id)
    page.wait_for_function("(run) => document.getElementById('progress').textContent === `Run ${run} cancelled.`",
                           arg=run_id, timeout=30_000)


def test_a_hidden_page_asks_nothing_and_catches_up_when_shown(watched: Watched, cluster: LocalCluster) -> None:
    """A browser allows six connections to a host: six tabs, each holding its stream, left none for
    the fetch after a run (no tab updated) or for a seventh tab (it never loaded)."""
    page = watched.open_live()
    page.evaluate(HIDE)
    asked = len(watched.requests)
    run_id = start(cluster, 40, "hidden")
    ctl(cluster, "wait", run_id)
    page.wait_for_timeout(1500)  # not a synchronisation: the span in which a hidden page must ask nothing
    assert watched.requests[asked:] == []
    page.evaluate(SHOW)
    page.wait_for_function(SHOWS, arg=run_id, timeout=LIVE_S * 1000)


def test_a_page_backs_off_while_the_consumer_is_down_and_comes_back(watched: Watched,
                                                                   cluster: LocalCluster) -> None:
    """With the consumer down, each page asked twice a second (its stream's retry and a poll), in step
    with every other page; now both back off, with jitter."""
    page = watched.open_live()
    cluster.consumer.stop()
    asked = len(watched.requests)
    # Not a synchronisation: the span over which the requests are counted (and the browser's events
    # are delivered to the test only while it waits in Playwright, not in time.sleep).
    page.wait_for_timeout(12_000)
    during = watched.requests[asked:]
    assert 2 <= len(during) <= 12, during  # was 24 (2 a second)
    cluster.restart_consumer()
    run_id = start(cluster, 30, "back")
    ctl(cluster, "wait", run_id)
    page.wait_for_function(SHOWS, arg=run_id, timeout=60_000)


def test_a_page_shown_again_learns_how_the_run_it_missed_ended(watched: Watched, cluster: LocalCluster) -> None:
    """Hidden, a page holds no stream and missed the run's end: it kept saying "in progress"."""
    page = watched.open_live()
    run_id = start(cluster, 30_000, "missed-end")
    page.wait_for_function("() => document.getElementById('progress').textContent.includes('in progress')",
                           timeout=30_000)
    page.evaluate(HIDE)
    ctl(cluster, "wait", run_id)
    page.evaluate(SHOW)
    page.wait_for_function("(run) => document.getElementById('progress').textContent === `Run ${run} complete.`",
                           arg=run_id, timeout=LIVE_S * 1000)


def test_a_failing_sections_fetch_is_retried_by_one_backing_off_loop(watched: Watched,
                                                                     cluster: LocalCluster) -> None:
    """Each poll that saw a new run started another retry loop of its own, never ending: the
    requests kept climbing for as long as the fetch failed."""
    page = watched.page
    page.route("**/events", lambda route: route.abort())
    page.route("**/api/sections.json", lambda route: route.fulfill(status=503, body="busy"))
    watched.open("/")
    run_id = start(cluster, 30, "busy")
    ctl(cluster, "wait", run_id)
    page.wait_for_timeout(3000)  # not a synchronisation: the first poll sees the run and starts retrying
    asked = len(watched.requests)
    page.wait_for_timeout(20_000)  # not a synchronisation: the span over which the retries are counted
    retries = [u for u in watched.requests[asked:] if u.endswith("/api/sections.json")]
    assert len(retries) <= 6, len(retries)  # one loop backing off: ~4 in 20 s; it climbed past 50
