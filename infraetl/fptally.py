"""A bounded, mergeable tally: exact counts per key up to a cap, then the top.

Used by the audit for passwords and base words (keyed by fingerprint,
labelled with a mask) and for hashcat masks. Written here rather than
shared with ``stream_stats`` on purpose: the audit needs labels that can be
re-masked on merge and the eviction bookkeeping behind ``users_sharing``.

While a tally holds at most ``cap`` keys every count is exact and merging
is exact (associative and commutative). Past the cap the rarest keys are
evicted down to half of it and ``exact`` turns False for good: frequent keys
keep (nearly) right counts, and an evicted key seen again starts from zero.
``evicted_sharing`` (the users in evicted groups of two or more) keeps the
sharing count a lower bound; ``evicted_keys`` makes the distinct count an
upper bound (a key evicted and seen again is counted in both).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from itertools import compress, repeat
from operator import add, ge, itemgetter
from typing import Any, Generic, TypeVar

from infraetl.pwshape import mask

K = TypeVar("K", bound=Hashable)


def remask(label: str) -> str:
    """Mask a label that may be plaintext; "" (the empty password) stays ""."""
    return mask(label) if label else ""


def _rank(kv: tuple[Any, int]) -> tuple[int, Any]:
    return -kv[1], kv[0]


class Tally(Generic[K]):
    """Counts per key, with an optional display label per key (see module doc)."""

    __slots__ = ("cap", "counts", "evicted_keys", "evicted_sharing", "exact", "labels")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.counts: dict[K, int] = {}
        self.labels: dict[K, str] = {}
        self.exact = True
        self.evicted_keys = 0
        self.evicted_sharing = 0

    def add(self, key: K, n: int, label: str | None = None) -> None:
        """Count ``n`` more of ``key``; the first label given for a key is kept."""
        counts = self.counts
        if key in counts:
            counts[key] += n
        else:
            counts[key] = n
            if label is not None:
                self.labels[key] = label

    def merge(self, other: Tally[K], relabel: bool = False) -> None:
        """Add ``other`` in place; ``relabel`` masks the labels taken from it."""
        counts, theirs = self.counts, other.counts
        if other.labels:
            labels, their_labels = self.labels, other.labels
            # Not ``theirs.keys() - counts.keys()``: a set minus a keys view iterates the
            # whole view, so folding a batch into a run's tally cost O(run), not O(batch).
            for key in [k for k in theirs if k not in counts]:
                label = their_labels.get(key)
                if label is not None:
                    labels[key] = remask(label) if relabel else label
        # C-level: new count = old (or 0) + theirs, for every key of theirs.
        keys = list(theirs)
        counts.update(zip(keys, map(add, map(counts.get, keys, repeat(0)), theirs.values()),
                          strict=True))
        self.exact = self.exact and other.exact
        self.evicted_keys += other.evicted_keys
        self.evicted_sharing += other.evicted_sharing
        self.prune()

    def prune(self) -> None:
        """Past the cap, keep the cap/2 most frequent keys (ties: first counted first)."""
        if len(self.counts) <= self.cap:
            return
        ranked = sorted(self.counts.items(), key=itemgetter(1), reverse=True)
        for key, n in ranked[self.cap // 2:]:
            del self.counts[key]
            self.labels.pop(key, None)
            self.evicted_keys += 1
            if n >= 2:
                self.evicted_sharing += n
        self.exact = False

    def top(self, k: int) -> list[tuple[K, int]]:
        """The ``k`` most frequent (key, count), ties broken by key."""
        if k <= 0 or not self.counts:
            return []
        # The k-th largest count first (ints compared in C), then rank only the keys that reach
        # it: a Python key function over 200,000 keys was ~a fifth of a dashboard render.
        floor = heapq.nlargest(k, self.counts.values())[-1]
        items = self.counts.items()
        near = compress(items, map(ge, self.counts.values(), repeat(floor)))
        return heapq.nsmallest(k, near, key=_rank)

    def remask(self) -> None:
        """Mask every label (when plaintext labels meet masked ones)."""
        self.labels = {k: remask(v) for k, v in self.labels.items()}

    def to_wire(self) -> list[Any]:
        """A msgpack-ready list (see :meth:`from_wire`): parallel key, count, label lists."""
        keys = list(self.counts)
        labels = list(map(self.labels.get, keys)) if self.labels else None
        return [self.exact, self.evicted_keys, self.evicted_sharing, keys,
                list(self.counts.values()), labels]

    @classmethod
    def from_wire(cls, cap: int, wire: list[Any]) -> Tally[Any]:
        """Inverse of :meth:`to_wire`; a tally over ``cap`` is pruned."""
        tally: Tally[Any] = cls(cap)
        exact, evicted_keys, evicted_sharing, keys, counts, labels = wire
        tally.exact = bool(exact)
        tally.evicted_keys, tally.evicted_sharing = int(evicted_keys), int(evicted_sharing)
        if not set(map(type, counts)) <= {int}:
            raise TypeError("tally counts must be integers")
        tally.counts = dict(zip(keys, counts, strict=True))
        if labels is not None:
            tally.labels = (dict(zip(keys, labels, strict=True)) if None not in labels
                            else {k: v for k, v in zip(keys, labels, strict=True) if v is not None})
        tally.prune()
        return tally
