"""Streaming statistics of users: a mergeable partial aggregate, and its figures.

The consumer builds a :class:`StatsSummary` per batch (``from_columns``),
stores it, and merges the partials of a run (and of all runs) when the run
ends. The contract is ``merge(summary(A), summary(B)) == summary(A + B)``:

* **exact**, for every figure but the two top-k lists: integer histograms
  (ages, lengths, years), exact integer moments, categorical counts and
  HyperLogLog registers all merge without loss, so the *figures* of merged
  partials are bit for bit those of the whole;
* ``top_first_names`` and ``top_cities`` are exact while a summary has seen at most
  :data:`TOP_K` distinct names (cities); past that, **within a stated bound** (Misra-Gries,
  see :class:`~infraetl.sketches.TopK`): each entry's ``count`` is then a lower bound and
  ``max_count`` an upper one, and the dashboard says so;
* ``distinct`` figures are estimates (±1.6 % standard error) but their
  merge is exact, so they do not depend on how a run was batched.

Memory and the serialised size are bounded whatever the number of users:
no per-user data; histograms are bounded by their domain (ages 0–150,
lengths, years), categorical counts by theirs (capped, see
:class:`~infraetl.sketches.Categorical`), sketches by construction. A
500-user partial is a few KiB of msgpack.

Statistic conventions: ``std`` is the population standard deviation
(ddof = 0, numpy's default); ``median``, ``p10`` and ``p90`` are numpy's
default ("linear") percentiles, reproduced exactly from the histogram.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from operator import itemgetter
from typing import Any

import msgpack
import numpy as np

from .schema import Columns, column_length, split_filtered
from .sketches import Categorical, HashMemo, HyperLogLog, IntHistogram, Moments, TopK, hash64

WIRE_VERSION = 1
#: Counters per top-k sketch. First names and cities are thinly spread (a 500-user batch holds
#: ~440 distinct first names), so a small sketch undercounts every entry by hundreds: exact up to
#: this many distinct values (the API's lists hold a few thousand), error <= users / (k + 1) past it.
TOP_K = 8192
TOP_SHOWN = 10         # entries per top-k list in the figures
SHORT_PASSWORD = 8     # a password shorter than this is "short" (short_pct)

_HISTOGRAMS = ("age", "account_age", "age_at_registration", "registration_years",
               "username_length", "password_length")
_CATEGORIES = ("gender", "countries", "nationalities", "email_domains", "timezones")
_DISTINCT = ("users", "usernames", "cities")
_TOPS = ("first_names", "cities")
_EMPTY_MAP: Mapping[str, int] = {}

# Domains seen in recent batches: counting "@domain\n" in the joined column
# is one C pass per domain instead of a Python-level split of every address.
_recent_domains: list[str] = []
# Cities recur across batches: hash each once per process.
_city_hashes = HashMemo()


_year_of = itemgetter(slice(0, 4))
_DIGIT_WEIGHTS = np.array([1000, 100, 10, 1], dtype=np.int64)


def _ints(col: list[Any]) -> np.ndarray:
    return np.fromiter(col, dtype=np.int64, count=len(col))


def _years(dates: list[str]) -> IntHistogram:
    """Histogram of the years (first four characters) of validated ISO dates."""
    joined = "".join(dates)
    # The API's form, every one of them (dates of other lengths that add up to 24 apiece would
    # shift the rows after them): read the digits in place.
    if joined.isascii() and set(map(len, dates)) == {24}:
        digits = np.frombuffer(joined.encode("ascii"), dtype=np.uint8).reshape(-1, 24)[:, :4]
        return IntHistogram.from_array((digits.astype(np.int64) - 48) @ _DIGIT_WEIGHTS)
    return IntHistogram({int(k): v for k, v in Counter(map(_year_of, dates)).items()})


def _email_domains(emails: list[str]) -> Counter[str]:
    """{domain: count}, the domain being what follows the '@' (as the original split it)."""
    n = len(emails)
    joined = "\n".join(emails) + "\n"
    if joined.count("@") == n and joined.count("\n") == n:  # one '@' per address: "@domain\n" is unambiguous
        found: Counter[str] = Counter()
        total = 0
        for d in _recent_domains:
            c = joined.count(f"@{d}\n")
            if c:
                found[d] = c
                total += c
        if total == n:
            return found
    counts = Counter([e.partition("@")[2] for e in emails])
    _recent_domains[:] = [d for d, _ in counts.most_common(4)]
    return counts


def _by_group(groups: Counter[str], labels: list[str], values: np.ndarray) -> dict[str, Moments]:
    """Exact moments of small integers (validated ages) per label; ``groups`` counts the labels."""
    index = {k: i for i, k in enumerate(groups)}
    inv = np.fromiter(map(index.__getitem__, labels), dtype=np.intp, count=len(labels))
    lo = int(values.min())
    width = int(values.max()) - lo + 1
    if width > 1024:
        raise ValueError("ages out of range: from_columns takes validated batches")
    # One histogram per label (a 2-D bincount): exact integer sums, minima and maxima.
    hist = np.bincount(inv * width + (values - lo), minlength=len(groups) * width).reshape(-1, width)
    x = np.arange(lo, lo + width)
    seen = hist > 0
    mins = lo + seen.argmax(axis=1)
    maxs = lo + width - 1 - seen[:, ::-1].argmax(axis=1)
    return {k: Moments(c, a, b, x0, x1) for k, c, a, b, x0, x1 in zip(
        groups, groups.values(), (hist @ x).tolist(), (hist @ (x * x)).tolist(), mins.tolist(),
        maxs.tolist(), strict=True)}


class StatsSummary:
    """A mergeable partial aggregate of users; ``figures()`` gives the dashboard's numbers.

    ``merge`` returns a new summary and leaves both operands unchanged;
    ``add_counts`` adds to this one in place.
    """

    def __init__(self) -> None:
        self.n = 0
        self.hist: dict[str, IntHistogram] = {k: IntHistogram() for k in _HISTOGRAMS}
        self.cats: dict[str, Categorical] = {k: Categorical() for k in _CATEGORIES}
        self.age_by_nat: dict[str, Moments] = {}
        self.distinct: dict[str, HyperLogLog] = {k: HyperLogLog() for k in _DISTINCT}
        self.top: dict[str, TopK] = {k: TopK(TOP_K) for k in _TOPS}
        self.quarantine: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()

    @classmethod
    def empty(cls) -> StatsSummary:
        """The summary of no users (the identity of ``merge``)."""
        return cls()

    @classmethod
    def from_columns(cls, cols: Columns) -> StatsSummary:
        """Summarise a validated columnar batch (see ``validate.validate_columns``)."""
        n = column_length(cols)
        if n == 0:
            return cls()
        out = cls.__new__(cls)  # every part is built below: skip the empty sketches
        out.n = n
        out.quarantine, out.warnings = Counter(), Counter()
        out.distinct = {}
        age, reg_age = _ints(cols["dob.age"]), _ints(cols["registered.age"])
        nats = Counter(cols["nat"])
        firsts, cities = Counter(cols["name.first"]), Counter(cols["location.city"])
        out.hist = {
            "age": IntHistogram.from_array(age),
            "account_age": IntHistogram.from_array(reg_age),
            "age_at_registration": IntHistogram.from_array(age - reg_age),
            "registration_years": _years(cols["registered.date"]),
            "username_length": IntHistogram(Counter(map(len, cols["login.username"]))),
            "password_length": IntHistogram(Counter(map(len, cols["login.password"]))),
        }
        out.cats = {
            "gender": Categorical(Counter(cols["gender"])),
            "countries": Categorical(Counter(cols["location.country"])),
            "nationalities": Categorical(nats.copy()),
            "email_domains": Categorical(_email_domains(cols["email"])),
            "timezones": Categorical(Counter(cols["location.timezone.offset"])),
        }
        out.age_by_nat = _by_group(nats, cols["nat"], age)
        out.top = {"first_names": TopK.from_counter(firsts, TOP_K),
                   "cities": TopK.from_counter(cities, TOP_K)}
        # One vectorised hashing pass for both columns of (mostly) unique values. A uuid's hex
        # digits are one value in either case (the producer de-duplicates them so too).
        ids = hash64(list(map(str.lower, cols["login.uuid"])) + cols["login.username"])
        d = out.distinct
        d["users"], d["usernames"] = HyperLogLog.from_hashes(ids[:n]), HyperLogLog.from_hashes(ids[n:])
        d["cities"] = HyperLogLog.from_hashes(_city_hashes(list(cities)))
        return out

    def merge(self, other: StatsSummary) -> StatsSummary:
        """A new summary of both (operands unchanged); exact but for top-k (see module doc)."""
        out = StatsSummary()
        out.n = self.n + other.n
        out.hist = {k: self.hist[k].merge(other.hist[k]) for k in _HISTOGRAMS}
        out.cats = {k: self.cats[k].merge(other.cats[k]) for k in _CATEGORIES}
        out.age_by_nat = dict(self.age_by_nat)
        for nat, m in other.age_by_nat.items():
            out.age_by_nat[nat] = out.age_by_nat[nat].merge(m) if nat in out.age_by_nat else m
        out.distinct = {k: self.distinct[k].merge(other.distinct[k]) for k in _DISTINCT}
        out.top = {k: self.top[k].merge(other.top[k]) for k in _TOPS}
        out.quarantine = self.quarantine + other.quarantine
        out.warnings = self.warnings + other.warnings
        return out

    def add_counts(self, quarantine: Mapping[str, int] = _EMPTY_MAP,
                   warnings: Mapping[str, int] = _EMPTY_MAP) -> None:
        """Add quarantine and warning counts by reason (in place)."""
        self.quarantine.update(quarantine)
        self.warnings.update(warnings)

    # -- serialisation --
    def to_bytes(self, *, canonical: bool = True) -> bytes:
        """Compact msgpack (for an SQLite blob); no per-user data.

        ``canonical`` sorts every map, so equal summaries give equal bytes; a batch's partial,
        only ever read back and merged, skips that (sorting its ~900 names and cities cost more
        than the rest of its serialisation).
        """
        blob: bytes = msgpack.packb({
            "v": WIRE_VERSION, "n": self.n,
            "hist": {k: v.to_wire() for k, v in self.hist.items()},
            "cats": {k: v.to_wire(canonical=canonical) for k, v in self.cats.items()},
            "age_by_nat": {k: self.age_by_nat[k].to_wire() for k in sorted(self.age_by_nat)},
            "distinct": {k: v.to_wire() for k, v in self.distinct.items()},
            "top": {k: v.to_wire(canonical=canonical) for k, v in self.top.items()},
            "quarantine": dict(sorted(self.quarantine.items())),
            "warnings": dict(sorted(self.warnings.items())),
        }, use_bin_type=True)
        return blob

    @classmethod
    def from_bytes(cls, b: bytes) -> StatsSummary:
        """Inverse of :meth:`to_bytes`; ValueError if it is not a summary of this version."""
        try:
            d = msgpack.unpackb(b, raw=False)
            if not isinstance(d, dict) or d.get("v") != WIRE_VERSION:
                raise ValueError(f"not a version-{WIRE_VERSION} stats summary")
            out = cls()
            out.n = d["n"]
            out.hist.update({k: IntHistogram.from_wire(v) for k, v in d["hist"].items()})
            out.cats.update({k: Categorical.from_wire(v) for k, v in d["cats"].items()})
            out.age_by_nat = {k: Moments.from_wire(v) for k, v in d["age_by_nat"].items()}
            out.distinct.update({k: HyperLogLog.from_wire(v) for k, v in d["distinct"].items()})
            out.top.update({k: TopK.from_wire(v) for k, v in d["top"].items()})
            out.quarantine, out.warnings = Counter(d["quarantine"]), Counter(d["warnings"])
        except (msgpack.UnpackException, ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"corrupt stats summary: {e}") from e
        return out

    def __eq__(self, other: object) -> bool:
        # The serialised form is canonical (sorted everywhere): equal state, equal bytes.
        return isinstance(other, StatsSummary) and self.to_bytes() == other.to_bytes()

    # -- figures --
    def figures(self) -> dict[str, Any]:
        """The JSON-ready figures (the ``/api/stats.json`` contract; see the module doc)."""
        h, n = self.hist, self.n
        age = h["age"].summary()
        decades: Counter[str] = Counter()
        for a, c in h["age"].counts.items():
            decades[f"{a // 10 * 10}s"] += c
        # As the original, the length figures are those of the passwords there are: an empty one
        # is counted apart ("empty"), not as a password of length 0.
        empty = h["password_length"].counts.get(0, 0)
        plen = IntHistogram({k: c for k, c in h["password_length"].counts.items() if k})
        n_pw = n - empty
        short = sum(c for k, c in plen.counts.items() if k < SHORT_PASSWORD)
        ulen = h["username_length"]
        at_reg = h["age_at_registration"]
        quarantine, filtered = split_filtered(self.quarantine)
        return {
            "total_users": n,
            "age": {**age, "decades": dict(sorted(decades.items(), key=lambda kv: int(kv[0][:-1])))},
            "gender": self.cats["gender"].to_dict(),
            "countries": self.cats["countries"].to_dict(),
            "nationalities": self.cats["nationalities"].to_dict(),
            "email_domains": self.cats["email_domains"].to_dict(),
            "username_length": {"min": _extreme(ulen, min), "max": _extreme(ulen, max), "mean": ulen.mean()},
            "password_length": {"min": _extreme(plen, min), "max": _extreme(plen, max), "mean": plen.mean(),
                                "histogram": plen.to_dict(), "empty": empty,
                                "short_pct": 100 * short / n_pw if n_pw else None},
            "registration_years": h["registration_years"].to_dict(),
            "timezones": self.cats["timezones"].to_dict(),
            # Users the run's own filter (--nat) left out are not faults: counted apart.
            "quarantine": _by_count(quarantine),
            "filtered": _by_count(filtered),
            "warnings": dict(sorted(self.warnings.items(), key=lambda kv: (-kv[1], kv[0]))),
            # Beyond the original's figures.
            "age_by_nationality": {nat: self.age_by_nat[nat].summary() for nat in sorted(self.age_by_nat)},
            "account_age": h["account_age"].summary(),
            "age_at_registration": {**at_reg.summary(),
                                    "negative": sum(c for k, c in at_reg.counts.items() if k < 0)},
            "distinct": {k: v.estimate() for k, v in self.distinct.items()},
            "distinct_rse": 1.04 / math.sqrt(1 << self.distinct["users"].p),
            "top_first_names": self.top["first_names"].top(TOP_SHOWN),
            "top_cities": self.top["cities"].top(TOP_SHOWN),
        }


def _by_count(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts by reason, the largest first."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _extreme(hist: IntHistogram, pick: Any) -> int | None:
    # min or max of a histogram's values; None when empty.
    return pick(hist.counts) if hist.counts else None
