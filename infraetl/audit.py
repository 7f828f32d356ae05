"""The password audit: per-batch findings folded into a mergeable summary.

Per *distinct* password (cached process-wide, ``pwinfo``): the original
complexity class, charset entropy and "strong" rule, Shannon entropy,
zxcvbn without user inputs, the Pipal shape. Per *user*: only the
personal-information checks (``personal``), and only for the users that
whole-column scans pick (``personal.suspects``). When any personal
information is found, that user's zxcvbn score is lowered to
``min(score, 1)``: broadly what zxcvbn given the user's name, username,
e-mail, city and birth date as user inputs would say, at a hundredth of
the cost (zxcvbn per user would be ~170 µs a user).

Nothing reversible is kept: passwords and base words are counted by a
keyed fingerprint (``pwinfo.fingerprint``) and labelled with :func:`mask`
(first and last character and the length), unless the operator opted in
with ``reveal=True``. Hashcat masks and the other shape figures only name
character classes and lengths.

Exactness: every count is exact and merges exactly (sums are integers,
entropies in milli-bits), except the three bounded tallies (``fptally``:
passwords and reuse, hashcat masks, base words). Each is exact while it
holds at most its cap of distinct keys (``reuse.exact`` and
``masks_exact`` in :meth:`AuditSummary.figures`); past it the rarest keys
are evicted, the top entries stay right in practice,
``users_sharing``/``largest_group`` become lower bounds and ``distinct`` an
upper bound (a password evicted and seen again is counted again).
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import compress, repeat
from operator import attrgetter, is_, itemgetter, mul
from typing import Any

import msgpack

from infraetl import entropy
from infraetl.fptally import Tally, remask
from infraetl.personal import KINDS, find_personal, original_matches, suspects
from infraetl.pwinfo import (
    HIST_BINS,
    HIST_STEP,
    PasswordInfo,
    fingerprint,
    fingerprint_key,
    password_info,
    password_infos,
)
from infraetl.pwshape import mask
from infraetl.schema import Columns, column_length

__all__ = ["AuditSummary", "PasswordInfo", "fingerprint", "fingerprint_key", "mask",
           "password_info"]

#: Distinct fingerprints kept exactly (≈ 40 MB in memory, ≈ 6 MB serialized at most).
REUSE_CAP = 200_000
MASK_CAP = 4096
BASE_CAP = 4096
#: Nationalities with a row of their own; the rest share "other". Validation takes two capital
#: letters (676 codes) and "unknown" stands for none: every valid code fits, so the table cannot
#: depend on the order of merges. The cap is for what validation would let through otherwise.
NAT_CAP = 26 * 26 + 1
TOP = 10
_VERSION = 1
_USER_FIELDS = ("name.first", "name.last", "login.username", "dob.date", "email",
                "location.city", "phone", "cell", "nat")


def _display(label: str) -> str:
    return label if label else "(empty)"


def _add_counts(into: dict[str, int], other: dict[str, int]) -> None:
    for k, n in other.items():
        into[k] = into.get(k, 0) + n


def _text_columns(cols: Columns, n: int, *, strict: bool) -> list[list[str]]:
    """Password then :data:`_USER_FIELDS` columns; "" for a missing column.

    Not ``strict``: the lists as they are (validation upstream guarantees
    strings). ``strict``: anything not a string becomes "" (the slow path
    taken only when the fast one met a wrong type).
    """
    out = []
    for path in ("login.password", *_USER_FIELDS):
        values = cols.get(path)
        if values is None or len(values) != n:
            values = [""] * n
        elif strict:
            values = [v if isinstance(v, str) else "" for v in values]
        out.append(values)
    return out


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
        self.passwords: Tally[bytes] = Tally(REUSE_CAP)
        self.most_secure: list[Any] | None = None  # [score, fp, label, classes, length, zx]
        self.masks: Tally[str] = Tally(MASK_CAP)
        self.base_words: Tally[bytes] = Tally(BASE_CAP)
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
        """Audit one columnar batch; ``reveal`` keeps plaintext labels (operator opt-in).

        A value that is not a string (validation should have stopped it)
        counts as "" rather than failing the batch.
        """
        n = column_length(cols)
        try:
            return cls._audit(_text_columns(cols, n, strict=False), n, fp_key, reveal)
        except (TypeError, AttributeError):
            return cls._audit(_text_columns(cols, n, strict=True), n, fp_key, reveal)

    @classmethod
    def _audit(cls, columns: list[list[str]], n: int, fp_key: bytes,
               reveal: bool) -> AuditSummary:
        # Whole-batch C-level passes (map/Counter/zip): a Python loop per user
        # or per distinct password costs several times more at 500 a batch.
        s = cls(reveal=reveal)
        s.users = n
        if n == 0:
            return s
        pws = columns[0]
        counts = Counter(pws)
        distinct, cs = list(counts), list(counts.values())
        dinfos = password_infos(distinct)
        keyed = list(map(attrgetter("keyed"), dinfos))
        if not all(map(is_, map(itemgetter(0), keyed), repeat(fp_key))):
            # New passwords (or another key object): HMAC those, once.
            keyed = [k if k[0] is fp_key else info.fingerprints(pw, fp_key)
                     for k, pw, info in zip(keyed, distinct, dinfos, strict=True)]
        fps = list(map(itemgetter(1), keyed))
        s.passwords.counts = dict(zip(fps, cs, strict=True))
        s.passwords.labels = dict(zip(fps, distinct if reveal else
                                      map(attrgetter("masked"), dinfos), strict=True))
        s.entropy_milli, s.shannon_milli, s.guesses_milli = (
            sum(map(mul, map(attrgetter(attr), dinfos), cs))
            for attr in ("charset_milli", "shannon_milli", "guesses_milli"))
        infos = dict(zip(distinct, dinfos, strict=True))
        inf = list(map(infos.__getitem__, pws))
        s.masks.counts = dict(Counter(map(attrgetter("hashcat"), inf)))
        base_fps = list(map(itemgetter(2), keyed))
        if any(base_fps):
            # Several passwords may share a base word: count per user.
            base_of = dict(zip(distinct, base_fps, strict=True))
            base_counts = Counter(map(base_of.__getitem__, pws))
            base_counts.pop(None, None)
            base_labels = dict(zip(base_fps, map(attrgetter(
                "base" if reveal else "base_masked"), dinfos), strict=True))
            base_labels.pop(None, None)
            s.base_words.counts, s.base_words.labels = dict(base_counts), base_labels
        for (cx, strong, hist_bin, zx, length, charset, trailing), c in Counter(
                map(attrgetter("agg"), inf)).items():
            s.complexity[cx] += c
            s.strong += c if strong else 0
            s.entropy_hist[hist_bin] += c
            s.zx[zx] += c
            for table, k in ((s.lengths, length), (s.charsets, charset),
                             (s.trailing, trailing)):
                table[k] = table.get(k, 0) + c
        s.empty_passwords = s.complexity["empty"]
        flagged, flagged_at = s._add_users(columns, inf)
        s._most_secure(pws, list(zip(map(attrgetter("secure_score"), dinfos), fps, distinct, strict=True)),
                       infos, flagged, flagged_at)
        return s

    def _add_users(self, columns: list[list[str]], inf: list[PasswordInfo]) -> tuple[Counter[str], set[int]]:
        """Per-user findings; returns users per password with an original match, and their rows."""
        pws, firsts, lasts, usernames, dobs, emails, cities, phones, cells, nats = columns
        if "" in nats:
            nats = [x or "unknown" for x in nats]
        weak = Counter(compress(nats, map(attrgetter("weak"), inf)))
        for nat, u in Counter(nats).items():
            self._add_nat(nat, u, weak[nat])
        look = suspects(
            pws, list(map(attrgetter("lower"), inf)), list(map(attrgetter("tail2"), inf)),
            list(map(attrgetter("long_runs"), inf)), list(map(attrgetter("leet_form"), inf)),
            firsts, lasts, usernames, dobs, emails, cities, phones, cells)
        kinds = [0] * len(KINDS)
        flagged: Counter[str] = Counter()
        flagged_at: set[int] = set()
        zx = self.zx
        for i in sorted(look):
            pw, info = pws[i], inf[i]
            name, user, year = original_matches(pw, firsts[i], lasts[i], usernames[i], dobs[i])
            self.name_in += name
            self.username_in += user
            self.birthyear_in += year
            if name or user or year:
                flagged[pw] += 1
                flagged_at.add(i)
            found = find_personal(info.lower, info.deleeted, info.runs, info.tail, firsts[i],
                                  lasts[i], usernames[i], dobs[i], emails[i], cities[i],
                                  phones[i], cells[i])
            if found:
                self.personal["any"] += 1
                for k in range(len(KINDS)):
                    kinds[k] += found >> k & 1
                if info.zx_score > 1:
                    zx[info.zx_score] -= 1
                    zx[1] += 1
        for k, kind in enumerate(KINDS):
            self.personal[kind] += kinds[k]
        return flagged, flagged_at

    def _most_secure(self, pws: list[str], ranked: list[tuple[int, bytes, str]],
                     infos: dict[str, PasswordInfo], flagged: Counter[str], flagged_at: set[int]) -> None:
        """The original's "most secure": the best score among users without an original match,
        the first such user's password on a tie (as the original's loop takes it; ties once
        went by the keyed fingerprint, so the same users showed another password under another
        key). ``ranked`` is (score, fp, password) of the distinct passwords."""
        # An empty password is no candidate: the original's loop skips it (its "N/A"; a review).
        held = [r for r in ranked if r[2] and flagged[r[2]] < self.passwords.counts[r[1]]]
        if not held:
            return
        best = max(r[0] for r in held)
        tied = {r[2]: r for r in held if r[0] == best}
        if len(tied) == 1:
            score, fp, pw = next(iter(tied.values()))
        else:  # the first row holding one of them, not flagged itself
            score, fp, pw = next(tied[p] for i, p in enumerate(pws) if p in tied and i not in flagged_at)
        info = infos[pw]
        self.most_secure = [score, fp, pw if self.revealed else info.masked,
                            list(info.classes), len(pw), info.zx_score]

    def _add_nat(self, nat: str, users: int, weak: int) -> None:
        nat = nat[:8]
        if nat not in self.nat and len(self.nat) >= NAT_CAP:
            nat = "other"
        row = self.nat.setdefault(nat, [0, 0])
        row[0] += users
        row[1] += weak

    def mask(self) -> bool:
        """Mask every plaintext label in place (an opted-in summary); True if there were any."""
        if not self.revealed:
            return False
        self.revealed = False
        self.passwords.remask()
        self.base_words.remask()
        if self.most_secure:
            self.most_secure[2] = remask(self.most_secure[2])
        return True

    def merge(self, other: AuditSummary) -> AuditSummary:
        """Fold ``other`` into this summary **in place** and return ``self``.

        Labels stay plaintext only if both sides were built with
        ``reveal=True`` (a summary of no users takes the other's choice).
        """
        if other is self:
            other = AuditSummary.from_bytes(other.to_bytes())
        if self.users == 0 and other.users > 0:
            self.revealed = other.revealed
        if self.revealed and not other.revealed and other.users > 0:
            self.mask()
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
        self.entropy_hist = [a + b for a, b in zip(self.entropy_hist, other.entropy_hist, strict=True)]
        self.zx = [a + b for a, b in zip(self.zx, other.zx, strict=True)]
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
        # Ties keep ours: merges fold batches and runs in their order (``store``), so the
        # first user's password stays, as within a batch.
        if theirs and (self.most_secure is None or theirs[0] > self.most_secure[0]):
            self.most_secure = list(theirs)
            if remask_other:
                self.most_secure[2] = remask(theirs[2])
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
            s.passwords = Tally.from_wire(REUSE_CAP, d["pw"])
            s.masks = Tally.from_wire(MASK_CAP, d["mk"])
            s.base_words = Tally.from_wire(BASE_CAP, d["bw"])
            ms = d["ms"]
            if ms is not None:
                score, fp, label, classes, length, zx = ms
                s.most_secure = [int(score), bytes(fp), str(label), [str(c) for c in classes],
                                 int(length), int(zx)]
            s.lengths, s.charsets, s.trailing = (
                {str(k): int(v) for k, v in d[key].items()} for key in ("len", "cs", "td"))
            for nat, (u, w) in d["nat"].items():
                s._add_nat(str(nat), int(u), int(w))
        except (KeyError, TypeError, AttributeError, ValueError, msgpack.UnpackException) as e:
            raise ValueError(f"not an audit summary ({e.__class__.__name__}: {str(e)[:80]})") from None
        return s

    def figures(self) -> dict[str, Any]:
        """JSON-ready figures: the ``audit`` part of ``last_run`` and ``cumulative``.

        The original's figures keep its names and definitions: ``complexity``
        (plus ``empty``), ``strength``, ``name_in_password``,
        ``username_in_password``, ``birthyear_in_password``, ``top_passwords``
        ``[{password, count}]`` and ``most_secure_password`` ``{password, score,
        classes, length, zxcvbn_score}`` (None without users). Ours:
        ``empty_passwords``; ``entropy_bits`` ``{mean, histogram}`` (10-bit
        bins, "200+"); ``shannon_bits`` and ``guesses_log10`` ``{mean}`` (zxcvbn's
        guesses capped at 1e10, its score-4 threshold);
        ``zxcvbn_score`` ``{"0".."4": n}`` (after the personal-information
        cap); ``reuse`` ``{users_sharing, largest_group (1 when nobody
        shares), distinct, top_reused, exact}``; ``personal_info`` ``{kind: n,
        any}``; ``masks`` ``[{mask, count}]`` (hashcat); ``shape`` ``{length,
        charset, trailing_digits, base_words [{word, count}]}``;
        ``by_nationality`` ``{nat: {users, weak, percent_weak}}``; ``revealed``.
        Every password and base word shown is masked unless ``revealed``.
        """
        n = self.users

        def pct(k: int) -> float:
            return round(100.0 * k / n, 2) if n else 0.0

        def mean(milli: int) -> float:
            return round(milli / 1000 / n, 3) if n else 0.0

        counts = self.passwords.counts
        shared = [c for c in counts.values() if c >= 2]
        labels = self.passwords.labels
        ranked = self.passwords.top(TOP)
        top = [{"password": _display(labels.get(k, "")), "count": c} for k, c in ranked]
        reused = [{"password": _display(labels.get(k, "")), "count": c}
                  for k, c in ranked if c >= 2]
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
                "top_reused": reused,
                "exact": self.passwords.exact,
            },
            "personal_info": dict(self.personal),
            "masks": [{"mask": k, "count": c} for k, c in self.masks.top(TOP)],
            "masks_exact": self.masks.exact and self.base_words.exact,
            "shape": {
                "length": dict(sorted(self.lengths.items(), key=_length_order)),
                "charset": dict(sorted(self.charsets.items(), key=lambda kv: (-kv[1], kv[0]))),
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
