"""Record validation: the producer's structure check and the consumer's type and character check.

Producer (:func:`check_records`, nested API users): every required field of
:data:`schema.FIELDS` is present, not null, not empty (``login.password``
may be ``""``) and of the type the API documents. A well-formed record
costs one generated expression; only a failing one is walked field by
field for its reason.

Consumer (:func:`validate_columns`, a columnar batch) judges characters the
way Unicode does. A record is **rejected** (quarantined as ``"<kind>:<field>"``,
the first failing field in column order) for:

===============  ==============================================================
``control``      C0/C1 controls, DEL, U+2028/U+2029 line/paragraph separators
``bidi``         bidirectional embeddings, overrides, isolates (U+202A–E, U+2066–9)
``invisible``    format characters that are not joiners or marks: U+200B, U+FEFF,
                 U+180E, U+2061–4, U+206A–F, U+FFF9–B, tags (U+E0000–7F), …; and the
                 fillers that print nothing (Hangul U+3164 …, the blank Braille cell)
``private-use``  U+E000–U+F8FF and planes 15–16
``unassigned``   code points unassigned in the running Python's Unicode (incl. nonchars)
``surrogate``    lone surrogates (only a JSON replay can carry them)
``replacement``  U+FFFD: the text was already damaged upstream
``mojibake``     UTF-8 read as Latin-1/cp1252: ``Ã©``, ``Ã¶``, ``â€™``, ``Ð¸``
``type``         a value of the wrong type (``missing`` for null, ``empty`` for "" or a
                 value of nothing that shows: only joiners, soft hyphens, marks)
``range``        an age outside 0–150, a nationality not among the API's 21
``format``       a date, e-mail, nat or offset the statistics could not read: also a
                 date not on the calendar (2011-02-30, hour 25) and an offset outside
                 −12:00…+14:00 in quarter hours
``length``       a text over ``schema.MAX_TEXT`` (256) characters (the producer's check
                 too, so one huge value cannot make its batch too large to send)
``inconsistent`` ages that disagree with their dates by more than a year (``dob.age``:
                 both ages are as of one moment, so their difference is the years from
                 birth to registration); ``range:dob.age`` also for ages as of a moment
                 more than two years past the consumer's clock
===============  ==============================================================

Every real script is **accepted** with its marks: Persian with ZWNJ, ZWJ,
LRM/RLM/ALM, soft hyphens, no-break spaces, diacritics, apostrophes (' ’ ʼ),
dashes. Hostile markup (``<script>``) is data: kept verbatim (the dashboard
escapes it), but counted. Only **warned** (counted as ``"<kind>:<field>"``, record kept
and cleaned): ``whitespace`` at either end (trimmed), ``not-nfc``
(normalised) and, in names and places, ``mixed-script`` (a word mixing
scripts: Latin with a Cyrillic ``Ј``), ``markup`` (a tag, an entity,
``javascript:``) and ``formula`` (a leading ``=``, ``+``, ``@`` or ``-``, which
a spreadsheet would run), and ``inconsistent:registered.date`` for a registration
before birth (the API draws the two dates apart). Passwords are never changed.

Speed: each column is joined into one string and judged in C-speed passes
(one ``bytes.translate`` of its UTF-8 for ASCII controls, substring tests for
outer spaces, a list scan for empties). Only non-ASCII values and the values a
pass flags are judged one by one: once per distinct value per process (names
and places repeat), remembered in a bounded cache. Not thread-safe: one
consumer loop validates.
"""

from __future__ import annotations

import datetime
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache
from itertools import compress, filterfalse, repeat
from operator import contains, is_not
from typing import Any, NamedTuple

import numpy as np

from . import schema
from .schema import FIELDS, INT_MAX, INT_MIN, MAX_TEXT, MAY_BE_EMPTY, NATIONALITIES, Columns, Field

# ---------------------------------------------------------------- producer side

_SPLIT = {f.path: tuple(f.path.split(".")) for f in FIELDS}
# Beyond schema.INT_MIN..INT_MAX a whole-document JSON file's integer is a type error, as
# orjson's float is, and as the typed decoder refuses it.
_OPTIONAL_DEFAULTS: dict[str, Any] = {"id.name": "", "id.value": None}


def _fast_check_source(name: str, *, row: bool) -> str:
    """Source of one function checking every field of a well-formed user (from FIELDS).

    It returns True/False, or with ``row`` the user's values in column order
    (the flattened row, read while the record is hot in the cache) or None.
    """
    assign, leaves = schema.path_locals("        ")
    conds: list[str] = []
    for f, v in zip(FIELDS, leaves, strict=True):
        fits = f"len({v}) <= {MAX_TEXT}"
        if f.kind == "int":
            conds.append(f"(type({v}) is int and {INT_MIN} <= {v} <= {INT_MAX})")
        elif f.kind == "str|int":
            conds.append(f"((type({v}) is str and {v} != '' and {fits}) "
                         f"or (type({v}) is int and {INT_MIN} <= {v} <= {INT_MAX}))")
        elif f.path == "id.value":
            conds.append(f"({v} is None or (type({v}) is str and {fits}))")
        elif f.path in MAY_BE_EMPTY:
            conds.append(f"(type({v}) is str and {fits})")
        else:
            conds.append(f"(type({v}) is str and {v} != '' and {fits})")
    ok = " and ".join(conds)
    no = "None" if row else "False"
    result = f"({', '.join(leaves)},) if {ok} else None" if row else ok
    return "\n".join([
        f"def {name}(u, dict=dict, str=str, int=int, type=type):",
        "    if type(u) is not dict:",
        f"        return {no}",
        "    try:",
        *assign,
        "    except (KeyError, TypeError, IndexError):",
        f"        return {no}",
        "    return " + result,
    ])


def _compile_fast_check(name: str, *, row: bool) -> Callable[[Any], Any]:
    # Generated from schema.FIELDS so it cannot drift from it; the slow path below is the reference.
    scope: dict[str, Any] = {}
    exec(compile(_fast_check_source(name, row=row), f"<validate.{name}>", "exec"), scope)  # noqa: S102
    return scope[name]  # type: ignore[no-any-return]


_fast_ok = _compile_fast_check("fast_check", row=False)
_fast_row = _compile_fast_check("fast_row", row=True)


_TYPES = {"int": (int,), "str|int": (str, int), "str": (str,)}


def record_problem(user: Any) -> str | None:
    """The first reason ``user`` fails the producer's check, or None (the reference check)."""
    if type(user) is not dict:
        return "type:record"
    for f in FIELDS:
        node: Any = user
        parts = _SPLIT[f.path]
        for i, part in enumerate(parts):
            if type(node) is not dict:
                return f"type:{'.'.join(parts[:i])}"
            node = node.get(part)
            if node is None:
                break
        if node is None:
            if f.required:
                return f"missing:{f.path}"
            continue
        if type(node) not in _TYPES[f.kind]:  # exact types: True is not an age
            return f"type:{f.path}"
        if type(node) is int and not INT_MIN <= node <= INT_MAX:  # msgpack carries 64 bits
            return f"type:{f.path}"
        if node == "" and f.path not in MAY_BE_EMPTY:
            return f"empty:{f.path}"
        if type(node) is str and len(node) > MAX_TEXT:
            return f"length:{f.path}"
    return None


def _fill_optional(user: dict[str, Any]) -> dict[str, Any]:
    """A copy of a valid user with absent or null optional fields set to their defaults."""
    ident = user.get("id") or {}
    return {**user, "id": {"name": ident.get("name") or "", "value": ident.get("value")}}


def check_records(users: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Split API users into the well-formed ones and rejection counts by first reason."""
    good: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    for u in users:
        if _fast_ok(u):
            good.append(u)
            continue
        why = record_problem(u)
        if why is None:
            good.append(_fill_optional(u))
        else:
            reasons[why] += 1
    return good, reasons


def check_rows(users: list[dict[str, Any]]) -> tuple[list[schema.Row], Counter[str], list[int]]:
    """:func:`check_records` that flattens as it checks (the producer's checker).

    Returns the good users as rows in column order (``schema.rows_to_columns``
    makes the batch), the rejection counts, and the index in ``users`` of each
    good one. Reading each record once, while it is hot in the cache, costs
    about half as much as checking the batch and flattening it later. A tuple
    among ``users`` is a row that ``sources.typed`` already decoded and
    checked (JSON parsers never make tuples): it is taken as it is.
    """
    rows: list[schema.Row] = []
    reasons: Counter[str] = Counter()
    where: list[int] = []
    for i, u in enumerate(users):
        if type(u) is tuple:  # a row already: sources.typed decoded and checked it
            rows.append(u)
            where.append(i)
            continue
        r = _fast_row(u)
        if r is None:
            why = record_problem(u)
            if why is not None:
                reasons[why] += 1
                continue
            r = schema.row_of(_fill_optional(u))
        rows.append(r)
        where.append(i)
    return rows, reasons, where


check_rows.rows = True  # type: ignore[attr-defined]  # Collector: records come back as rows


# ---------------------------------------------------------------- characters

#: Invisible or directional characters that belong in real text: kept.
ALLOWED_FORMAT = frozenset("\u00ad\u061c\u200c\u200d\u200e\u200f\u2060")
#: Printable characters that show nothing (Hangul fillers, the blank Braille cell): ``invisible``.
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_CATEGORY_KIND = {"Cc": "control", "Zl": "control", "Zp": "control", "Cs": "surrogate",
                  "Co": "private-use", "Cn": "unassigned", "Cf": "invisible"}
# UTF-8 bytes read as Latin-1 or cp1252. A lead Ã/Â followed by any continuation
# (Latin-1 symbols or cp1252's punctuation); so the leads of the scripts whose mojibake
# is common: Latin Extended-A (Ä Å: Turkish ğ = "ÄŸ", Polish ł = "Å‚"), Greek (Î Ï),
# Cyrillic (Ð Ñ Ò Ó: "Ð¸"), Hebrew and Arabic (× Ø Ù Ú Û). The other 2-byte leads are
# the accented capitals of upper-case names (É Í Ç Ê …): only by a Latin-1 symbol other
# than the no-break space ("JOSÉ\u00a0MARÍA", "JOSÉ–MARÍA" are real text). 3-byte leads
# by two continuations ("â€™").
_CONT = "\u0080-\u00bf\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152" \
        "\u017d\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178"
# Deleting these from UTF-8 leaves only ASCII control characters (and DEL).
_NOT_ASCII_CONTROL = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_MOJIBAKE = re.compile(f"[\u00c2-\u00c5\u00ce-\u00d3\u00d7-\u00db][{_CONT}]"
                       f"|[\u00c6-\u00cd\u00d4-\u00d6\u00dc-\u00df][\u00a1-\u00bf]"
                       f"|[\u00e0-\u00ef][{_CONT}]{{2}}")


def char_problem(c: str) -> str | None:
    """The rejection kind of one non-printable character, or None if it is allowed."""
    if c in ALLOWED_FORMAT:
        return None
    if c in _BIDI:
        return "bidi"
    cat = unicodedata.category(c)
    if cat == "Zs":  # no-break and other spaces: printable in all but name
        return None
    return _CATEGORY_KIND.get(cat, "invisible")


_NOT_A_SCRIPT = frozenset({"MODIFIER", "FEMININE", "MASCULINE", "MICRO"})
_HAN = ("CJK", "HIRAGANA", "KATAKANA", "IDEOGRAPHIC", "HALFWIDTH KATAKANA", "KATAKANA-HIRAGANA")


@lru_cache(maxsize=8192)
def script_of(c: str) -> str | None:
    """The script of a letter, from its Unicode name ("LATIN", "CYRILLIC", …); None for common."""
    name = unicodedata.name(c, "")
    if name.startswith(_HAN):
        return "HAN"  # Japanese mixes kanji and kana in one word
    word = name.split(" ", 1)[0]
    return None if not word or word in _NOT_A_SCRIPT else word


def mixed_script(text: str) -> bool:
    """Whether one word of ``text`` has letters of two scripts (marks and joiners stay in the word)."""
    scripts: set[str] = set()
    for c in text:
        if c.isalpha():
            s = script_of(c)
            if s is not None:
                scripts.add(s)
        elif c in ALLOWED_FORMAT or unicodedata.category(c)[0] == "M":
            continue  # inside the word: a soft hyphen or an LRM must not split "ра\u00adypal" in two
        else:
            if len(scripts) > 1:
                return True
            scripts.clear()
    return len(scripts) > 1


class Verdict(NamedTuple):
    """What validation makes of one value."""

    reject: str | None             # rejection kind, or None
    warnings: tuple[str, ...]      # warning kinds (only when not rejected)
    value: str                     # the cleaned value


SECRET, PLAIN, NAME = "secret", "plain", "name"
#: Free text about people and places: also checked for mixed scripts.
NAME_FIELDS = frozenset({"name.title", "name.first", "name.last", "location.street.name",
                         "location.city", "location.state", "location.country",
                         "location.timezone.description"})


def judge(value: str, policy: str = PLAIN) -> Verdict:
    """Judge one string: reject, or keep with warnings and a cleaned value (see module doc)."""
    if not value.isprintable():
        for c in value:
            if not c.isprintable():
                kind = char_problem(c)
                if kind is not None:
                    return Verdict(kind, (), value)
    if "\ufffd" in value:
        return Verdict("replacement", (), value)
    if not value.isascii() and _MOJIBAKE.search(value):
        return Verdict("mojibake", (), value)
    if not value.isascii() and not _FILLERS.isdisjoint(value):
        return Verdict("invisible", (), value)
    if policy == SECRET:
        return Verdict(None, (), value)
    warnings, clean = [], value.strip()
    if clean != value:
        warnings.append("whitespace")
    if not unicodedata.is_normalized("NFC", clean):
        warnings.append("not-nfc")
        clean = unicodedata.normalize("NFC", clean)
    if clean and not clean.isascii() and all(c in ALLOWED_FORMAT or unicodedata.category(c)[0] == "M"
                                             for c in clean):
        return Verdict("empty", (), value)  # nothing that shows: joiners, soft hyphens, marks
    if policy == NAME:
        if not clean.isascii() and mixed_script(clean):
            warnings.append("mixed-script")
        if _MARKUP.search(clean):
            warnings.append("markup")  # kept verbatim and escaped on the page, but counted
        elif clean[:1] in _FORMULA:
            warnings.append("formula")  # a spreadsheet would run it: "=cmd|…"
    return Verdict(None, tuple(warnings), clean)


#: Markup or a script URL in a name or a place: a tag, an entity, ``javascript:``.
_MARKUP = re.compile(r"<\s*[a-z/!?]|&#?[a-z0-9]+;|javascript\s*:", re.IGNORECASE)
#: What starts a spreadsheet formula (no name or place begins so).
_FORMULA = frozenset("=+@-")


class _Verdicts:
    """Verdicts of one policy, remembered across batches (names and places repeat).

    Clean values in a set, the others in a dict: a column's distinct values
    are sorted out by C-level set operations; only new ones are judged in
    Python. Bounded: past ``limit`` entries it starts afresh, and values
    longer than ``longest`` are not remembered.
    """

    def __init__(self, policy: str, limit: int = 100_000, longest: int = 64) -> None:
        self.policy, self.limit, self.longest = policy, limit, longest
        self.clean: set[str] = set()
        self.bad: dict[str, Verdict] = {}

    def judge(self, values: set[str]) -> dict[str, Verdict]:
        """The non-clean verdicts among distinct ``values``."""
        unknown = values - self.clean
        if not unknown:
            return {}
        out = {v: self.bad[v] for v in unknown.intersection(self.bad)}
        fresh = unknown.difference(self.bad)
        if len(self.clean) + len(self.bad) + len(fresh) > self.limit:
            self.clean.clear()
            self.bad.clear()
        for v in fresh:
            vd = judge(v, self.policy)
            keep = len(v) <= self.longest
            if vd.reject is None and not vd.warnings:
                if keep:
                    self.clean.add(v)
            else:
                out[v] = vd
                if keep:
                    self.bad[v] = vd
        return out


_VERDICTS = {policy: _Verdicts(policy) for policy in (SECRET, PLAIN, NAME)}


# ---------------------------------------------------------------- consumer side

@dataclass
class Validated:
    """A validated batch: the kept rows (cleaned) and what happened to the others."""

    cols: Columns
    quarantine: Counter[str]  # rejected records by first reason
    warnings: Counter[str]    # warnings of kept records by kind and field


_AGE_RANGE = (0, 150)
_RANGED = frozenset({"dob.age", "registered.age"})
_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)")
_FORMATS: dict[str, re.Pattern[str]] = {
    "nat": re.compile(r"[A-Z]{2}"),
    # UTC-12:00 to UTC+14:00, in quarter hours (the API's are whole, half and +5:45).
    "location.timezone.offset": re.compile(r"\+?(?:(?:0?\d|1[0-3]):(?:00|15|30|45)|14:00)"
                                           r"|-(?:(?:0?\d|1[01]):(?:00|15|30|45)|12:00)"),
    "email": re.compile(r"[^@\s]+@[^@\s]+"),
    "dob.date": _DATE,
    "registered.date": _DATE,
}
# The API's dates, byte by byte: "YYYY-MM-DDTHH:MM:SS.sssZ" (a digit is "0" + 0..9).
_API_DATE = b"0000-00-00T00:00:00.000Z"


@lru_cache(maxsize=4)
def _api_date_pattern(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(lowest byte, allowed span) at each position of ``n`` API dates end to end."""
    low = np.frombuffer(_API_DATE, dtype=np.uint8)
    span = np.array([0 if c in b"-T:.Z" else 9 for c in _API_DATE], dtype=np.uint8)
    return np.tile(low, n), np.tile(span, n)


def _api_dates_ok(col: list[str]) -> bool:
    """All values in the API's exact ``YYYY-MM-DDTHH:MM:SS.sssZ`` form (vectorised)."""
    joined = "".join(col)
    if len(joined) != 24 * len(col) or not joined.isascii():
        return False
    low, span = _api_date_pattern(len(col))
    a = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    return bool(((a - low) <= span).all())  # uint8: a byte below the lowest wraps high


_NATIONALITIES = frozenset(NATIONALITIES)
#: The text columns whose values the figures count or the page shows: the consumer judges their
#: length (a pass over each). The producer judges every column's; it is the one a value over
#: the limit could stop (its batch too large to seal). A date, nat or offset over the limit
#: fails its format, and says length there (see check_format).
_SHOWN_TEXT = NAME_FIELDS - {"location.street.name"} | {"gender", "email", "login.username", "login.password"}
_DAYS_IN_MONTH = np.array([0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.uint8)


def _date_bytes(col: list[str]) -> np.ndarray | None:
    """The dates of ``col`` as an (n, 24) array of their ASCII bytes, or None unless every one has
    the API's exact form."""
    if not _api_dates_ok(col):
        return None
    return np.frombuffer("".join(col).encode("ascii"), dtype=np.uint8).reshape(len(col), 24)


def _on_calendar(raw: np.ndarray) -> bool:
    """Every date of :func:`_date_bytes` is on the calendar: year 0001–9999, month 1–12, its day,
    hours, minutes and seconds in range (vectorised)."""
    a = raw - 48  # uint8 digits

    def num(i: int) -> np.ndarray:  # the two digits at i (uint8: at most 99)
        return a[:, i] * 10 + a[:, i + 1]

    month, day = num(5), num(8)
    if not (((month - 1) < 12).all() and (num(11) < 24).all() and (num(14) < 60).all()
            and (num(17) < 60).all()):  # uint8: month 0 wraps high
        return False
    if not (((day - 1) < _DAYS_IN_MONTH[month]).all()) or not a[:, :4].any(axis=1).all():  # year 0000
        return False
    feb29 = (month == 2) & (day == 29)
    if not feb29.any():
        return True
    year = a[feb29, :4].astype(np.int32) @ _YEAR_WEIGHTS
    return bool(((year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))).all())


def _utc(value: str) -> datetime.datetime:
    """A date of the format as a naive UTC datetime; ValueError or OverflowError if there is none
    (2024-02-30; 9999-12-31T23:00-05:00 is past the last day Python knows)."""
    d = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if d.tzinfo is not None:
        d = d.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return d


def _date_exists(value: str) -> bool:
    """A date that matches the format is also on the calendar, in UTC too."""
    try:
        _utc(value)
    except (ValueError, OverflowError):
        return False
    return True


_YEAR_WEIGHTS = np.array([1000, 100, 10, 1], dtype=np.int32)
#: A person's ages are as of one moment: their birth year plus their age may be at most this
#: many years past the consumer's clock (a replay file of an older year is fine).
_FUTURE_SLACK_YEARS = 2
#: What :func:`_life_problems` finds, by code. Registered before birth is only a warning: the
#: API draws the two dates apart, so a user born after 2002 may have an account from before
#: (its ages agree with its dates all the same; a review).
_LIFE_REASONS = (None, "inconsistent:registered.date", "inconsistent:dob.age", "range:dob.age")
_LIFE_WARNING = 1


def _life_problems(dob: np.ndarray, reg: np.ndarray, age: np.ndarray, reg_age: np.ndarray,
                   latest_year: int) -> np.ndarray:
    """Per user, 0 (fine) or the code in :data:`_LIFE_REASONS` of what is wrong with its two
    dates (:func:`_date_bytes` rows) and two ages taken together.

    Both ages are the whole years from their date to one moment (the API's "now"), so
    ``dob.age - registered.age`` is the whole years from birth to registration, or one more;
    one year of slack either way.
    """
    y_d, y_r = (dob[:, :4] - 48).astype(np.int32) @ _YEAR_WEIGHTS, (reg[:, :4] - 48).astype(np.int32) @ _YEAR_WEIGHTS
    # The rest of an API date orders two dates of one year as its bytes do.
    earlier_in_year = (np.ascontiguousarray(reg[:, 5:23]).view("S18").ravel()
                       < np.ascontiguousarray(dob[:, 5:23]).view("S18").ravel())
    years = y_r - y_d - earlier_in_year  # whole years from birth to registration
    out = np.zeros(len(dob), dtype=np.int8)
    out[years < 0] = _LIFE_WARNING
    out[(age - reg_age < years - 1) | (age - reg_age > years + 2)] = 2
    out[y_d + age > latest_year] = 3
    return out


def _life_problem(dob: str, reg: str, age: int, reg_age: int, latest_year: int) -> int:
    """:func:`_life_problems` of one user whose dates have another form (an offset, say)."""
    d, r = _utc(dob), _utc(reg)
    years = r.year - d.year - ((r.month, r.day, r.time()) < (d.month, d.day, d.time()))
    if d.year + age > latest_year:
        return 3
    if not years - 1 <= age - reg_age <= years + 2:
        return 2
    return _LIFE_WARNING if years < 0 else 0


def _format_ok(path: str, value: str) -> bool:
    """One value of a formatted column, judged on its own."""
    if not _FORMATS[path].fullmatch(value):
        return False
    if path == "nat":
        return value in _NATIONALITIES
    if path in ("dob.date", "registered.date"):
        return _date_exists(value)
    return True


def _format_suspect(path: str, values: list[str]) -> bool:
    """Whether some value of a formatted column may not match its format (one or two passes)."""
    if path == "nat":
        return not _NATIONALITIES.issuperset(values)
    if path == "email":
        # [^@\s]+@[^@\s]+ for every value: each holds an "@" and together they hold one each;
        # nothing is empty around one; no whitespace (besides " ", every character \s matches is
        # one isprintable() refuses: a tab, a no-break space...). Any doubt: the pattern decides.
        joined = "\n".join(values)
        return (not all(map(contains, values, repeat("@"))) or joined.count("@") != len(values)
                or "\n@" in joined or "@\n" in joined or joined.startswith("@") or joined.endswith("@")
                or " " in joined or not "".join(values).isprintable())
    pattern = _FORMATS[path]
    return not all(pattern.fullmatch(v) for v in set(values))


def _rows_holding(col: list[Any], wanted: dict[str, Any]) -> list[int]:
    """Indexes of the rows of ``col`` whose value is a key of ``wanted``, in order (C-level)."""
    try:
        return list(compress(range(len(col)), map(wanted.__contains__, col)))
    except TypeError:  # an unhashable value (a list where a name should be): already rejected
        return [i for i, v in enumerate(col) if type(v) is str and v in wanted]


class _Batch:
    """The working state of one validation: rejections, warnings and fixes by row."""

    def __init__(self, cols: Columns, n: int) -> None:
        self.cols, self.n = cols, n
        self.rejected: dict[int, str] = {}
        self.row_warnings: list[tuple[int, str]] = []
        self.fixes: dict[str, dict[int, Any]] = {}
        self.dates: dict[str, np.ndarray] = {}  # a date column's bytes, once check_format read them

    def reject(self, i: int, reason: str) -> None:
        self.rejected.setdefault(i, reason)

    def check_int(self, f: Field) -> None:
        """Type (and, for ages, range) of an integer column."""
        col = self.cols[f.path]
        ints = col
        if set(map(type, col)) != {int}:
            ints = []
            for i, v in enumerate(col):
                if type(v) is int:
                    ints.append(v)
                else:
                    self.reject(i, f"{'missing' if v is None else 'type'}:{f.path}")
        lo, hi = _AGE_RANGE
        if f.path in _RANGED and ints and (min(ints) < lo or max(ints) > hi):
            for i, v in enumerate(col):
                if type(v) is int and not lo <= v <= hi:
                    self.reject(i, f"range:{f.path}")

    def check_str(self, f: Field) -> tuple[list[str], str]:
        """Type-check a text column: its string values (postcode numbers made strings), joined."""
        col = self.cols[f.path]
        if f.required:
            with suppress(TypeError):
                return col, "\n".join(col)  # the join is the type check: it takes nothing but str
        else:  # null and "" are valid here, and need no character check
            values = list(filter(None, col))
            with suppress(TypeError):
                joined = "\n".join(values)
                if len(values) + col.count(None) + col.count("") == len(col):  # no 0, False, []
                    return values, joined
        values, fixes = [], self.fixes.setdefault(f.path, {})
        for i, v in enumerate(col):
            if type(v) is str:
                values.append(v)
            elif v is None:
                if f.required:
                    self.reject(i, f"missing:{f.path}")
            elif type(v) is int and f.kind == "str|int":
                fixes[i] = str(v)
                values.append(fixes[i])
            else:
                self.reject(i, f"type:{f.path}")
        return values, "\n".join(values)

    def check_text(self, f: Field, values: list[str], joined: str) -> None:
        """Judge the characters of a column's strings (see module doc)."""
        path = f.path
        if path in _SHOWN_TEXT and len(joined) > MAX_TEXT and max(map(len, values)) > MAX_TEXT:
            col = self.cols[path]
            for i, v in enumerate(col):
                if type(v) is str and len(v) > MAX_TEXT:
                    self.reject(i, f"length:{path}")
        policy = SECRET if path == "login.password" else NAME if path in NAME_FIELDS else PLAIN
        required = f.required and path not in MAY_BE_EMPTY
        # C-speed passes over the whole column; what they flag is looked at value by value.
        utf8 = joined.encode("utf-8", "surrogatepass")
        controls = len(utf8.translate(None, _NOT_ASCII_CONTROL)) != len(values) - 1  # separators
        empties = required and "" in values
        spaces = policy != SECRET and " " in joined and (
            joined[0] == " " or joined[-1] == " " or "\n " in joined or " \n" in joined)
        non_ascii = len(utf8) != len(joined)
        # Markup or a formula in a name or a place (a warning): one regex and four substring
        # tests over the column, separated by newlines.
        suspect = policy == NAME and bool(_MARKUP.search(joined) or joined[:1] in _FORMULA
                                          or any("\n" + c in joined for c in _FORMULA))
        if not (controls or empties or spaces or non_ascii or suspect):
            return
        # Every non-ASCII value is judged (once per process, see _Verdicts); of the ASCII
        # ones only those with a control character or outer white space.
        cands = set(filterfalse(str.isascii, values)) if non_ascii else set()
        if controls:
            cands.update(filterfalse(str.isprintable, values))
        if spaces:  # str.strip returns the very same object when there is nothing to strip
            cands.update(compress(values, map(is_not, values, map(str.strip, values))))
        if suspect:
            cands.update(v for v in values if _MARKUP.search(v) or v.lstrip()[:1] in _FORMULA)
        verdicts = _VERDICTS[policy].judge(cands) if cands else {}
        if empties:
            verdicts[""] = Verdict(None, (), "")
        if not verdicts:
            return
        fixes = self.fixes.setdefault(path, {})
        col = self.cols[path]
        for i in _rows_holding(col, verdicts):
            v = col[i]
            vd = verdicts[v]
            if vd.reject:
                self.reject(i, f"{vd.reject}:{path}")
            elif required and vd.value == "":
                self.reject(i, f"empty:{path}")
            else:
                self.row_warnings.extend((i, f"{w}:{path}") for w in vd.warnings)
                if vd.value != v:
                    fixes[i] = vd.value

    def cleaned(self, path: str) -> list[Any]:
        """The column with this validation's fixes applied (a copy only if there are any)."""
        col, fixes = self.cols[path], self.fixes.get(path)
        if not fixes:
            return col
        col = list(col)
        for i, v in fixes.items():
            col[i] = v
        return col

    def check_format(self, f: Field) -> None:
        """Reject values the statistics could not read (dates, e-mail, nat, offset)."""
        col = self.cleaned(f.path)
        for i in self.fixes.get(f.path, ()):  # trimmed: the value sent may be over the limit
            if len(self.cols[f.path][i]) > MAX_TEXT:
                self.reject(i, f"length:{f.path}")
        if f.path in ("dob.date", "registered.date"):
            raw = None
            with suppress(TypeError):  # a value of another type (already rejected)
                raw = _date_bytes(col)
            if raw is not None and _on_calendar(raw):
                self.dates[f.path] = raw  # parsed once, for check_life
                return
        else:
            with suppress(TypeError):  # a value of another type (already rejected): go row by row
                if not _format_suspect(f.path, col):
                    return
        sent = self.cols[f.path]  # before trimming: a value padded past the limit is too long
        for i, v in enumerate(col):
            if type(v) is str and len(sent[i]) > MAX_TEXT:
                self.reject(i, f"length:{f.path}")  # as the producer says
            elif type(v) is str and not _format_ok(f.path, v):
                known = f.path == "nat" and _FORMATS["nat"].fullmatch(v) is not None
                self.reject(i, f"{'range' if known else 'format'}:{f.path}")

    def check_life(self) -> None:
        """A user's dates and ages taken together (see :func:`_life_problems`), for the users not
        rejected yet: ages that disagree with their dates, or are as of a moment years ahead, are
        rejected; a registration before birth is a warning."""
        rows = [i for i in range(self.n) if i not in self.rejected] if self.rejected else None
        if rows == []:
            return
        pick = (lambda col: col) if rows is None else (lambda col: [col[i] for i in rows])
        dob, reg = pick(self.cleaned("dob.date")), pick(self.cleaned("registered.date"))
        age, reg_age = pick(self.cols["dob.age"]), pick(self.cols["registered.age"])
        latest = time.gmtime().tm_year + _FUTURE_SLACK_YEARS
        raw_d, raw_r = self.dates.get("dob.date"), self.dates.get("registered.date")
        if raw_d is not None and raw_r is not None:
            if rows is not None:
                raw_d, raw_r = raw_d[rows], raw_r[rows]
        else:  # some date of another form, or a rejected one: those left may all have the API's
            raw_d, raw_r = _date_bytes(dob), _date_bytes(reg)
        if raw_d is not None and raw_r is not None:
            codes = _life_problems(raw_d, raw_r, np.array(age, dtype=np.int64), np.array(reg_age, dtype=np.int64),
                                   latest).tolist()
        else:
            codes = [_life_problem(*v, latest) for v in zip(dob, reg, age, reg_age, strict=True)]
        for j, code in enumerate(codes):
            if code:
                i = j if rows is None else rows[j]
                if code == _LIFE_WARNING:
                    self.row_warnings.append((i, _LIFE_REASONS[code]))  # type: ignore[arg-type]
                else:
                    self.reject(i, _LIFE_REASONS[code])  # type: ignore[arg-type]

    def result(self) -> Validated:
        quarantine = Counter(self.rejected.values())
        warnings = Counter(w for i, w in self.row_warnings if i not in self.rejected)
        cols = {path: self.cleaned(path) for path in schema.FIELD_PATHS}
        if self.rejected:
            cols = schema.take(cols, [i for i in range(self.n) if i not in self.rejected])
        return Validated(cols, quarantine, warnings)


def validate_columns(cols: Columns) -> Validated:
    """Validate a decrypted columnar batch: keep and clean the good rows, count the rest by reason."""
    n = schema.column_length(cols)
    if any(type(v) is not list or len(v) != n for v in cols.values()):
        raise ValueError("columns of a batch must be lists of one length (the wire checks this)")
    batch = _Batch({p: cols[p] for p in schema.FIELD_PATHS if p in cols}, n)
    for f in FIELDS:
        if f.path not in batch.cols:
            batch.cols[f.path] = [_OPTIONAL_DEFAULTS.get(f.path)] * n
            for i in range(n if f.required else 0):
                batch.reject(i, f"missing:{f.path}")
        elif f.kind == "int":
            batch.check_int(f)
        else:
            batch.check_text(f, *batch.check_str(f))
            if f.path in _FORMATS:
                batch.check_format(f)
    if n:
        batch.check_life()
    return batch.result()
