"""Render the dashboard from a stats document: template context, HTML page, sections, files.

``stats`` is what ``/api/stats.json`` returns (see the dashboard section of
DESIGN.md). Any key may be missing, empty or of the wrong type (before the
first run, or from an older state): the page then says "no data yet".

The context every template gets (built by :func:`build_context`)::

    generated_at   float (the JSON's, to compare against in the live script)
    updated        "2024-05-01 12:20:00 UTC" or "never"; updated_iso for <time>
    masked         False only if the operator opted in to plaintext passwords
    last_run_id, last_run_state     str | None
    views          {"last": View, "all": View}
    runs           {"rows": [RunRow], "total": int, "shown": int}

    View   = {id, title, subtitle, empty: bool, cards: [Card], panels: [Panel]}
    Card   = {id, label, value: str, sub: str | None}
    Panel  = {id (data-chart), key (JSON path), title, svg: Markup | None,
              columns: [str], align: ["num" | "txt" per column], rows: [Row],
              note: str | None, wide: bool}
    Row    = {key: str, cells: [(display: str, raw: number | str | None)]}
    RunRow = {run_id, source, requested, delivered, quarantined, duration,
              started, state, state_class, reason}   (display strings)
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import pathlib
import re
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import jinja2
from markupsafe import Markup

from infraetl.dashboard import charts
from infraetl.dashboard.charts import UNSAFE, fmt_int, fmt_num, fmt_pct
from infraetl.figures import COUNTED_STATES, json_default
from infraetl.pwshape import mask

UTC = timezone.utc  # datetime.UTC needs Python 3.11; we support 3.10

logger = logging.getLogger(__name__)

TOP_N = 10
MAX_RUN_ROWS = 50
STATIC_DIR = pathlib.Path(__file__).parent / "static"
#: Files served under /static/ and copied by write_site: name -> content type.
STATIC_FILES: dict[str, str] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
#: The ids of the swappable sections, in page order.
SECTION_IDS: tuple[str, ...] = ("status", "last", "all", "runs")
_STATES = {"running", "complete", "failed", "cancelled"}


def _finalize(value: Any) -> Any:
    # Every {{ }} of plain text goes through here before autoescape: neutralise bidi overrides.
    if type(value) is str:  # exactly str: Markup (our own SVG, sections) passes untouched
        return value.translate(UNSAFE)
    return "" if value is None else value


ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("infraetl.dashboard", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    finalize=_finalize,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,
)


# ---------------------------------------------------------------- sanitising

def _plain_slow(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain_slow(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_slow(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy scalar
        return _plain_slow(value.item())
    return str(value)


def _plain(value: Any) -> Any:
    """Deep-copy into JSON types: numpy scalars unwrapped, NaN/inf -> None, keys -> str."""
    try:
        # The C encoder and decoder copy a large state ten times faster than a Python walk.
        text = json.dumps(value, default=json_default)
    except (TypeError, ValueError):  # e.g. a numpy integer as a key
        return _plain_slow(value)
    return json.loads(text, parse_constant=lambda _: None)


def mask_password(value: Any) -> str:
    """Return ``value`` in the audit's masked form (``s****t``); idempotent."""
    text = "" if value is None else str(value)
    return "(empty)" if text in ("", "(empty)") else mask(text)


def _mask_audit(figures: Any) -> None:
    # Defence in depth: the audit masks already, but a plaintext must never reach a page or the API.
    audit = _map(_map(figures).get("audit"))
    rows = [*_rows(audit.get("top_passwords")), *_rows(_map(audit.get("reuse")).get("top_reused"))]
    best = audit.get("most_secure_password")
    for row in [*rows, *([best] if isinstance(best, dict) else [])]:
        if "password" in row:
            row["password"] = mask_password(row["password"])
    for row in _rows(_map(audit.get("shape")).get("base_words")):
        if "word" in row:
            row["word"] = mask_password(row["word"])


def revealed(doc: dict[str, Any]) -> bool:
    """True only if the operator opted in to plaintext passwords (``passwords_revealed``)."""
    return doc.get("passwords_revealed") is True


def public_stats(stats: Any, *, generated_at: float) -> dict[str, Any]:
    """The stats as served and rendered: JSON-safe, passwords masked, ``generated_at`` set."""
    doc = _plain(stats) if isinstance(stats, dict) else {}
    doc["generated_at"] = generated_at
    for key in ("last_run", "cumulative"):
        doc.setdefault(key, None)
        if not revealed(doc):
            _mask_audit(doc[key])
    if not isinstance(doc.get("runs"), list):
        doc["runs"] = []
    return doc


def to_json(doc: Any) -> bytes:
    """Serialise a public document (ASCII-only, so bidi characters travel escaped)."""
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")


# ---------------------------------------------------------------- figures -> panels

def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _counts(value: Any) -> list[tuple[str, float]]:
    """The numeric entries of a {label: count} mapping."""
    return [(str(k), n) for k, v in _map(value).items() if (n := _num(v)) is not None]


def _top(items: list[tuple[str, float]], n: int = TOP_N) -> list[tuple[str, float]]:
    return sorted(items, key=lambda kv: (-kv[1], kv[0]))[:n]


def _numeric_key(label: str) -> float:
    match = re.match(r"[+-]?\d+(\.\d+)?", label)
    return float(match.group()) if match else math.inf


def _ordered(items: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return sorted(items, key=lambda kv: (_numeric_key(kv[0]), kv[0]))


def _share_rows(items: list[tuple[str, float]], labels: dict[str, str] | None = None,
                total: float | None = None) -> list[dict[str, Any]]:
    # A share of all users, not of the rows shown: a top-10 must not add up to 100 %.
    total = total or sum(v for _, v in items) or 1.0
    return [{"key": k, "cells": [((labels or {}).get(k, k), k), (fmt_int(v), v),
                                 (fmt_pct(100 * v / total), round(100 * v / total, 1))]}
            for k, v in items]


def _panel(pid: str, key: str, title: str, items: list[tuple[str, float]], draw: Callable[..., Markup],
           header: str, *, labels: dict[str, str] | None = None, note: str | None = None,
           total: float | None = None, counted: str = "Users", **opts: Any) -> dict[str, Any]:
    shown = [((labels or {}).get(k, k), v) for k, v in items]
    return {"id": pid, "key": key, "title": title, "note": note, "wide": False,
            "svg": draw(shown, label=title, **opts) if items else None,
            "columns": [header, counted, "Share"], "rows": _share_rows(items, labels, total)}


def _table_panel(pid: str, key: str, title: str, columns: list[str], rows: list[dict[str, Any]],
                 note: str | None = None) -> dict[str, Any]:
    return {"id": pid, "key": key, "title": title, "svg": None, "columns": columns, "rows": rows,
            "note": note, "wide": False}


#: The personal-information kinds (``personal.KINDS``, and ``any``) as the page names them.
PERSONAL_KINDS = {"first_name": "First name", "last_name": "Last name", "username": "Username",
                  "birth_year": "Birth year", "email_local": "E-mail name", "city": "City",
                  "phone_digits": "Phone digits", "birth_date": "Birth day and month",
                  "name_reversed": "Name reversed", "leet": "Leetspeak",  # a chart label: 20 characters at most
                  "any": "Any of these"}

COMPLEXITY = {"lowercase_only": "Lowercase only", "numbers_only": "Numbers only",
              "letters_and_numbers": "Letters and numbers", "includes_symbols": "Includes symbols",
              "empty": "Empty"}


#: Most bins a filled histogram draws; keys past them share one last bin.
MAX_BINS = 100


def _filled(items: list[tuple[str, float]], step: int | None = None, suffix: str = "") -> list[tuple[str, float]]:
    """Integer-keyed bins (``"20s"`` with ``suffix="s"``) in order, with the missing ones between
    as zero: a chart must not draw the 10s beside the 30s, or 2006 beside 2008 (a review).

    ``step`` is the bins' width; by default their own spacing (every key is on the grid: the
    smallest gap dropped 11 from 6, 8, 11). The bins are drawn over the :data:`MAX_BINS` that
    hold the most users; keys outside them (a 245-character password among 8–16, a registration
    in 1900 among 2003–2026) share one bin on their side, ``"200–245"``, instead of hundreds of
    empty bins, and the bins between stay whole (they were all dropped once; then a low outlier
    put every real year in the last bin: two reviews)."""
    size = len(suffix)
    keyed = {int(k[:len(k) - size]): v for k, v in items
             if k.endswith(suffix) and re.fullmatch(r"-?\d+", k[:len(k) - size])}
    if not keyed or len(keyed) != len(items):
        return _ordered(items)
    keys = sorted(keyed)
    step = step or math.gcd(*(b - a for a, b in itertools.pairwise(keys))) or 1
    # The window of MAX_BINS bins, starting at a key, that holds the most (the first such).
    most, lo, hi, held, end = -1.0, 0, 0, 0.0, 0
    for start in range(len(keys)):
        while end < len(keys) and (keys[end] - keys[start]) // step < MAX_BINS:
            held += keyed[keys[end]]
            end += 1
        if held > most:
            most, lo, hi = held, start, end
        held -= keyed[keys[start]]

    def shared(side: list[int]) -> list[tuple[str, float]]:
        if not side:
            return []
        label = f"{side[0]}{suffix}" if len(side) == 1 else f"{side[0]}–{side[-1]}{suffix}"
        return [(label, sum(keyed[k] for k in side))]

    inside = range(keys[lo], keys[hi - 1] + step, step)
    return shared(keys[:lo]) + [(f"{k}{suffix}", keyed.get(k, 0.0)) for k in inside] + shared(keys[hi:])


def _trimmed(items: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Bins without the empty tail (the audit's entropy bins run to "200+")."""
    end = len(items)
    while end > 1 and not items[end - 1][1]:
        end -= 1
    return items[:end]


def _top_values(value: Any) -> list[tuple[str, float]]:
    """A top-k list [{value, count}] as items."""
    return [(str(r.get("value")), n) for r in _rows(value) if (n := _num(r.get("count"))) is not None][:TOP_N]


def _top_note(value: Any) -> str | None:
    """What a top-k list's counts mean once its sketch is past exact (see ``sketches.TopK``)."""
    slack = max((m - n for r in _rows(value) if (n := _num(r.get("count"))) is not None
                 and (m := _num(r.get("max_count"))) is not None), default=0.0)
    if slack <= 0:
        return None
    return f"estimates (too many distinct values to count each): every count is at least the one shown, " \
           f"and at most {fmt_int(slack)} more"


def _panels(f: dict[str, Any], masked: bool) -> list[dict[str, Any]]:
    audit = _map(f.get("audit"))
    gender = _top(_counts(f.get("gender")))
    entropy = _trimmed(_filled(_counts(_map(audit.get("entropy_bits")).get("histogram"))))
    ent_step = int(_numeric_key(entropy[1][0]) - _numeric_key(entropy[0][0])) if len(entropy) > 1 else 10
    ent_labels = {k: f"{k}–{int(_numeric_key(k)) + ent_step}" if k.isdigit() else k for k, _ in entropy}
    zx = _map(audit.get("zxcvbn_score"))
    strength = [(s, _num(zx.get(s)) or 0.0) for s in "01234"] if zx else []
    complexity = [(k, v) for k in COMPLEXITY if (v := _num(_map(audit.get("complexity")).get(k))) is not None]
    total = _num(f.get("total_users"))

    def panel(*a: Any, **kw: Any) -> dict[str, Any]:
        return _panel(*a, total=total, **kw)

    panels = [
        panel("gender", "gender", "Gender", gender, charts.donut_chart, "Gender"),
        panel("age_decades", "age.decades", "Age by decade",
              _filled(_counts(_map(f.get("age")).get("decades")), 10, "s"), charts.bar_chart, "Decade",
              x_title="Age", y_title="Users"),
        panel("countries", "countries", "Top 10 countries", _top(_counts(f.get("countries"))),
               charts.hbar_chart, "Country", note=f"{len(_map(f.get('countries'))):,} countries in all"),
        panel("complexity", "audit.complexity", "Password complexity", complexity, charts.hbar_chart,
               "Complexity", labels=COMPLEXITY),
        panel("password_length", "password_length.histogram", "Password length",
               _filled(_counts(_map(f.get("password_length")).get("histogram")), 1), charts.histogram, "Length",
               x_title="Characters", y_title="Users"),
        panel("registration_years", "registration_years", "Registrations by year",
               _filled(_counts(f.get("registration_years")), 1), charts.line_chart, "Year",
               x_title="Year", y_title="Users", width=960, height=240),
        panel("timezones", "timezones", "Top 10 time zones", _top(_counts(f.get("timezones"))),
               charts.hbar_chart, "UTC offset"),
        panel("strength", "audit.zxcvbn_score", "Strength (zxcvbn score)", strength, charts.bar_chart,
               "Score", x_title="Score (0 weakest – 4 strongest)", y_title="Users"),
        panel("entropy", "audit.entropy_bits.histogram", "Entropy", entropy, charts.histogram, "Bits",
               labels=ent_labels, x_title="Estimated entropy (bits)", y_title="Users",
               note=(f"mean {fmt_num(m)} bits" if (m := _num(_map(audit.get("entropy_bits")).get("mean")))
                     is not None else None)),
        panel("personal_info", "audit.personal_info", "Personal information in passwords",
               _top(_counts(audit.get("personal_info")), n=64), charts.hbar_chart, "Kind",  # every kind
               labels=PERSONAL_KINDS),
        _weak_panel(audit),
        _panel("quarantine", "quarantine", "Quarantined, by reason", _top(_counts(f.get("quarantine"))),
               charts.hbar_chart, "Reason", total=sum(v for _, v in _counts(f.get("quarantine")))),
        # A user may have several warnings: these count warnings, and share of them (a review).
        _panel("warnings", "warnings", "Warnings, by reason", _top(_counts(f.get("warnings"))),
               charts.hbar_chart, "Reason", total=sum(v for _, v in _counts(f.get("warnings"))),
               counted="Warnings"),
        panel("first_names", "top_first_names", "Top 10 first names", _top_values(f.get("top_first_names")),
               charts.hbar_chart, "First name", note=_top_note(f.get("top_first_names"))),
        panel("cities", "top_cities", "Top 10 cities", _top_values(f.get("top_cities")), charts.hbar_chart, "City",
               note=_top_note(f.get("top_cities"))),
        _password_table("top_passwords", "audit.top_passwords",
                        "Top 10 passwords" + (" (masked)" if masked else " (plaintext: operator opt-in)"),
                        audit.get("top_passwords")),
        _reuse_panel(_map(audit.get("reuse")), _repeated_people(f) is not None),
        # An empty password's mask is "": "(empty)", as elsewhere (a blank row header, a review).
        _table_panel("masks", "audit.masks", "Top password masks", ["Mask", "Users"],
                     [{"key": str(r.get("mask")), "cells": [(str(r.get("mask")) or "(empty)", str(r.get("mask"))),
                                                            (fmt_int(n), n)]}
                      for r in _rows(audit.get("masks")) if (n := _num(r.get("count"))) is not None][:TOP_N],
                     note="hashcat masks: ?l lower, ?u upper, ?d digit, ?s symbol, ?b other"),
    ]
    for p in panels:
        p["wide"] = p["id"] == "registration_years"
        first = p["rows"][0]["cells"] if p["rows"] else []
        p["align"] = ["num" if isinstance(raw, (int, float)) else "txt" for _, raw in first]
    return panels


def _rows(value: Any) -> list[dict[str, Any]]:
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []


def _password_table(pid: str, key: str, title: str, value: Any, note: str | None = None) -> dict[str, Any]:
    rows = []
    for i, r in enumerate(_rows(value)[:TOP_N], 1):
        count = _num(r.get("count"))
        pw = str(r.get("password"))
        rows.append({"key": pw, "cells": [(str(i), i), (pw, pw), (fmt_int(count), count)]})
    return _table_panel(pid, key, title, ["#", "Password", "Users"], rows, note)


def _repeated_people(f: dict[str, Any]) -> float | None:
    """About how many people the users are, when clearly fewer (beyond three standard errors of
    the estimate): users repeated across runs (the same file or seed again) count once a run."""
    users = _num(f.get("total_users"))
    people, rse = _num(_map(f.get("distinct")).get("users")), _num(f.get("distinct_rse")) or 0.0
    return people if users is not None and people is not None and people < users * (1 - 3 * rse) else None


def _reuse_panel(reuse: dict[str, Any], repeated: bool = False) -> dict[str, Any]:
    sharing, largest = _num(reuse.get("users_sharing")), _num(reuse.get("largest_group"))
    note = None
    if sharing is not None or largest is not None:
        # Past the tally's cap of distinct passwords the counts are lower bounds (audit.reuse).
        bound = reuse.get("exact") is False
        least = "at least " if bound else ""
        note = (f"{'At least ' if bound else ''}{fmt_int(sharing)} users share a password with someone; the "
                f"largest group is {least}{fmt_int(largest)}"
                + (" (too many distinct passwords to tally each)." if bound else ".")
                # A review read 261 sharing where ~145 people did: the rest were their own copies.
                + (" Users repeated across runs count once a run, and share with their own copies."
                   if repeated else ""))
    return _password_table("reuse", "audit.reuse.top_reused", "Password reuse", reuse.get("top_reused"), note)


def _weak_panel(audit: dict[str, Any]) -> dict[str, Any]:
    items = []
    for nat, row in _map(audit.get("by_nationality")).items():
        row = _map(row)
        pct, users, weak = _num(row.get("percent_weak")), _num(row.get("users")), _num(row.get("weak"))
        if users and weak is not None:
            pct = 100 * weak / users  # from the counts: the JSON's share is rounded already
        if pct is not None:
            items.append((str(nat), pct, users, weak))
    items.sort(key=lambda r: (-r[1], r[0]))
    items = items[:25]
    title = "Weak passwords by nationality"
    return {"id": "weak_by_nationality", "key": "audit.by_nationality", "title": title, "note": None,
            "wide": False, "columns": ["Nationality", "Users", "Weak", "Weak share"],
            "svg": charts.hbar_chart([(n, p) for n, p, _, _ in items], label=title, fmt=fmt_pct,
                                     max_value=100) if items else None,
            "rows": [{"key": n, "cells": [(n, n), (fmt_int(u), u), (fmt_int(w), w), (fmt_pct(p), p)]}
                     for n, p, u, w in items]}


def _cards(f: dict[str, Any], masked: bool) -> list[dict[str, Any]]:
    audit = _map(f.get("audit"))
    users = _num(f.get("total_users"))
    age, plen = _map(f.get("age")), _map(f.get("password_length"))
    gender = _top(_counts(f.get("gender")), 1)
    gtotal = sum(v for _, v in _counts(f.get("gender"))) or 1
    strength = _map(audit.get("strength"))
    strong_pct = _num(strength.get("percent_strong"))
    strong, weak = _num(strength.get("strong")), _num(strength.get("weak"))
    if strong is not None and (strong + (weak or 0)) > 0:
        # From the counts: rounding the JSON's 2-decimal share again gave 46.1% for 6 of 13.
        strong_pct = 100 * strong / (strong + (weak or 0))
    best = _map(audit.get("most_secure_password"))

    def share(n: float | None) -> str | None:
        return f"{fmt_pct(100 * n / users)} of users" if n is not None and users else None

    def card(cid: str, label: str, value: str, sub: str | None = None) -> dict[str, Any]:
        return {"id": cid, "label": label, "value": value, "sub": sub}

    quarantined = sum(v for _, v in _counts(f.get("quarantine")))
    filtered = sum(v for _, v in _counts(f.get("filtered")))
    people = _repeated_people(f)
    users_sub = " · ".join(part for part in (
        f"≈{fmt_int(people)} distinct people" if people is not None else "",
        f"{fmt_int(quarantined)} quarantined" if quarantined else "",
        f"{fmt_int(filtered)} left out by the nationality filter" if filtered else "") if part)
    name_in, user_in, year_in = (_num(audit.get(k)) for k in
                                 ("name_in_password", "username_in_password", "birthyear_in_password"))
    return [
        card("total_users", "Users", fmt_int(users), users_sub or None),
        card("average_age", "Average age (years)", fmt_num(_num(age.get("mean"))),
             f"median {fmt_num(_num(age.get('median')))} · "
             f"{fmt_int(_num(age.get('min')))}–{fmt_int(_num(age.get('max')))}"
             if age else None),
        card("top_gender", "Most frequent gender", gender[0][0] if gender else "–",
             fmt_pct(100 * gender[0][1] / gtotal) if gender else None),
        card("countries", "Countries", fmt_int(len(_map(f.get("countries")))) if f.get("countries") else "–"),
        card("password_length", "Average password length (characters)", fmt_num(_num(plen.get("mean"))),
             f"{fmt_pct(s)} shorter than 8" if (s := _num(plen.get("short_pct"))) is not None else None),
        card("password_length_range", "Password length min / max (characters)",
             f"{fmt_int(_num(plen.get('min')))} / {fmt_int(_num(plen.get('max')))}" if plen else "–"),
        card("strong_share", "Strong passwords", fmt_pct(strong_pct),
             f"{fmt_int(strong)} strong" if strong is not None else None),
        card("name_in_password", "Name in password", fmt_int(name_in), share(name_in)),
        card("birthyear_in_password", "Birth year in password", fmt_int(year_in), share(year_in)),
        card("username_in_password", "Username in password", fmt_int(user_in), share(user_in)),
        card("most_secure_password", "Most secure password" + (" (masked)" if masked else ""),
             str(best.get("password")) if best else "–",
             f"{fmt_int(_num(best.get('length')))} characters · score {fmt_int(_num(best.get('score')))} "
             f"(length + 3 a character class) · "
             f"zxcvbn {fmt_int(_num(best.get('zxcvbn_score')))}" if best else None),
    ]


def _view(vid: str, title: str, figures: Any, subtitle: str, masked: bool) -> dict[str, Any]:
    f = _map(figures)
    # A run whose every user was quarantined has figures to show: its quarantine.
    empty = not f or (not _num(f.get("total_users")) and not _counts(f.get("quarantine")))
    return {"id": vid, "title": title, "subtitle": subtitle, "empty": empty,
            "cards": [] if empty else _cards(f, masked), "panels": [] if empty else _panels(f, masked)}


def _when(ts: Any) -> str:
    t = _num(ts)
    if not t:
        return "–"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _run_rows(runs: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(_rows(runs), key=lambda r: -(_num(r.get("started_at")) or 0))[:MAX_RUN_ROWS]:
        state = str(r.get("state") or "")
        duration = _num(r.get("duration_s"))
        counted = state in COUNTED_STATES  # none of a failed or cancelled run's users count
        rows.append({
            "run_id": str(r.get("run_id") or ""), "source": str(r.get("source") or ""),
            "requested": fmt_int(_num(r.get("requested"))),
            "delivered": fmt_int(_num(r.get("delivered"))) if counted else "–",
            "quarantined": fmt_int(_num(r.get("quarantined"))) if counted else "–",
            "counted": counted,
            "duration": "–" if duration is None else f"{fmt_num(duration)} s",
            "started": _when(r.get("started_at")), "state": state,
            "state_class": state if state in _STATES else "other", "reason": str(r.get("reason") or ""),
        })
    return rows


def build_context(stats: Any, *, generated_at: float) -> dict[str, Any]:
    """The documented template context (see the module docstring) from a stats document."""
    return _context(public_stats(stats, generated_at=generated_at), generated_at)


def _context(doc: dict[str, Any], generated_at: float) -> dict[str, Any]:
    last = _map(doc.get("last_run"))
    runs = doc["runs"]
    complete = _num(_map(doc.get("cumulative")).get("runs"))  # the store's count; the list is the latest only
    if complete is None:
        complete = sum(1 for r in _rows(runs) if r.get("state") == "complete")
    masked = not revealed(doc)
    sub_last = "No run has completed yet."
    if last:
        sub_last = (f"Run {last.get('run_id', '?')} · {last.get('source', '?')} · "
                    f"{fmt_int(_num(last.get('total_users')))} of "
                    f"{fmt_int(_num(last.get('requested')))} requested users")
    sub_all = (f"{fmt_int(complete)} complete run{'s' if complete != 1 else ''}" if complete
               else "No run has completed yet.")
    when = _num(generated_at)
    return {
        "generated_at": generated_at,
        "updated": f"{_when(when)} UTC" if when else "never",
        "updated_iso": datetime.fromtimestamp(when, UTC).isoformat() if when else "",
        "last_run_id": last.get("run_id"), "last_run_state": last.get("state"),
        "masked": masked,
        "views": {"last": _view("last", "Last run", last, sub_last, masked),
                  "all": _view("all", "All runs", doc.get("cumulative"), sub_all, masked)},
        "runs": {"rows": _run_rows(runs), "total": len(runs), "shown": min(len(runs), MAX_RUN_ROWS)},
    }


# ---------------------------------------------------------------- output

def _render_sections(ctx: dict[str, Any]) -> dict[str, str]:
    view = ENV.get_template("_view.html")
    return {
        "status": ENV.get_template("_status.html").render(ctx),
        "last": view.render(ctx, view=ctx["views"]["last"]),
        "all": view.render(ctx, view=ctx["views"]["all"]),
        "runs": ENV.get_template("_runs.html").render(ctx),
    }


def _page(ctx: dict[str, Any], sections: dict[str, str]) -> str:
    # The sections are our own autoescaped output: mark them safe to nest in the page.
    return ENV.get_template("base.html").render(ctx, sections={k: Markup(v) for k, v in sections.items()})


def render_page(stats: dict[str, Any], *, generated_at: float) -> str:
    """The full HTML page for ``stats``."""
    ctx = build_context(stats, generated_at=generated_at)
    return _page(ctx, _render_sections(ctx))


def render_sections(stats: dict[str, Any], *, generated_at: float) -> dict[str, str]:
    """Section id -> inner HTML of each section the live script swaps in."""
    return _render_sections(build_context(stats, generated_at=generated_at))


_last: tuple[bytes, dict[str, bytes]] = (b"", {})


def render_all(stats: dict[str, Any], *, generated_at: float) -> dict[str, bytes]:
    """Every document the site serves, rendered once: page, stats, runs and sections JSON."""
    global _last
    doc = public_stats(stats, generated_at=generated_at)
    stats_json = to_json(doc)
    cached_json, cached = _last
    if stats_json == cached_json:  # the consumer writes the files and updates the server from one state
        return dict(cached)
    ctx = _context(doc, generated_at)
    sections = _render_sections(ctx)
    docs = {
        "index.html": _page(ctx, sections).encode("utf-8"),
        "api/stats.json": stats_json,
        "api/runs.json": to_json({"runs": doc["runs"]}),
        "api/sections.json": to_json({"generated_at": generated_at, "sections": sections}),
    }
    _last = (stats_json, docs)
    return dict(docs)


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; nginx runs as another user
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_site(out_dir: pathlib.Path, stats: dict[str, Any], *, generated_at: float) -> None:
    """Write the site under ``out_dir`` (each file atomically) so a plain web server can serve a copy."""
    out_dir = pathlib.Path(out_dir)
    docs = render_all(stats, generated_at=generated_at)
    for name in STATIC_FILES:
        data = (STATIC_DIR / name).read_bytes()
        target = out_dir / "static" / name
        if not target.exists() or target.read_bytes() != data:
            _atomic_write(target, data)
    # JSON first, pages last: a reader that sees the new page finds the new data behind it.
    for name in ("api/stats.json", "api/runs.json", "api/sections.json"):
        _atomic_write(out_dir / name, docs[name])
    _atomic_write(out_dir / "dashboard.html", docs["index.html"])
    _atomic_write(out_dir / "index.html", docs["index.html"])
    logger.debug("dashboard site written to %s", out_dir)
