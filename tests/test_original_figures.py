"""On the same users, every figure the original InfraETL computed equals the original's.

``original_figures`` re-implements the original's definitions independently,
in plain Python over the API's nested users (no numpy, no histograms): mean
age = sum / len, value counts of gender, country, nationality and time-zone
offset, e-mail domain = the part after '@', username and password length
min / max / mean, registration year = the first four characters of
``registered.date``. The pipeline under test is the consumer's:
check → flatten → validate → summarise (in batches, merged) → figures.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import userfactory
from hypothesis import HealthCheck, given, settings

from infraetl import schema
from infraetl.stream_stats import StatsSummary
from infraetl.validate import check_records, validate_columns


def original_figures(users: list[dict[str, Any]]) -> dict[str, Any]:
    """The original's figures, by its own definitions."""
    ages = [u["dob"]["age"] for u in users]
    usernames = [len(u["login"]["username"]) for u in users]
    passwords = [len(u["login"]["password"]) for u in users if u["login"]["password"]]  # as the original

    def value_counts(values: list[Any]) -> dict[Any, int]:
        counts: dict[Any, int] = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        return counts

    return {
        "total_users": len(users),
        "age": {"mean": sum(ages) / len(ages), "min": min(ages), "max": max(ages)},
        "gender": value_counts([u["gender"] for u in users]),
        "countries": value_counts([u["location"]["country"] for u in users]),
        "nationalities": value_counts([u["nat"] for u in users]),
        "email_domains": value_counts([u["email"].split("@")[1] for u in users]),
        "username_length": {"min": min(usernames), "max": max(usernames),
                            "mean": sum(usernames) / len(usernames)},
        "password_length": {"min": min(passwords, default=None), "max": max(passwords, default=None),
                            "mean": sum(passwords) / len(passwords) if passwords else None},
        "registration_years": value_counts([u["registered"]["date"][:4] for u in users]),
        "timezones": value_counts([u["location"]["timezone"]["offset"] for u in users]),
    }


def pipeline_figures(users: list[dict[str, Any]], batch: int = 500) -> tuple[dict[str, Any], int]:
    """Figures as the consumer computes them, and how many users it quarantined."""
    good, rejected = check_records(users)
    total = StatsSummary.empty()
    quarantined = sum(rejected.values())
    for i in range(0, len(good), batch):
        checked = validate_columns(schema.to_columns(good[i:i + batch]))
        quarantined += sum(checked.quarantine.values())
        total = total.merge(StatsSummary.from_columns(checked.cols))
    return total.figures(), quarantined


def assert_same(ours: dict[str, Any], original: dict[str, Any]) -> None:
    assert ours["total_users"] == original["total_users"]
    for key in ("age", "username_length", "password_length"):
        for stat, value in original[key].items():
            assert ours[key][stat] == value, (key, stat)
    for key in ("gender", "countries", "nationalities", "email_domains", "registration_years", "timezones"):
        assert ours[key] == {str(k): v for k, v in original[key].items()}, key


def test_real_api_sample_gives_the_originals_figures() -> None:
    users = userfactory.sample_users()
    ours, quarantined = pipeline_figures(users)
    assert quarantined == 0
    assert_same(ours, original_figures(users))
    assert ours["nationalities"] == {"IR": 1, "NZ": 1, "GB": 1, "DE": 1}
    # Worked by hand from tests/data/randomuser-sample.json.
    age = ours["age"]
    assert (age["mean"], age["min"], age["max"], age["median"]) == (49.5, 31, 64, 51.5)
    assert age["std"] == math.sqrt((18.5**2 + 1.5**2 + 5.5**2 + 14.5**2) / 4)
    assert (age["p10"], age["p90"]) == (pytest.approx(36.1), pytest.approx(61.3))
    assert age["decades"] == {"30s": 1, "40s": 1, "50s": 1, "60s": 1}
    assert ours["password_length"]["mean"] == 6 and ours["password_length"]["short_pct"] == 100
    assert ours["registration_years"] == {"2002": 1, "2009": 1, "2011": 1, "2024": 1}


def test_many_batches_give_the_originals_figures() -> None:
    users = userfactory.sample_users() + userfactory.make_users(2345, seed=11)
    ours, quarantined = pipeline_figures(users, batch=500)
    assert quarantined == 0
    assert_same(ours, original_figures(users))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(userfactory.users_strategy(min_size=1, max_size=60))
def test_random_users_give_the_originals_figures(users: list[dict[str, Any]]) -> None:
    ours, quarantined = pipeline_figures(users, batch=7)
    # The original had no character checks: compare on the users ours kept (usually all).
    kept = users
    if quarantined:
        checked = validate_columns(schema.to_columns(users))
        n = schema.column_length(checked.cols)
        kept = [schema.to_nested(schema.row(checked.cols, i)) for i in range(n)]
        if not kept:
            return
    assert_same(ours, original_figures(kept))
    assert sum(Counter(ours["gender"]).values()) == len(kept)
