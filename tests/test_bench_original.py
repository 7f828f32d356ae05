"""The benchmark's peer does the original's whole work and gets the original's figures.

A peer that skipped work would make our speed-up look larger than it is, so
its figures are held to an independent count (``original_figures``) on the
users it must keep, and its files are read back.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import userfactory
from cryptography.fernet import Fernet
from test_original_figures import original_figures

from infraetl import entropy
from infraetl.bench_original import api_pages, lean_pipeline, original_pipeline


def _latin1_only(u: Any) -> bool:
    if isinstance(u, dict):
        return all(map(_latin1_only, u.values()))
    return not isinstance(u, str) or all(ord(c) < 256 for c in u)


@pytest.fixture(scope="module")
def users() -> dict[str, list[dict[str, Any]]]:
    """Users the original keeps (Latin text, and the real API sample: Persian without
    ZWNJ, null ``id.value``), and the ones it sets aside."""
    keep = [u for u in userfactory.make_users(400, seed=7) if _latin1_only(u)]
    keep += userfactory.sample_users()
    # Personal information in a few passwords.
    keep[3]["login"]["password"] = keep[3]["name"]["first"] + "!"
    keep[4]["login"]["password"] = "x" + keep[4]["login"]["username"].upper()
    keep[5]["login"]["password"] = "Qz" + keep[5]["dob"]["date"][:4]
    markup = copy.deepcopy(keep[0])
    markup["location"]["city"] = "<script>alert(1)</script>"  # not "strange" to the original
    keep.append(markup)
    zwnj = copy.deepcopy(keep[1])
    zwnj["name"]["last"] = "پور\u200cمحمدی"  # its validator flags the joiner
    empty = copy.deepcopy(keep[2])
    empty["login"]["password"] = ""  # its null check drops a blank value
    return {"keep": keep, "all": keep[:200] + [zwnj, empty] + keep[200:]}


@pytest.fixture(scope="module")
def run(users: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("peer")
    stats, seconds = original_pipeline(api_pages(users["all"], size=100), Fernet.generate_key(), out)
    return stats, seconds, out


def test_the_original_run_keeps_and_sets_aside_the_users_the_original_did(run: Any, users: Any) -> None:
    stats, seconds, _ = run
    assert stats["total_users"] == len(users["keep"])
    assert stats["flagged_users"] == 1
    assert set(seconds) == {"extract", "transform", "audit", "load"}
    assert all(v > 0 for v in seconds.values())


def test_the_original_runs_statistics_equal_an_independent_count(run: Any, users: Any) -> None:
    stats, _, _ = run
    ref = original_figures(users["keep"])
    assert stats["average_age"] == round(ref["age"]["mean"], 2)
    assert (stats["minimum_age"], stats["maximum_age"]) == (ref["age"]["min"], ref["age"]["max"])
    assert stats["gender_distribution"] == ref["gender"]
    assert stats["users_per_country"] == ref["countries"]
    assert stats["nationality_distribution"] == ref["nationalities"]
    assert stats["email_domain_distribution"] == ref["email_domains"]
    assert stats["registration_by_year"] == dict(sorted(ref["registration_years"].items()))
    assert stats["timezone_distribution"] == dict(Counter(ref["timezones"]).most_common(10))
    lengths = stats["username_length_stats"]
    assert (lengths["min"], lengths["max"], lengths["average"]) == (
        ref["username_length"]["min"], ref["username_length"]["max"], round(ref["username_length"]["mean"], 2))
    assert (stats["password_length_stats"]["min"], stats["password_length_stats"]["max"]) == (
        ref["password_length"]["min"], ref["password_length"]["max"])


def test_the_original_runs_audit_equals_our_definitions(run: Any, users: Any) -> None:
    stats, _, _ = run
    passwords = [u["login"]["password"] for u in users["keep"]]
    assert stats["password_complexity_stats"] == dict(Counter(map(entropy.complexity, passwords)))
    assert stats["password_strength"]["strong"] == sum(map(entropy.is_strong, passwords))
    assert stats["password_pattern_stats"] == [
        {"password": p, "count": c} for p, c in Counter(passwords).most_common(10)]

    def has(u: dict[str, Any], part: str) -> bool:
        return bool(part) and part.lower() in u["login"]["password"].lower()

    names = sum(has(u, u["name"]["first"]) or has(u, u["name"]["last"]) for u in users["keep"])
    usernames = sum(has(u, u["login"]["username"]) for u in users["keep"])
    years = sum(u["dob"]["date"][:4] in u["login"]["password"] for u in users["keep"])
    assert names and usernames and years
    assert stats["name_in_password"]["count"] == names
    assert stats["username_in_password"]["count"] == usernames
    assert stats["birthyear_in_password"]["count"] == years
    impersonal = [u["login"]["password"] for u in users["keep"]
                  if not (has(u, u["name"]["first"]) or has(u, u["name"]["last"])
                          or has(u, u["login"]["username"]) or u["dob"]["date"][:4] in u["login"]["password"])]
    assert entropy.secure_score(stats["most_secure_password"]) == max(map(entropy.secure_score, impersonal))


def test_the_original_run_writes_its_users_statistics_and_dashboard(run: Any, users: Any) -> None:
    stats, _, out = run
    assert len(json.loads((out / "processed_users.json").read_text())) == len(users["keep"])
    assert json.loads((out / "statistics.json").read_text())["total_users"] == stats["total_users"]
    page = (out / "dashboard.html").read_text()
    assert f"{stats['total_users']} users" in page and "genderChart" in page
    # The original pasted strings into its HTML unescaped; so does its peer.
    assert stats["most_secure_password"] in page


def test_the_lean_variant_counts_every_user_with_the_same_figures(users: Any) -> None:
    key = Fernet.generate_key()
    keep = users["keep"]
    figures = lean_pipeline(Fernet(key).encrypt(json.dumps(keep).encode()), key)
    ref = original_figures(keep)
    assert figures["total_users"] == ref["total_users"]
    assert figures["age"] == ref["age"]
    for k in ("gender", "countries", "nationalities", "email_domains", "registration_years", "timezones"):
        assert figures[k] == ref[k], k


def test_a_peer_page_is_the_apis_response_shape(users: Any, tmp_path: Path) -> None:
    pages = api_pages(users["keep"], size=50)
    assert len(pages) == -(-len(users["keep"]) // 50)
    first = json.loads(pages[0])
    assert first["results"] == users["keep"][:50] and first["info"]["page"] == 1
