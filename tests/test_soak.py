"""The CI-sized soak: 100,000 users through both daemons, exact, with bounded consumer memory."""

from __future__ import annotations

import pytest

from infraetl.soak import format_timeline, run_soak


@pytest.mark.slow
def test_soak_100k_exact_and_bounded() -> None:
    result = run_soak(100_000, interval=0.5)
    print(format_timeline(result))
    assert result.state == "complete"
    assert result.applied == 100_000 and result.total_users == 100_000
    d = result.as_dict()
    # Bounded state: memory after 100k users is close to memory after the first 10k.
    assert d["consumer_rss_mb"]["after_10k"] is not None
    assert d["consumer_rss_mb"]["end"] - d["consumer_rss_mb"]["after_10k"] < 50
