"""Mergeable summary primitives: exact histograms, moments and counts; bounded top-k and distinct.

Every class here is a *mergeable summary*: ``merge(s(A), s(B))`` summarises
the concatenation ``A + B``. What "summarises" means is stated per class:

==================  =============================================  ==========================
class               state (bounded by)                             merge
==================  =============================================  ==========================
``IntHistogram``    {value: count} (distinct values: ages, years)   exact
``Moments``         count, Σx, Σx², min, max as integers            exact
``Categorical``     {label: count} (≤ ``cap`` labels)               exact while ≤ cap labels
``TopK``            ≤ k counters + their error (Misra-Gries)        within the stated bound
``HyperLogLog``     4,096 one-byte registers                        exact (register max)
==================  =============================================  ==========================

Each has ``to_wire()`` (msgpack-ready lists and bytes) and ``from_wire()``.
Strings are hashed with :func:`hash64`, which is stable across processes,
runs and hosts (Python's ``hash()`` is salted per process, so partial
summaries built by different workers could not be merged with it).
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections import Counter
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

import numpy as np

_U64 = np.uint64


# ---------------------------------------------------------------- integer histograms

class IntHistogram:
    """Exact counts of integer values; exact mean, min, max, std, median and percentiles."""

    __slots__ = ("counts",)

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})

    @classmethod
    def from_array(cls, values: np.ndarray) -> IntHistogram:
        """Histogram of an integer array (one ``bincount``, offset by its minimum)."""
        if values.size == 0:
            return cls()
        lo = int(values.min())
        counts = np.bincount(values - lo)
        keys = np.flatnonzero(counts)
        return cls(dict(zip((keys + lo).tolist(), counts[keys].tolist(), strict=True)))

    def merge(self, other: IntHistogram) -> IntHistogram:
        """A new histogram of both."""
        out = IntHistogram(self.counts)
        for k, v in other.counts.items():
            out.counts[k] = out.counts.get(k, 0) + v
        return out

    @property
    def n(self) -> int:
        """Number of values counted."""
        return sum(self.counts.values())

    def _sorted(self) -> tuple[list[int], list[int]]:
        keys = sorted(self.counts)
        return keys, [self.counts[k] for k in keys]

    def total(self) -> int:
        """Exact sum of the values."""
        return sum(k * v for k, v in self.counts.items())

    def mean(self) -> float | None:
        """Exact mean, rounded once (equals ``statistics.mean`` and ``numpy.mean``)."""
        n = self.n
        return self.total() / n if n else None

    def std(self) -> float | None:
        """Population standard deviation (ddof=0, numpy's default), from exact sums."""
        n = self.n
        if not n:
            return None
        s1 = self.total()
        s2 = sum(k * k * v for k, v in self.counts.items())
        return math.sqrt(Fraction(n * s2 - s1 * s1, n * n))

    def quantile(self, q: float) -> float | None:
        """Quantile ``q`` in [0, 1] by numpy's default ("linear") method, bit for bit.

        The virtual index ``(n - 1) * q`` and the interpolation are computed in
        the same floating-point operations as ``numpy.percentile``, from the
        two order statistics the histogram gives exactly.
        """
        n = self.n
        if not n:
            return None
        keys, counts = self._sorted()
        cum = np.cumsum(counts)
        vi = (n - 1) * q
        lo_i = math.floor(vi)
        if vi >= n - 1:
            return float(keys[-1])
        a = keys[int(np.searchsorted(cum, lo_i, side="right"))]
        b = keys[int(np.searchsorted(cum, lo_i + 1, side="right"))]
        t = vi - lo_i
        diff = float(b - a)
        return b - diff * (1 - t) if t >= 0.5 else a + diff * t

    def summary(self) -> dict[str, Any]:
        """{min, max, mean, median, std, p10, p90} (None when empty)."""
        if not self.counts:
            return dict.fromkeys(("min", "max", "mean", "median", "std", "p10", "p90"))
        return {"min": min(self.counts), "max": max(self.counts), "mean": self.mean(),
                "median": self.quantile(0.5), "std": self.std(),
                "p10": self.quantile(0.1), "p90": self.quantile(0.9)}

    def to_dict(self) -> dict[str, int]:
        """{value: count} in value order, keys as strings (JSON)."""
        return {str(k): self.counts[k] for k in sorted(self.counts)}

    def to_wire(self) -> list[list[int]]:
        """[[values], [counts]]."""
        keys, counts = self._sorted()
        return [keys, counts]

    @classmethod
    def from_wire(cls, w: list[list[int]]) -> IntHistogram:
        """Inverse of :meth:`to_wire`."""
        return cls(dict(zip(w[0], w[1], strict=True)))


# ---------------------------------------------------------------- moments

class Moments:
    """Count, mean, population variance, min and max of integers (ages by nationality).

    Σx and Σx² are exact Python integers, so merging is exact and associative.
    This is Chan et al.'s parallel combination ``M2 = M2a + M2b + δ²·na·nb/n``
    in exact arithmetic: Welford/Chan exist to avoid cancellation in floating
    point, which integer sums do not suffer. Mean and variance are rounded to
    float once, when read.
    """

    __slots__ = ("count", "hi", "lo", "s1", "s2")

    def __init__(self, count: int = 0, s1: int = 0, s2: int = 0,
                 lo: int | None = None, hi: int | None = None) -> None:
        self.count, self.s1, self.s2, self.lo, self.hi = count, s1, s2, lo, hi

    @classmethod
    def from_ints(cls, x: np.ndarray) -> Moments:
        """Moments of an int64 array (as Python ints: no overflow)."""
        xs = x.tolist()
        if not xs:
            return cls()
        return cls(len(xs), sum(xs), sum(map(operator.mul, xs, xs)), min(xs), max(xs))

    def merge(self, other: Moments) -> Moments:
        """A new summary of both."""
        lows = [v for v in (self.lo, other.lo) if v is not None]
        highs = [v for v in (self.hi, other.hi) if v is not None]
        return Moments(self.count + other.count, self.s1 + other.s1, self.s2 + other.s2,
                       min(lows) if lows else None, max(highs) if highs else None)

    def summary(self) -> dict[str, Any]:
        """{n, mean, std (population), min, max}, floats rounded once from exact values."""
        n = self.count
        if not n:
            return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
        var = Fraction(n * self.s2 - self.s1 * self.s1, n * n)
        return {"n": n, "mean": self.s1 / n, "std": math.sqrt(var), "min": self.lo, "max": self.hi}

    def to_wire(self) -> list[Any]:
        """[count, Σx, Σx², min, max] (a sum past 64 bits travels as a decimal string)."""
        return [self.count, _big(self.s1), _big(self.s2), self.lo, self.hi]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Moments:
        """Inverse of :meth:`to_wire`."""
        return cls(w[0], int(w[1]), int(w[2]), w[3], w[4])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Moments) and self.to_wire() == other.to_wire()


def _big(v: int) -> int | str:
    # msgpack integers stop at 64 bits; exact sums of squares can pass that after ~10^7 users.
    return v if -(2**63) <= v < 2**64 else str(v)


# ---------------------------------------------------------------- categorical counts

OTHER = "(other)"


class Categorical:
    """Exact counts per label, for naturally bounded domains (gender, country, time zone).

    At most ``cap`` labels are kept: past that (never, for API data: 21
    countries, ~40 time zones) the smallest are folded into ``"(other)"``,
    and only then does the merge stop being exact.
    """

    __slots__ = ("cap", "counts")

    def __init__(self, counts: Mapping[str, int] | None = None, cap: int = 2048) -> None:
        # A Counter is taken as is (from_columns hands over a fresh one); merge copies.
        self.counts: Counter[str] = counts if isinstance(counts, Counter) else Counter(counts or {})
        self.cap = cap
        self._fold()

    def _fold(self) -> None:
        if len(self.counts) <= self.cap:
            return
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        keep = dict(ranked[: self.cap - 1])
        keep[OTHER] = keep.get(OTHER, 0) + sum(v for k, v in ranked[self.cap - 1:])
        self.counts = Counter(keep)

    def merge(self, other: Categorical) -> Categorical:
        """A new count of both."""
        out = Categorical(self.counts + other.counts, self.cap)
        out._fold()
        return out

    def to_dict(self) -> dict[str, int]:
        """{label: count}, most frequent first (ties by label)."""
        return dict(sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_wire(self, *, canonical: bool = True) -> dict[str, int]:
        """{label: count}, by label if ``canonical`` (equal summaries give equal bytes)."""
        counts = self.counts
        return {k: counts[k] for k in sorted(counts)} if canonical else counts

    @classmethod
    def from_wire(cls, w: Mapping[str, int], cap: int = 2048) -> Categorical:
        """Inverse of :meth:`to_wire`."""
        return cls(w, cap)


# ---------------------------------------------------------------- top-k (Misra-Gries)

class TopK:
    """Frequent items in bounded space: the mergeable Misra-Gries summary.

    Holds at most ``k`` counters. For every item ``x`` with true count
    ``f(x)`` among the ``n`` items summarised::

        count(x) <= f(x) <= count(x) + error,   error <= (n - Σ counts) / (k + 1) <= n / (k + 1)

    (``count(x)`` is 0 for an item not held). So every item more frequent
    than ``n / (k + 1)`` is held, and ``error`` is the exact worst case,
    tracked rather than assumed. Merging (Agarwal et al., *Mergeable
    Summaries*, 2012: add the counters, then subtract the (k+1)-th largest
    from all and drop those ≤ 0) keeps the same guarantee for the merged
    stream, but which items are held and their counts can depend on the
    order of the merges: the merge is within the bound, not exact. While
    fewer than ``k + 1`` distinct items were ever seen, it is exact.
    """

    __slots__ = ("counts", "error", "k", "n")

    def __init__(self, k: int = 128, counts: Mapping[str, int] | None = None, n: int = 0,
                 error: int = 0) -> None:
        self.k, self.counts, self.n, self.error = k, dict(counts or {}), n, error

    @classmethod
    def from_counter(cls, counts: Mapping[str, int], k: int = 128) -> TopK:
        """The summary of a batch whose exact counts are known."""
        out = cls(k, counts, sum(counts.values()))
        out._reduce()
        return out

    def _reduce(self) -> None:
        if len(self.counts) <= self.k:
            return
        cut = sorted(self.counts.values(), reverse=True)[self.k]
        self.counts = {x: c - cut for x, c in self.counts.items() if c > cut}
        self.error += cut

    def merge(self, other: TopK) -> TopK:
        """A new summary of both streams (within the bound; see the class doc)."""
        # The larger k: a summary stored with a smaller one (an older release) does not shrink
        # what merges into it. The bound holds either way, as ``error`` is tracked, not assumed.
        big, small = self.counts, other.counts
        if len(big) < len(small):
            big, small = small, big
        out = TopK(max(self.k, other.k), big, self.n + other.n, self.error + other.error)  # copies big
        get = out.counts.get
        out.counts.update({x: get(x, 0) + c for x, c in small.items()})
        out._reduce()
        return out

    def top(self, limit: int = 10) -> list[dict[str, Any]]:
        """[{value, count (a lower bound), max_count (an upper bound)}], most frequent first."""
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return [{"value": x, "count": c, "max_count": c + self.error} for x, c in ranked]

    def to_wire(self, *, canonical: bool = True) -> list[Any]:
        """[k, n, error, {item: count}] (items sorted if ``canonical``)."""
        counts = self.counts
        return [self.k, self.n, self.error, {x: counts[x] for x in sorted(counts)} if canonical else counts]

    @classmethod
    def from_wire(cls, w: list[Any]) -> TopK:
        """Inverse of :meth:`to_wire`."""
        return cls(w[0], w[3], w[1], w[2])


# ---------------------------------------------------------------- stable string hashing

_MASK64 = (1 << 64) - 1
_SHORT = 64  # strings up to this many code points are hashed vectorised


def _splitmix64(n: int, seed: int = 0x1F2E3D4C5B6A7988) -> list[int]:
    out, x = [], seed
    for _ in range(n):
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append((z ^ (z >> 31)) | 1)
    return out


_keys = np.array(_splitmix64(_SHORT), dtype=_U64)
_SEED = _U64(0x243F6A8885A308D3)  # so that "" does not hash to 0


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: every input bit affects every output bit."""
    h ^= h >> _U64(33)
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    h *= _U64(0xC4CEB9FE1A85EC53)
    h ^= h >> _U64(33)
    return h


def hash64(values: list[str]) -> np.ndarray:
    """Stable 64-bit hashes of strings (uint64 array), vectorised.

    Short strings: a multilinear hash Σ pair_i·K_i mod 2⁶⁴ over pairs of
    code points (one 64-bit word each) with fixed random odd keys, then
    MurmurHash3's finaliser. Zero padding adds nothing, so a string hashes
    the same in every batch; trailing NULs are ignored (validation rejects
    control characters). Two given distinct strings collide with probability
    at most 2⁻³² (when they differ only in the second code point of pairs),
    far below what would move a HyperLogLog estimate. Longer strings, rare,
    go through BLAKE2b.
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=_U64)
    width = max(map(len, values))
    long_idx: list[int] = []
    short = values
    if width > _SHORT:
        long_idx = [i for i, v in enumerate(values) if len(v) > _SHORT]
        short = list(values)
        for i in long_idx:
            short[i] = ""
        width = _SHORT
    width += width & 1 or 2 * (width == 0)  # an even number of code points: whole pairs
    pairs = np.array(short, dtype=f"<U{width}").view("<u8").reshape(n, width // 2)
    h = _fmix64(pairs @ _keys[: width // 2] + _SEED)  # uint64 arithmetic wraps: mod 2**64
    for i in long_idx:
        digest = hashlib.blake2b(values[i].encode("utf-8", "surrogatepass"), digest_size=8).digest()
        h[i] = int.from_bytes(digest, "little")
    return h


class HashMemo:
    """hash64 remembered for values that recur across batches (cities), bounded."""

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self.known: dict[str, int] = {}

    def __call__(self, values: list[str]) -> np.ndarray:
        """The hashes of ``values`` (as hash64 would give them)."""
        distinct = set(values)
        fresh = list(distinct.difference(self.known))
        if fresh:
            if len(self.known) + len(fresh) > self.limit:
                # Start afresh: then every value of this batch is fresh (not only the new ones).
                self.known.clear()
                fresh = list(distinct)
            # Held as int64: numpy converts Python ints above 2**63 to uint64 slowly.
            self.known.update(zip(fresh, hash64(fresh).view(np.int64).tolist(), strict=True))
        return np.fromiter(map(self.known.__getitem__, values), dtype=np.int64, count=len(values)).view(_U64)


# ---------------------------------------------------------------- distinct counts (HyperLogLog)

def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        z_old = z
        z += x * y
        y += y
        if z == z_old:
            return z


def _tau(x: float) -> float:
    if x == 0.0 or x == 1.0:
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        z_old = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if z == z_old:
            return z / 3.0


class HyperLogLog:
    """Distinct count in 2^p one-byte registers (p = 12: 4 KiB, at most, on the wire).

    Relative standard error 1.04/√m = 1.6 % for m = 2^12 registers, at every
    cardinality from 0 to far beyond 10⁹ (64-bit hashes, Ertl's improved
    estimator, *New cardinality estimation algorithms for HyperLogLog
    sketches*, 2017, which needs neither bias tables nor a switch to linear
    counting); 99.7 % of estimates fall within ±3σ = ±4.9 %. Merge is exact:
    the register-wise maximum is the sketch of the union, so a run's partials
    merge to the very sketch of the whole run.
    """

    __slots__ = ("p", "registers")

    def __init__(self, p: int = 12, registers: np.ndarray | None = None) -> None:
        if not 11 <= p <= 18:
            raise ValueError("HyperLogLog precision must be 11..18")  # rank bits must fit a float
        self.p = p
        self.registers = np.zeros(1 << p, dtype=np.uint8) if registers is None else registers

    @classmethod
    def from_hashes(cls, h: np.ndarray, p: int = 12) -> HyperLogLog:
        """The sketch of 64-bit hashes (see :func:`hash64`)."""
        out = cls(p)
        out.add_hashes(h)
        return out

    def add_hashes(self, h: np.ndarray) -> None:
        """Count more hashed items, in place."""
        if h.size == 0:
            return
        q = 64 - self.p
        idx = (h & _U64((1 << self.p) - 1)).astype(np.intp)
        # rank = leading zeros of the other q bits + 1; frexp's exponent is the bit length,
        # exact because q <= 53 bits convert to float without rounding (0 -> q + 1).
        rank = (q + 1 - np.frexp((h >> _U64(self.p)).astype(np.float64))[1]).astype(np.uint8)
        np.maximum.at(self.registers, idx, rank)

    def merge(self, other: HyperLogLog) -> HyperLogLog:
        """The sketch of the union (exact)."""
        if self.p != other.p:
            raise ValueError("cannot merge HyperLogLog sketches of different precision")
        return HyperLogLog(self.p, np.maximum(self.registers, other.registers))

    def estimate(self) -> int:
        """Estimated number of distinct items (see the class doc for the error)."""
        m, q = 1 << self.p, 64 - self.p
        c = np.bincount(self.registers, minlength=q + 2).tolist()
        z = m * _tau(1.0 - c[q + 1] / m)
        for k in range(q, 0, -1):
            z = 0.5 * (z + c[k])
        z += m * _sigma(c[0] / m)
        return 0 if math.isinf(z) else round(m * m / (2 * math.log(2)) / z)

    def to_wire(self) -> list[Any]:
        """[p, dense registers] or [p, indexes, values] when few are set (a batch of 500 users)."""
        nz = np.flatnonzero(self.registers)
        if nz.size * 3 < self.registers.size:
            return [self.p, nz.astype("<u2").tobytes(), self.registers[nz].tobytes()]
        return [self.p, self.registers.tobytes()]

    @classmethod
    def from_wire(cls, w: list[Any]) -> HyperLogLog:
        """Inverse of :meth:`to_wire`."""
        p = w[0]
        if len(w) == 2:
            regs = np.frombuffer(w[1], dtype=np.uint8).copy()
            if regs.size != 1 << p:
                raise ValueError("HyperLogLog registers of the wrong size")
            return cls(p, regs)
        regs = np.zeros(1 << p, dtype=np.uint8)
        regs[np.frombuffer(w[1], dtype="<u2").astype(np.intp)] = np.frombuffer(w[2], dtype=np.uint8)
        return cls(p, regs)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, HyperLogLog) and self.p == other.p
                and bool(np.array_equal(self.registers, other.registers)))


def distinct_of(values: Iterable[str], p: int = 12) -> HyperLogLog:
    """The HyperLogLog sketch of some strings."""
    return HyperLogLog.from_hashes(hash64(list(values)), p)
