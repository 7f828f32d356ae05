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

import base64
import binascii
import hmac
import math
from collections import Counter
from collections.abc import Hashable, Iterable
from functools import lru_cache
from hashlib import sha256
from itertools import compress, count, repeat
from operator import add, attrgetter, contains, eq, itemgetter, methodcaller, not_
from typing import Any, Generic, TypeVar

import msgpack
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from infraetl import entropy, pwshape
from infraetl.exceptions import KeyError_
from infraetl.personal import (
    KINDS,
    MIN_PHONE_RUN,
    compact,
    find_personal,
    original_matches,
)
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
#: Stands for "no token": in no password (validation refuses control characters).
_NUL = "\x00"

K = TypeVar("K", bound=Hashable)


def fingerprint_key(fernet_key_bytes: bytes) -> bytes:
    """The fingerprint sub-key: HKDF-SHA256 (info :data:`FP_INFO`) of the raw Fernet key.

    Accepts the 44-character url-safe base64 key (as Fernet takes it) or
    its 32 raw bytes; both give the same sub-key.
    """
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
        "agg",
        "base",
        "charset_milli",
        "classes",
        "deleeted",
        "guesses_milli",
        "hashcat",
        "keyed",
        "leet_form",
        "long_run",
        "lower",
        "masked",
        "runs",
        "secure_score",
        "shannon_milli",
        "strong",
        "tail",
        "tail2",
        "weak",
        "zx_score",
    )

    def __init__(self, password: str) -> None:
        pwl = password.lower()
        self.lower = pwl
        self.deleeted = pwshape.deleet(pwl)
        # "" when de-leeting changes nothing: no token is in "", no leet finding.
        self.leet_form = self.deleeted if self.deleeted != pwl else ""
        self.runs = pwshape.digit_runs(password)
        self.tail = self.runs[-1] if self.runs and password.endswith(self.runs[-1]) else ""
        self.tail2 = self.tail if len(self.tail) == 2 and len(password) > 2 else _NUL
        self.long_run = any(len(r) >= MIN_PHONE_RUN for r in self.runs)
        self.strong = entropy.is_strong(password)
        self.weak = not self.strong
        self.classes = entropy.classes(password)
        self.secure_score = entropy.secure_score(password)
        bits = entropy.charset_entropy(password)
        self.charset_milli = round(bits * 1000)
        self.shannon_milli = round(entropy.shannon_entropy(password) * 1000)
        score, guesses = entropy.cached_strength(password)
        self.zx_score = score
        self.guesses_milli = round(guesses * 1000)
        self.hashcat = pwshape.hashcat_mask(password)
        self.base = pwshape.base_word(password)
        self.masked = mask(password) if password else ""
        #: The small-domain figures, counted together (one dict update per password).
        self.agg = (entropy.complexity(password), self.strong,
                    min(int(bits // HIST_STEP), HIST_BINS - 1), score,
                    pwshape.length_bucket(password), pwshape.charset_name(password),
                    pwshape.trailing_digits(password))
        #: (fp_key, fingerprint, base-word fingerprint) for the last key used; one
        #: tuple so that a thread switching keys never pairs a key with another's fp.
        self.keyed: tuple[bytes, bytes, bytes | None] = (b"", b"", None)

    def fingerprints(self, password: str, fp_key: bytes) -> tuple[bytes, bytes, bytes | None]:
        """(fp_key, fingerprint, base-word fingerprint), cached for the last key."""
        keyed = self.keyed
        if keyed[0] != fp_key:
            base_fp = fingerprint(fp_key, _BASE_DOMAIN + self.base) if self.base else None
            keyed = self.keyed = (fp_key, fingerprint(fp_key, password), base_fp)
        return keyed


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

    __slots__ = ("cap", "counts", "evicted_keys", "evicted_sharing", "exact", "labels")

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


def _hits(flags: Iterable[Any]) -> set[int]:
    return set(compress(count(), flags))


def _tokens(values: list[str]) -> list[str]:
    """Lowercased, with "" replaced by a token no password contains (``"" in s`` is True)."""
    lowered = list(map(str.lower, values))
    return [v or _NUL for v in lowered] if "" in lowered else lowered


def _suspects(n: int, pws: list[str], inf: list[PasswordInfo], firsts: list[str],
              lasts: list[str], usernames: list[str], dobs: list[str], emails: list[str],
              cities: list[str]) -> set[int]:
    """Users who may hold personal information: a superset of what ``personal`` finds.

    Every test is a C-level ``map`` over whole columns (~70 ns a user each),
    so the exact per-user checks run only for the few users picked here.
    Each pre-test covers one or more kinds of ``personal.find_personal``:
    names/username/year in the password (original and extended kinds, the
    e-mail of a ``first.last@`` user, which is made of the names), reversed
    names, names in the de-leeted password, a two-digit tail equal to
    ``yy``; users with an unusual name, city or e-mail, or with a run of
    4+ digits (phone, ddmm), are always looked at.
    """
    pwls = list(map(attrgetter("lower"), inf))
    fl, ll, ul = _tokens(firsts), _tokens(lasts), _tokens(usernames)
    look = _hits(map(contains, pwls, fl))
    look |= _hits(map(contains, pwls, ll))
    look |= _hits(map(contains, pwls, ul))
    look |= _hits(map(contains, pws, map(itemgetter(slice(0, 4)), dobs)))
    look |= _hits(map(contains, pwls, map(itemgetter(slice(None, None, -1)), fl)))
    look |= _hits(map(contains, pwls, map(itemgetter(slice(None, None, -1)), ll)))
    look |= _hits(map(eq, map(attrgetter("tail2"), inf), map(itemgetter(slice(2, 4)), dobs)))
    look |= _hits(map(attrgetter("long_run"), inf))
    leet = list(map(attrgetter("leet_form"), inf))
    if any(leet):
        look |= _hits(map(contains, leet, fl))
        look |= _hits(map(contains, leet, ll))
        look |= _hits(map(contains, leet, map(methodcaller("translate", pwshape.LEET), ul)))
    # Unusual tokens: compact() changes them, or a part of the e-mail is not a name.
    look |= _hits(map(not_, map(str.isalnum, fl)))
    look |= _hits(map(not_, map(str.isalnum, ll)))
    expected = map(add, map(add, fl, repeat(".")), map(add, ll, repeat("@")))
    look |= _hits(map(not_, map(str.startswith, map(str.lower, emails), expected)))
    cl = _tokens(cities)
    look |= _hits(map(contains, pwls, cl))
    squeezed = [c if c.isalnum() else compact(c) for c in cl]
    look |= _hits(map(contains, pwls, squeezed))
    return look


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
        if n == 0:
            return s
        pws = _column(cols, "login.password", n)
        s.users = n
        infos: dict[str, PasswordInfo] = {}
        fps: dict[str, bytes] = {}
        agg: Counter[tuple[Any, ...]] = Counter()
        hashcat: Counter[str] = Counter()
        pw_counts, pw_labels = s.passwords.counts, s.passwords.labels
        base = s.base_words
        milli = [0, 0, 0]
        for pw, c in Counter(pws).items():
            info = infos[pw] = password_info(pw)
            _, fp, base_fp = info.fingerprints(pw, fp_key)
            fps[pw] = fp
            pw_counts[fp] = c
            pw_labels[fp] = pw if reveal else info.masked
            agg[info.agg] += c
            hashcat[info.hashcat] += c
            milli[0] += c * info.charset_milli
            milli[1] += c * info.shannon_milli
            milli[2] += c * info.guesses_milli
            if base_fp is not None:
                base.add(base_fp, c, info.base if reveal else mask(info.base))
        s.entropy_milli, s.shannon_milli, s.guesses_milli = milli
        for (cx, strong, hist_bin, zx, length, charset, trailing), c in agg.items():
            s.complexity[cx] += c
            s.strong += c if strong else 0
            s.entropy_hist[hist_bin] += c
            s.zx[zx] += c
            for table, key in ((s.lengths, length), (s.charsets, charset),
                               (s.trailing, trailing)):
                table[key] = table.get(key, 0) + c
        s.masks.counts.update(hashcat)
        s.empty_passwords = s.complexity["empty"]
        s._add_users(cols, n, pws, infos, fps)
        return s

    def _add_users(self, cols: Columns, n: int, pws: list[str],
                   infos: dict[str, PasswordInfo], fps: dict[str, bytes]) -> None:
        """Per-user findings: C-speed column scans pick the few users worth a look."""
        firsts, lasts, usernames, dobs, emails, cities, phones, cells, nats = (
            _column(cols, p, n) for p in (
                "name.first", "name.last", "login.username", "dob.date", "email",
                "location.city", "phone", "cell", "nat"))
        inf = list(map(infos.__getitem__, pws))
        if "" in nats:
            nats = [x or "unknown" for x in nats]
        for nat, u in Counter(nats).items():
            self._add_nat(nat, u, 0)
        for nat, w in Counter(compress(nats, map(attrgetter("weak"), inf))).items():
            self._add_nat(nat, 0, w)
        look = _suspects(n, pws, inf, firsts, lasts, usernames, dobs, emails, cities)
        kinds = [0] * len(KINDS)
        flagged: Counter[str] = Counter()  # users per password with an original match
        zx = self.zx
        for i in sorted(look):
            pw, info = pws[i], inf[i]
            name, user, year = original_matches(pw, firsts[i], lasts[i], usernames[i], dobs[i])
            self.name_in += name
            self.username_in += user
            self.birthyear_in += year
            if name or user or year:
                flagged[pw] += 1
            found = find_personal(info.lower, info.deleeted, info.runs, info.tail, firsts[i],
                                  lasts[i], usernames[i], dobs[i], emails[i], cities[i],
                                  phones[i], cells[i])
            if found:
                self.personal["any"] += 1
                for k in range(len(KINDS)):
                    if found >> k & 1:
                        kinds[k] += 1
                if info.zx_score > 1:
                    zx[info.zx_score] -= 1
                    zx[1] += 1
        for k, kind in enumerate(KINDS):
            self.personal[kind] += kinds[k]
        # Most secure: the best (score, fp) with at least one user without an original match.
        cands = [(info.secure_score, fps[pw], pw) for pw, info in infos.items()]
        for score, fp, pw in ([max(cands)] if not flagged else sorted(cands, reverse=True)):
            if flagged[pw] < self.passwords.counts[fp]:
                info = infos[pw]
                self.most_secure = [score, fp, pw if self.revealed else info.masked,
                                    list(info.classes), len(pw), info.zx_score]
                break

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
