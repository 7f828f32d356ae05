"""The password audit: per-batch findings folded into a mergeable summary.

Per *distinct* password (cached process-wide, :func:`password_info`): the
original complexity class, charset entropy and "strong" rule, Shannon
entropy, zxcvbn without user inputs, the Pipal shape. Per *user*: only the
personal-information checks (``personal``), cheap substring tests. When
any personal information is found, the user's zxcvbn score is lowered to
``min(score, 1)``: that is what zxcvbn with the user's name, username,
e-mail, city and birth date as user inputs would broadly say, at a
hundredth of the cost.

Nothing reversible is kept: passwords and base words are counted by a
keyed fingerprint (HMAC-SHA256 with a sub-key of the Fernet key, 12
bytes) and labelled with :func:`mask` (first and last character and the
length), unless the operator opted in with ``reveal=True``.

Exactness: every count is exact and merges exactly, except the three
bounded tallies (passwords/reuse, hashcat masks, base words). Each is exact
while it holds at most its cap of distinct keys (``reuse.exact`` and
``masks_exact`` in :meth:`AuditSummary.figures`); past it, the rarest keys
are evicted, the top entries stay right in practice, and
``users_sharing``/``largest_group``/``distinct`` become lower bounds.
"""

from __future__ import annotations

import hmac
import math
from collections import Counter
from functools import lru_cache
from hashlib import sha256
from typing import Any, Generic, Hashable, TypeVar

import msgpack
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from infraetl import entropy, pwshape
from infraetl.exceptions import KeyError_
from infraetl.personal import KINDS, find_personal, original_matches
from infraetl.pwshape import mask
from infraetl.schema import Columns, column_length

__all__ = ["AuditSummary", "PasswordInfo", "fingerprint", "fingerprint_key", "mask",
           "password_info"]

FP_INFO = b"infraetl password fingerprint v1"
FP_BYTES = 12
#: Distinct fingerprints kept exactly (≈ 40 MB in memory, ≈ 6 MB serialized at most).
REUSE_CAP = 200_000
MASK_CAP = 4096
BASE_CAP = 4096
NAT_CAP = 64
TOP = 10
#: Entropy histogram: 10-bit bins, the last one is "200+".
HIST_STEP, HIST_BINS = 10, 21
#: Passwords longer than this are analysed but not cached (bounded memory).
CACHE_MAX_LEN = 256
_VERSION = 1
_BASE_DOMAIN = "\x00base\x00"

K = TypeVar("K", bound=Hashable)


def fingerprint_key(fernet_key_bytes: bytes) -> bytes:
    """The fingerprint sub-key: HKDF-SHA256 (info :data:`FP_INFO`) of the raw Fernet key.

    Accepts the 44-character url-safe base64 key (as Fernet takes it) or
    its 32 raw bytes; both give the same sub-key.
    """
    import base64
    import binascii

    raw = fernet_key_bytes
    if len(raw) != 32:
        try:
            raw = base64.urlsafe_b64decode(bytes(fernet_key_bytes).strip())
        except (binascii.Error, ValueError, TypeError):
            raw = b""
    if len(raw) != 32:
        raise KeyError_("the Fernet key is malformed: expected 32 bytes, url-safe base64")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=FP_INFO).derive(raw)


@lru_cache(maxsize=entropy.CACHE_SIZE)
def fingerprint(fp_key: bytes, text: str) -> bytes:
    """Keyed, irreversible fingerprint of a password: HMAC-SHA256, first 12 bytes."""
    return hmac.digest(fp_key, text.encode("utf-8", "surrogatepass"), sha256)[:FP_BYTES]


class PasswordInfo:
    """Everything the audit needs that depends on the password alone."""

    __slots__ = (
        "lower", "deleeted", "runs", "tail", "complexity", "strong", "classes",
        "secure_score", "charset_milli", "hist_bin", "shannon_milli", "zx_score",
        "guesses_milli", "hashcat", "length", "charset", "trailing", "base", "masked",
    )

    def __init__(self, password: str) -> None:
        pwl = password.lower()
        self.lower = pwl
        self.deleeted = pwshape.deleet(pwl)
        self.runs = pwshape.digit_runs(password)
        self.tail = self.runs[-1] if self.runs and password.endswith(self.runs[-1]) else ""
        self.complexity = entropy.complexity(password)
        self.strong = entropy.is_strong(password)
        self.classes = entropy.classes(password)
        self.secure_score = entropy.secure_score(password)
        bits = entropy.charset_entropy(password)
        self.charset_milli = round(bits * 1000)
        self.hist_bin = min(int(bits // HIST_STEP), HIST_BINS - 1)
        self.shannon_milli = round(entropy.shannon_entropy(password) * 1000)
        score, guesses = entropy.cached_strength(password)
        self.zx_score = score
        self.guesses_milli = round(guesses * 1000)
        self.hashcat = pwshape.hashcat_mask(password)
        self.length = pwshape.length_bucket(password)
        self.charset = pwshape.charset_name(password)
        self.trailing = pwshape.trailing_digits(password)
        self.base = pwshape.base_word(password)
        self.masked = mask(password) if password else ""


@lru_cache(maxsize=entropy.CACHE_SIZE)
def _cached_info(password: str) -> PasswordInfo:
    return PasswordInfo(password)


def password_info(password: str) -> PasswordInfo:
    """The :class:`PasswordInfo` of ``password``, from a bounded process-wide LRU."""
    if len(password) > CACHE_MAX_LEN:
        return PasswordInfo(password)
    return _cached_info(password)


def _display(label: str) -> str:
    return label if label else "(empty)"


def _remask(label: str) -> str:
    return mask(label) if label else ""


class _Tally(Generic[K]):
    """Exact counts per key while ≤ cap keys; past it the rarest are evicted."""

    __slots__ = ("cap", "counts", "labels", "exact", "evicted_keys", "evicted_sharing")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.counts: dict[K, int] = {}
        self.labels: dict[K, str] = {}
        self.exact = True
        self.evicted_keys = 0
        self.evicted_sharing = 0

    def add(self, key: K, n: int, label: str | None = None) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += n
        else:
            counts[key] = n
            if label is not None:
                self.labels[key] = label

    def merge(self, other: _Tally[K], relabel: bool = False) -> None:
        counts, labels = self.counts, self.labels
        for key, n in other.counts.items():
            if key in counts:
                counts[key] += n
            else:
                counts[key] = n
                label = other.labels.get(key)
                if label is not None:
                    labels[key] = _remask(label) if relabel else label
        self.exact = self.exact and other.exact
        self.evicted_keys += other.evicted_keys
        self.evicted_sharing += other.evicted_sharing
        self.prune()

    def prune(self) -> None:
        """Keep the 3/4·cap most frequent keys when past the cap (ties by key)."""
        if len(self.counts) <= self.cap:
            return
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        keep = self.cap * 3 // 4
        for key, n in ranked[keep:]:
            del self.counts[key]
            self.labels.pop(key, None)
            self.evicted_keys += 1
            if n >= 2:
                self.evicted_sharing += n
        self.exact = False

    def top(self, k: int) -> list[tuple[K, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]

    def remask(self) -> None:
        self.labels = {k: _remask(v) for k, v in self.labels.items()}

    def to_wire(self) -> list[Any]:
        items = [[k, n, self.labels.get(k)] for k, n in self.counts.items()]
        return [self.exact, self.evicted_keys, self.evicted_sharing, items]

    @classmethod
    def from_wire(cls, cap: int, wire: list[Any]) -> _Tally[Any]:
        tally: _Tally[Any] = cls(cap)
        exact, tally.evicted_keys, tally.evicted_sharing, items = wire
        tally.exact = bool(exact)
        for key, n, label in items:
            tally.counts[key] = int(n)
            if label is not None:
                tally.labels[key] = str(label)
        tally.prune()
        return tally


def _column(cols: Columns, path: str, n: int) -> list[str]:
    """A text column, "" where missing or not a string (validation is upstream)."""
    values = cols.get(path)
    if values is None or len(values) != n:
        return [""] * n
    if all(type(v) is str for v in values):
        return values
    return [v if isinstance(v, str) else "" for v in values]


def _add_counts(into: dict[str, int], other: dict[str, int]) -> None:
    for k, n in other.items():
        into[k] = into.get(k, 0) + n


class AuditSummary:
    """Mergeable password-audit state of any number of users (see module doc)."""

    def __init__(self, *, reveal: bool = False) -> None:
        self.revealed = reveal
        self.users = 0
        self.empty_passwords = 0
        self.complexity: dict[str, int] = dict.fromkeys(entropy.COMPLEXITY, 0)
        self.strong = 0
        self.name_in = self.username_in = self.birthyear_in = 0
        self.entropy_milli = self.shannon_milli = self.guesses_milli = 0
        self.entropy_hist = [0] * HIST_BINS
        self.zx = [0] * 5
        self.personal: dict[str, int] = dict.fromkeys((*KINDS, "any"), 0)
        self.passwords: _Tally[bytes] = _Tally(REUSE_CAP)
        self.most_secure: list[Any] | None = None  # [score, fp, label, classes, length, zx]
        self.masks: _Tally[str] = _Tally(MASK_CAP)
        self.base_words: _Tally[bytes] = _Tally(BASE_CAP)
        self.lengths: dict[str, int] = {}
        self.charsets: dict[str, int] = {}
        self.trailing: dict[str, int] = {}
        self.nat: dict[str, list[int]] = {}  # nat -> [users, weak]

    @classmethod
    def empty(cls, *, reveal: bool = False) -> AuditSummary:
        """A summary of no users (the identity of :meth:`merge`)."""
        return cls(reveal=reveal)

    @classmethod
    def from_columns(cls, cols: Columns, fp_key: bytes, *, reveal: bool = False) -> AuditSummary:
        """Audit one columnar batch; ``reveal`` keeps plaintext labels (operator opt-in)."""
        s = cls(reveal=reveal)
        n = column_length(cols)
        pws = _column(cols, "login.password", n)
        s.users = n
        infos: dict[str, PasswordInfo] = {}
        fps: dict[str, bytes] = {}
        for pw, c in Counter(pws).items():
            info = infos[pw] = password_info(pw)
            fp = fps[pw] = fingerprint(fp_key, pw)
            s.passwords.add(fp, c, pw if reveal else info.masked)
            s._add_password(info, c)
            if info.base:
                label = info.base if reveal else mask(info.base)
                s.base_words.add(fingerprint(fp_key, _BASE_DOMAIN + info.base), c, label)
        s.empty_passwords = s.complexity["empty"]
        s._add_users(cols, n, pws, infos, fps)
        return s

    def _add_password(self, info: PasswordInfo, c: int) -> None:
        self.complexity[info.complexity] += c
        self.strong += c if info.strong else 0
        self.entropy_milli += c * info.charset_milli
        self.shannon_milli += c * info.shannon_milli
        self.guesses_milli += c * info.guesses_milli
        self.entropy_hist[info.hist_bin] += c
        self.zx[info.zx_score] += c
        self.masks.add(info.hashcat, c)
        for table, key in ((self.lengths, info.length), (self.charsets, info.charset),
                           (self.trailing, info.trailing)):
            table[key] = table.get(key, 0) + c

    def _add_users(self, cols: Columns, n: int, pws: list[str],
                   infos: dict[str, PasswordInfo], fps: dict[str, bytes]) -> None:
        firsts, lasts, usernames, dobs, emails, cities, phones, cells, nats = (
            _column(cols, p, n) for p in (
                "name.first", "name.last", "login.username", "dob.date", "email",
                "location.city", "phone", "cell", "nat"))
        kinds = [0] * len(KINDS)
        any_personal = name_in = user_in = year_in = 0
        nat_users: Counter[str] = Counter()
        nat_weak: Counter[str] = Counter()
        zx = self.zx
        best: list[Any] | None = None
        for pw, first, last, username, dob, email, city, phone, cell, nat in zip(
                pws, firsts, lasts, usernames, dobs, emails, cities, phones, cells, nats):
            info = infos[pw]
            pwl = info.lower
            fl, ll, ul = first.lower(), last.lower(), username.lower()
            # Original definitions, inlined (see personal.original_matches).
            orig = False
            if (fl and fl in pwl) or (ll and ll in pwl):
                name_in += 1
                orig = True
            if ul and ul in pwl:
                user_in += 1
                orig = True
            if info.runs and dob[:4].isdigit() and len(dob) >= 4 and dob[:4] in pw:
                year_in += 1
                orig = True
            found = find_personal(pwl, info.deleeted, info.runs, info.tail, first, last,
                                  username, dob, email, city, phone, cell)
            if found:
                any_personal += 1
                for i in range(len(KINDS)):
                    if found >> i & 1:
                        kinds[i] += 1
                if info.zx_score > 1:
                    zx[info.zx_score] -= 1
                    zx[1] += 1
            if not orig and (best is None or info.secure_score >= best[0]):
                cand = [info.secure_score, fps[pw], pw if self.revealed else info.masked,
                        list(info.classes), len(pw), info.zx_score]
                if best is None or cand[:2] > best[:2]:
                    best = cand
            nat = nat or "unknown"
            nat_users[nat] += 1
            if not info.strong:
                nat_weak[nat] += 1
        self.name_in, self.username_in, self.birthyear_in = name_in, user_in, year_in
        for i, k in enumerate(KINDS):
            self.personal[k] = kinds[i]
        self.personal["any"] = any_personal
        self.most_secure = best
        for nat, u in nat_users.items():
            self._add_nat(nat, u, nat_weak[nat])

    def _add_nat(self, nat: str, users: int, weak: int) -> None:
        nat = nat[:8]
        if nat not in self.nat and len(self.nat) >= NAT_CAP:
            nat = "other"
        row = self.nat.setdefault(nat, [0, 0])
        row[0] += users
        row[1] += weak

    def merge(self, other: AuditSummary) -> AuditSummary:
        """Fold ``other`` into this summary **in place** and return ``self``.

        Labels stay plaintext only if both sides were built with
        ``reveal=True`` (a summary of no users takes the other's choice).
        """
        if other is self:
            other = AuditSummary.from_bytes(other.to_bytes())
        if self.users == 0 and other.users > 0:
            self.revealed = other.revealed
        relabel = self.revealed and not other.revealed and other.users > 0
        if relabel:
            self.revealed = False
            self.passwords.remask()
            self.base_words.remask()
            if self.most_secure:
                self.most_secure[2] = _remask(self.most_secure[2])
        remask_other = not self.revealed and other.revealed
        self.users += other.users
        self.empty_passwords += other.empty_passwords
        _add_counts(self.complexity, other.complexity)
        self.strong += other.strong
        self.name_in += other.name_in
        self.username_in += other.username_in
        self.birthyear_in += other.birthyear_in
        self.entropy_milli += other.entropy_milli
        self.shannon_milli += other.shannon_milli
        self.guesses_milli += other.guesses_milli
        self.entropy_hist = [a + b for a, b in zip(self.entropy_hist, other.entropy_hist)]
        self.zx = [a + b for a, b in zip(self.zx, other.zx)]
        _add_counts(self.personal, other.personal)
        self.passwords.merge(other.passwords, relabel=remask_other)
        self.masks.merge(other.masks)
        self.base_words.merge(other.base_words, relabel=remask_other)
        _add_counts(self.lengths, other.lengths)
        _add_counts(self.charsets, other.charsets)
        _add_counts(self.trailing, other.trailing)
        for nat, (u, w) in other.nat.items():
            self._add_nat(nat, u, w)
        theirs = other.most_secure
        if theirs and (self.most_secure is None or theirs[:2] > self.most_secure[:2]):
            self.most_secure = list(theirs)
            if remask_other:
                self.most_secure[2] = _remask(theirs[2])
        return self

    def to_bytes(self) -> bytes:
        """msgpack of the state; bounded by the tallies' caps (a few MB at most)."""
        return msgpack.packb({
            "v": _VERSION, "rev": self.revealed, "n": self.users, "e": self.empty_passwords,
            "cx": self.complexity, "st": self.strong,
            "orig": [self.name_in, self.username_in, self.birthyear_in],
            "milli": [self.entropy_milli, self.shannon_milli, self.guesses_milli],
            "eh": self.entropy_hist, "zx": self.zx, "pi": self.personal,
            "pw": self.passwords.to_wire(), "ms": self.most_secure,
            "mk": self.masks.to_wire(), "bw": self.base_words.to_wire(),
            "len": self.lengths, "cs": self.charsets, "td": self.trailing, "nat": self.nat,
        }, use_bin_type=True)

    @classmethod
    def from_bytes(cls, b: bytes) -> AuditSummary:
        """Inverse of :meth:`to_bytes`; ValueError on anything else."""
        try:
            d = msgpack.unpackb(b, raw=False, strict_map_key=False)
            if d.get("v") != _VERSION:
                raise ValueError(f"unknown audit summary version {d.get('v')!r}")
            s = cls(reveal=bool(d["rev"]))
            s.users, s.empty_passwords, s.strong = int(d["n"]), int(d["e"]), int(d["st"])
            s.complexity.update({str(k): int(v) for k, v in d["cx"].items()})
            s.name_in, s.username_in, s.birthyear_in = (int(x) for x in d["orig"])
            s.entropy_milli, s.shannon_milli, s.guesses_milli = (int(x) for x in d["milli"])
            s.entropy_hist = [int(x) for x in d["eh"]][:HIST_BINS]
            s.zx = [int(x) for x in d["zx"]][:5]
            if len(s.entropy_hist) != HIST_BINS or len(s.zx) != 5:
                raise ValueError("bad histogram length")
            s.personal.update({str(k): int(v) for k, v in d["pi"].items()})
            s.passwords = _Tally.from_wire(REUSE_CAP, d["pw"])
            s.masks = _Tally.from_wire(MASK_CAP, d["mk"])
            s.base_words = _Tally.from_wire(BASE_CAP, d["bw"])
            s.most_secure = list(d["ms"]) if d["ms"] else None
            s.lengths, s.charsets, s.trailing = (
                {str(k): int(v) for k, v in d[key].items()} for key in ("len", "cs", "td"))
            for nat, (u, w) in d["nat"].items():
                s._add_nat(str(nat), int(u), int(w))
        except (KeyError, TypeError, AttributeError, msgpack.UnpackException) as e:
            raise ValueError(f"not an audit summary: {e.__class__.__name__}") from None
        return s

    def figures(self) -> dict[str, Any]:
        """JSON-ready figures (the ``audit`` contract; see tests/test_audit.py)."""
        n = self.users

        def pct(k: int) -> float:
            return round(100.0 * k / n, 2) if n else 0.0

        def mean(milli: int) -> float:
            return round(milli / 1000 / n, 3) if n else 0.0

        counts = self.passwords.counts
        shared = [c for c in counts.values() if c >= 2]
        top = [{"password": _display(self.passwords.labels.get(k, "")), "count": c}
               for k, c in self.passwords.top(TOP)]
        ms = self.most_secure
        hist = {str(i * HIST_STEP) if i < HIST_BINS - 1 else f"{i * HIST_STEP}+": c
                for i, c in enumerate(self.entropy_hist)}
        return {
            "users": n,
            "revealed": self.revealed,
            "empty_passwords": self.empty_passwords,
            "complexity": dict(self.complexity),
            "strength": {"strong": self.strong, "weak": n - self.strong,
                         "percent_strong": pct(self.strong)},
            "name_in_password": self.name_in,
            "username_in_password": self.username_in,
            "birthyear_in_password": self.birthyear_in,
            "top_passwords": top,
            "most_secure_password": None if ms is None else {
                "password": _display(ms[2]), "score": ms[0], "classes": ms[3],
                "length": ms[4], "zxcvbn_score": ms[5]},
            "entropy_bits": {"mean": mean(self.entropy_milli), "histogram": hist},
            "shannon_bits": {"mean": mean(self.shannon_milli)},
            "zxcvbn_score": {str(i): c for i, c in enumerate(self.zx)},
            "guesses_log10": {"mean": mean(self.guesses_milli)},
            "reuse": {
                "users_sharing": sum(shared) + self.passwords.evicted_sharing,
                "largest_group": max(counts.values(), default=0),
                "distinct": len(counts) + self.passwords.evicted_keys,
                "top_reused": [t for t in top if t["count"] >= 2],
                "exact": self.passwords.exact,
            },
            "personal_info": dict(self.personal),
            "masks": [{"mask": k, "count": c} for k, c in self.masks.top(TOP)],
            "masks_exact": self.masks.exact and self.base_words.exact,
            "shape": {
                "length": dict(sorted(self.lengths.items(), key=_length_order)),
                "charset": dict(sorted(self.charsets.items(), key=lambda kv: -kv[1])),
                "trailing_digits": dict(sorted(self.trailing.items())),
                "base_words": [{"word": _display(self.base_words.labels.get(k, "")),
                                "count": c} for k, c in self.base_words.top(TOP)],
            },
            "by_nationality": {
                nat: {"users": u, "weak": w,
                      "percent_weak": round(100.0 * w / u, 2) if u else 0.0}
                for nat, (u, w) in sorted(self.nat.items())},
        }


def _length_order(kv: tuple[str, int]) -> float:
    key = kv[0]
    return float(key) if key.isdigit() else math.inf
