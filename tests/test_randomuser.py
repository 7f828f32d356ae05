"""The RandomUser HTTP client against a real local API server with deterministic faults."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from apiserver import HOSTILE, ApiServer, Faults, strict_check

from infraetl.exceptions import ConfigError, SourceError
from infraetl.sources import Batch, RunPlan, accept_all
from infraetl.sources.randomuser import RandomUserSource, _retry_after, page_sizes

#: A faulty run may spend at most this many requests per page it minimally needs.
REQUEST_FACTOR = 3
NULL_ID_NATS = ("IR", "NZ", "TR", "UA")


def fast_source(url: str, **options: Any) -> RandomUserSource:
    """A client with test-sized back-off and timeouts."""
    defaults: dict[str, Any] = {"backoff_base": 0.01, "backoff_cap": 0.05, "timeout": 2.0}
    return RandomUserSource(api_url=url, **{**defaults, **options})


def run(source: RandomUserSource, check: Any = accept_all, **plan: Any) -> list[Batch]:
    return list(source.batches(RunPlan(**plan), check))


def users_of(batches: list[Batch]) -> list[dict[str, Any]]:
    return [u for b in batches for u in b.users]


def uuids(batches: list[Batch]) -> list[list[str]]:
    return [[u["login"]["uuid"] for u in b.users] for b in batches]


def quarantine_of(batches: list[Batch]) -> Counter[str]:
    total: Counter[str] = Counter()
    for b in batches:
        total.update(b.quarantine)
    return total


@pytest.fixture
def server() -> Iterator[ApiServer]:
    with ApiServer() as srv:
        yield srv


def test_every_fault_on_still_delivers_exactly() -> None:
    """3000 users through every fault at realistic rates: exact, honest and frugal."""
    with ApiServer(Faults.realistic()) as srv:
        # Pages of 100 make 30 requests at least, enough for the fault rates to bite.
        source = fast_source(srv.url, page_size=100, concurrency=4)
        batches = run(source, strict_check, users=3000, nat=("GB", "FR", "IR"), seed="faulty", batch_size=500)
    users = users_of(batches)
    assert [len(b.users) for b in batches] == [500] * 6
    assert len({u["login"]["uuid"] for u in users}) == 3000
    assert {u["nat"] for u in users} == {"GB", "FR", "IR"}
    # Faults of several kinds happened, and every kind of bad record was counted by reason.
    assert len(srv.faults_sent) >= 3, srv.faults_sent
    dropped = quarantine_of(batches)
    assert {"type:record", "nat_not_requested", "duplicate:login.uuid"} <= set(dropped)
    assert any(reason.startswith(("null:", "missing:", "empty:")) for reason in dropped)
    # Hostile strings are data: delivered unchanged for the consumer to judge.
    assert any(u["name"]["first"] in HOSTILE or u["location"]["city"] in HOSTILE for u in users)
    # Requests stay within a stated factor of the minimum (30 pages of 100).
    minimum = math.ceil(3000 / 100)
    assert srv.requests <= REQUEST_FACTOR * minimum
    assert sum(b.requests for b in batches) == srv.requests


def test_same_seed_same_users_whatever_the_faults() -> None:
    # Request faults differ between the two runs; the data (with its bad records) is the same.
    plan = {"users": 1200, "seed": "repro", "batch_size": 250}
    with ApiServer(Faults.realistic(seed="one", slow=0.0)) as srv:
        first = run(fast_source(srv.url, page_size=300, concurrency=4), strict_check, **plan)
    with ApiServer(Faults.realistic(seed="two", slow=0.0)) as srv:
        second = run(fast_source(srv.url, page_size=300, concurrency=2), strict_check, **plan)
    assert uuids(first) == uuids(second)
    assert [len(b) for b in uuids(first)] == [250, 250, 250, 250, 200]


def test_pages_in_order_whatever_finishes_first() -> None:
    # Page 1's first answer is slow, so later pages finish first; batches still follow page order.
    with ApiServer(Faults(first=("slow",), slow_seconds=0.3)) as srv:
        got = run(fast_source(srv.url, page_size=100, concurrency=4), users=400, seed="order")
    with ApiServer() as srv:
        want = run(fast_source(srv.url, page_size=100, concurrency=1), users=400, seed="order")
    assert uuids(got) == uuids(want)


def test_nat_filter_is_asked_for_and_checked(server: ApiServer) -> None:
    batches = run(fast_source(server.url), users=400, nat=("GB", "FR"), seed="nat")
    assert {u["nat"] for u in users_of(batches)} == {"GB", "FR"}
    assert {q["nat"] for q in server.queries} == {"GB,FR"}


def test_wrong_nationalities_from_the_api_are_quarantined() -> None:
    with ApiServer(Faults(wrong_nat=0.2)) as srv:
        batches = run(fast_source(srv.url), users=300, nat=("DE",), seed="wrong")
    assert {u["nat"] for u in users_of(batches)} == {"DE"}
    assert quarantine_of(batches)["nat_not_requested"] > 30


def test_null_id_nationalities_are_kept(server: ApiServer) -> None:
    batches = run(fast_source(server.url), strict_check, users=400, nat=NULL_ID_NATS, seed="null-id")
    users = users_of(batches)
    assert {u["nat"] for u in users} == {"IR", "NZ", "TR", "UA"}
    assert all(u["id"]["value"] is None for u in users)
    assert quarantine_of(batches) == Counter()
    assert server.requests == 1


def test_page_plan_asks_for_exactly_what_is_needed(server: ApiServer) -> None:
    assert page_sizes(12000, 5000) == [5000, 5000, 2000]
    assert page_sizes(5000, 5000) == [5000]
    run(fast_source(server.url, page_size=700), users=2000, seed="plan")
    asked = sorted((int(q["page"]), int(q["results"])) for q in server.queries)
    assert asked == [(1, 700), (2, 700), (3, 600)]
    assert all(q["seed"] == "plan" and q["exc"] == "picture" for q in server.queries)


def test_top_up_pages_replace_dropped_users() -> None:
    with ApiServer(Faults(nulls=0.1, duplicates=0.05)) as srv:
        batches = run(fast_source(srv.url), strict_check, users=1000, seed="topup", batch_size=300)
    assert [len(b.users) for b in batches] == [300, 300, 300, 100]
    pages = sorted(int(q["page"]) for q in srv.queries)
    assert pages[0] == 1 and pages[1:] == list(range(2, len(pages) + 1)) and len(pages) <= 3
    assert sum(quarantine_of(batches).values()) > 100


def test_connections_are_reused_and_identify_the_client(server: ApiServer) -> None:
    run(fast_source(server.url, page_size=100, concurrency=3), users=1500, seed="reuse")
    assert server.requests == 15
    assert server.connections <= 3
    (agent,) = server.user_agents
    assert agent.startswith("infraetl/")


@pytest.mark.parametrize("fault", ["503", "5xx", "truncated", "error", "empty", "slow", "other_seed"])
def test_each_fault_is_retried(fault: str) -> None:
    # Only "slow" needs a short timeout: a page made for the first time (after a 503, say) took
    # over 0.3 s on a busy machine, and was asked again.
    timeout = 1.0 if fault == "slow" else 30.0
    with ApiServer(Faults(first=(fault,), slow_seconds=3.0)) as srv:
        batches = run(fast_source(srv.url, page_size=100, timeout=timeout), users=300, seed=fault)
    assert srv.requests == 6  # each page failed once, then answered
    # The very users of the seed: a page of another seed (as a stale cache gives) was not taken.
    with ApiServer(Faults()) as srv:
        clean = run(fast_source(srv.url, page_size=100), users=300, seed=fault)
    assert users_of(batches) == users_of(clean)


def test_retry_after_is_honoured_by_every_worker() -> None:
    with ApiServer(Faults(first=("429",), retry_after="1")) as srv:
        started = time.monotonic()
        batches = run(fast_source(srv.url, page_size=100, concurrency=3), users=300, seed="429")
        elapsed = time.monotonic() - started
    assert len(users_of(batches)) == 300 and srv.requests == 6
    assert elapsed >= 1.0


def test_never_recovering_api_fails_within_its_deadline() -> None:
    with ApiServer(Faults(always="503")) as srv:
        started = time.monotonic()
        plan = RunPlan(users=1000, deadline=started + 1.5)
        source = fast_source(srv.url, retry_budget=10_000, page_size=250, backoff_cap=0.2)
        with pytest.raises(SourceError) as err:
            list(source.batches(plan))
        elapsed = time.monotonic() - started
    message = str(err.value)
    assert elapsed < 1.5 + 0.5
    assert "\n" not in message and message.startswith("RandomUser API failed: page ")
    assert "HTTP 503" in message and "deadline reached" in message


def test_retry_budget_ends_the_run_with_its_reason() -> None:
    with ApiServer(Faults(always="truncated")) as srv, pytest.raises(SourceError) as err:
        run(fast_source(srv.url, retry_budget=3), users=50)
    assert str(err.value) == ("RandomUser API failed: page 1: response is not valid JSON (truncated?) "
                              "after 3 retries")
    assert srv.requests == 4


def test_hanging_api_is_cut_off_by_the_deadline() -> None:
    with ApiServer(Faults(always="hang", hang_seconds=30)) as srv:
        started = time.monotonic()
        with pytest.raises(SourceError, match="deadline reached"):
            list(fast_source(srv.url, timeout=30).batches(RunPlan(users=10, deadline=started + 1.0)))
        assert time.monotonic() - started < 1.0 + 0.5


def test_long_retry_after_fails_at_once_rather_than_past_the_deadline() -> None:
    with ApiServer(Faults(always="429", retry_after="3600")) as srv:
        started = time.monotonic()
        with pytest.raises(SourceError, match="HTTP 429"):
            list(fast_source(srv.url).batches(RunPlan(users=10, deadline=started + 60)))
        assert time.monotonic() - started < 1.0


def test_unusable_data_fails_instead_of_fetching_forever(server: ApiServer) -> None:
    def reject_all(users: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter[str]]:
        return [], Counter({"bad:everything": len(users)})

    with pytest.raises(SourceError, match=r"only 0 of 10 users passed the checks .*bad:everything"):
        run(fast_source(server.url), reject_all, users=10)
    assert server.requests < 30


def test_wrong_url_is_not_retried(server: ApiServer) -> None:
    with pytest.raises(SourceError, match=r"HTTP 404 .* \(not retried\)"):
        run(fast_source(server.url.replace("/api/1.4/", "/nope/")), users=10)
    assert server.requests == 1


def test_unknown_nat_code_fails_before_any_request(server: ApiServer) -> None:
    with pytest.raises(ConfigError, match="'ZZ'"):
        run(fast_source(server.url), users=10, nat=("GB", "ZZ"))
    assert server.requests == 0


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    """Wait until ``condition()`` is true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        event.wait(0.01)


def test_cancel_stops_the_run_promptly() -> None:
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def cancel_once_asked() -> None:
        wait_for(lambda: srv.requests >= 1)
        cancelled_at.append(time.monotonic())
        cancel.set()

    with ApiServer(Faults(always="hang")) as srv:
        batches = fast_source(srv.url, timeout=30).batches(RunPlan(users=10, cancelled=cancel.is_set))
        threading.Thread(target=cancel_once_asked, daemon=True).start()
        with pytest.raises(SourceError, match="cancelled"):
            next(batches)
        assert time.monotonic() - cancelled_at[0] < 0.5


def test_invalid_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="page size"):
        RandomUserSource(page_size=5001)
    with pytest.raises(ConfigError, match="http"):
        RandomUserSource(api_url="ftp://example.org/")


@pytest.mark.parametrize("header, seconds", [("7", 7.0), ("0", 0.0), ("soon", None), (None, None),
                                             ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    assert _retry_after(header) == seconds


def test_pages_parse_with_orjson_and_whatever_it_refuses_with_the_standard_parser() -> None:
    from infraetl.sources.replay import parse_json

    assert parse_json(b'{"results": [{"name": "Ada"}]}') == {"results": [{"name": "Ada"}]}
    # Lone surrogates, NaN and UTF-16 are orjson's refusals; the page still parses and the
    # records' checks and the consumer judge those values.
    assert parse_json(b'{"n": "\\ud800"}') == {"n": "\ud800"}
    assert parse_json(b'{"n": NaN}')["n"] != 0
    # An integer beyond 64 bits becomes a float, so its record is quarantined as type:<field>.
    assert type(parse_json(b'{"n": 123456789012345678901234567890}')["n"]) is float
    assert parse_json('{"n": "ä"}'.encode("utf-16")) == {"n": "ä"}
    with pytest.raises(ValueError):
        parse_json(b'{"results": [')


def test_a_page_names_the_seed_asked_for_or_the_apis_longer_form_of_it() -> None:
    from infraetl.sources.randomuser import _same_seed

    assert _same_seed("run-1", "run-1") and not _same_seed("run-1", "run-2")
    # An 18-character seed comes back with its nationality's number after it.
    assert _same_seed("abcdefabcdefabcd05", "abcdefabcdefabcd0505")
    assert not _same_seed("abcdefabcdefabcd05", "abcdefabcdefabcd0605")
    assert not _same_seed("short", "short05") and not _same_seed("run-1", None)
