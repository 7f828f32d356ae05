"""Sources of users: one iterator-of-batches interface for every origin.

``open_source(spec, ...)`` picks the implementation from the run's
``--source``: ``randomuser`` (the HTTP API), ``synthetic`` (offline,
seeded) or ``file:PATH`` (replay of a JSON / JSON Lines file).

A source must be *deterministic for a given plan*: the producer resumes an
interrupted run after a restart by iterating the same plan again and
skipping the batches it had already spooled, so batch k must hold the same
users both times.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

User = dict[str, Any]
#: A record check: takes API users, returns (good users, rejections by reason). A checker
#: with a true ``rows`` attribute (``validate.check_rows``, the producer's) returns the good
#: users as rows in column order instead, and a third list: each one's index in the input.
Checker = Callable[[list[User]], Any]


def accept_all(users: list[User]) -> tuple[list[User], Counter[str]]:
    """The trivial checker: every user is good."""
    return users, Counter()


@dataclass(frozen=True)
class RunPlan:
    """What a run asks a source for."""

    users: int                          # exactly this many good users in all
    nat: tuple[str, ...] = ()           # empty = every nationality
    seed: str = "infraetl"              # same seed, same users
    batch_size: int = 500               # good users per batch (the last may be short)
    deadline: float | None = None       # the ``clock`` reading after which the run fails
    cancelled: Callable[[], bool] = lambda: False
    #: The deadline's clock: ``time.monotonic`` by default; the producer's stops while its run
    #: waits for the consumer (the deadline is the source's, not the consumer's: a review).
    clock: Callable[[], float] = time.monotonic


@dataclass
class Batch:
    """Up to ``plan.batch_size`` good users and what was dropped making them.

    The users are API-shaped dicts, or rows in column order if the run's checker makes rows.
    """

    users: list[User]
    quarantine: Counter[str] = field(default_factory=Counter)
    requests: int = 0                   # HTTP requests spent on this batch (API source)


class Source(Protocol):
    """Anything that turns a plan into batches."""

    name: str

    def batches(self, plan: RunPlan, check: Checker = accept_all) -> Iterator[Batch]:
        """Yield batches until ``plan.users`` good users were delivered.

        Raises ``SourceError`` with a one-line reason when it cannot.
        """
        ...


def open_source(spec: str, *, api_url: str | None = None, **options: Any) -> Source:
    """Return the source named by ``spec`` (randomuser | synthetic | file:PATH)."""
    from ..exceptions import ConfigError

    if spec == "synthetic":
        from .synthetic import SyntheticSource

        return SyntheticSource(**options)
    if spec == "randomuser":
        from .randomuser import RandomUserSource

        return RandomUserSource(api_url=api_url, **options) if api_url else RandomUserSource(**options)
    if spec.startswith("file:"):
        from .replay import ReplaySource

        return ReplaySource(spec[len("file:"):], **options)
    raise ConfigError(f"unknown source {spec!r}: use randomuser, synthetic or file:PATH")
