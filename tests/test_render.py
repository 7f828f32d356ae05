"""Rendering: the context, every chart's numbers against the JSON, empty and hostile states, files."""

from __future__ import annotations

import copy
import json
import math
import pathlib
import stat
import time
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest
from sample_stats import (
    GENERATED_AT,
    HOSTILE,
    KNOWN_PASSWORDS,
    hostile_stats,
    large_stats,
    sample_stats,
)

from infraetl.dashboard import render

CHARTS = ("gender", "age_decades", "countries", "complexity", "password_length", "registration_years",
          "timezones", "strength", "entropy", "personal_info", "weak_by_nationality", "quarantine", "warnings",
          "first_names", "cities")
TABLES = ("top_passwords", "reuse", "masks")
CARDS = ("total_users", "average_age", "top_gender", "countries", "password_length", "password_length_range",
         "strong_share", "name_in_password", "birthyear_in_password", "username_in_password",
         "most_secure_password")


class Page(HTMLParser):
    """Collects tags with attributes, and each chart's numbers table per view."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[tuple[str, str], dict[str, list[str]]] = {}
        self.cards: dict[tuple[str, str], str] = {}
        self.card_subs: dict[tuple[str, str], str] = {}  # a card's small print
        self.svgs: set[tuple[str, str]] = set()
        self._view = self._chart = self._row = self._card = ""
        self._in_value = self._in_sub = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "section" and a.get("id") in ("last", "all"):
            self._view = a["id"] or ""
        if a.get("data-chart"):
            self._chart = a["data-chart"] or ""
            self.tables[(self._view, self._chart)] = {}
        if tag == "svg" and self._chart:
            self.svgs.add((self._view, self._chart))
        if tag == "tr" and "data-key" in a and self._chart:
            self._row = a["data-key"] or ""
            self.tables[(self._view, self._chart)][self._row] = []
        if tag in ("th", "td") and self._row and "data-value" in a:
            self.tables[(self._view, self._chart)][self._row].append(a["data-value"] or "")
        if a.get("data-card"):
            self._card = a["data-card"] or ""
        if a.get("class") == "card-value":
            self._in_value = True
        if a.get("class") == "card-sub":
            self._in_sub = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._chart = self._row = ""
        if tag == "tr":
            self._row = ""
        if tag == "section":
            self._view = ""

    def handle_data(self, data: str) -> None:
        if self._in_value:
            self.cards[(self._view, self._card)] = data.strip()
            self._in_value = False
        if self._in_sub:
            self.card_subs[(self._view, self._card)] = data.strip()
            self._in_sub = False


@pytest.fixture(scope="module")
def stats() -> dict[str, Any]:
    return sample_stats()


@pytest.fixture(scope="module")
def page(stats: dict[str, Any]) -> Page:
    return Page(render.render_page(stats, generated_at=GENERATED_AT))


def figures(stats: dict[str, Any], view: str) -> dict[str, Any]:
    return stats["last_run"] if view == "last" else stats["cumulative"]


def column(page: Page, view: str, chart: str, index: int = 1) -> dict[str, float]:
    return {k: float(v[index]) for k, v in page.tables[(view, chart)].items()}


def top(counts: dict[str, float], n: int = 10) -> dict[str, float]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


def test_context_has_the_documented_structure(stats: dict[str, Any]) -> None:
    ctx = render.build_context(stats, generated_at=GENERATED_AT)
    assert set(ctx) == {"generated_at", "updated", "updated_iso", "last_run_id", "last_run_state", "masked", "views",
                        "runs"}
    assert ctx["updated"] == "2024-05-01 12:20:00 UTC"
    assert ctx["masked"] is True
    for vid in ("last", "all"):
        view = ctx["views"][vid]
        assert set(view) == {"id", "title", "subtitle", "empty", "cards", "panels"}
        assert [c["id"] for c in view["cards"]] == list(CARDS)
        assert [p["id"] for p in view["panels"]] == [*CHARTS, *TABLES]
        for panel in view["panels"]:
            assert set(panel) == {"id", "key", "title", "svg", "columns", "align", "rows", "note", "wide"}
            assert all(len(r["cells"]) == len(panel["columns"]) for r in panel["rows"])
            assert len(panel["align"]) == (len(panel["columns"]) if panel["rows"] else 0)
    assert set(ctx["runs"]) == {"rows", "total", "shown"}
    assert next(r["run_id"] for r in ctx["runs"]["rows"]) == stats["runs"][-1]["run_id"]  # newest first


@pytest.mark.parametrize("view", ["last", "all"])
def test_every_chart_and_table_is_present(page: Page, view: str) -> None:
    for chart in CHARTS:
        assert (view, chart) in page.svgs, chart
        assert page.tables[(view, chart)], chart
    for table in TABLES:
        assert page.tables[(view, table)], table


@pytest.mark.parametrize("view", ["last", "all"])
def test_chart_numbers_match_the_stats(page: Page, stats: dict[str, Any], view: str) -> None:
    f = figures(stats, view)
    a = f["audit"]
    assert column(page, view, "gender") == f["gender"]
    assert column(page, view, "age_decades") == f["age"]["decades"]
    assert column(page, view, "countries") == top(f["countries"])
    assert column(page, view, "timezones") == top(f["timezones"])
    assert column(page, view, "registration_years") == f["registration_years"]
    assert column(page, view, "complexity") == a["complexity"]
    assert column(page, view, "strength") == a["zxcvbn_score"]
    assert column(page, view, "entropy") == {k: v for k, v in a["entropy_bits"]["histogram"].items()
                                             if int(k.rstrip("+")) <= 50}  # the empty tail is not drawn
    assert column(page, view, "personal_info") == top(a["personal_info"])
    assert column(page, view, "quarantine") == top(f["quarantine"])
    assert column(page, view, "warnings") == top(f["warnings"])
    lengths = {k: v for k, v in column(page, view, "password_length").items() if v}
    assert lengths == {k: v for k, v in f["password_length"]["histogram"].items() if v}
    weak = column(page, view, "weak_by_nationality", index=3)
    # From the counts (the JSON's 2-decimal share, rounded again, was off by 0.1: a review).
    assert weak == pytest.approx(top({k: 100 * v["weak"] / v["users"] for k, v in a["by_nationality"].items()}, 25))
    assert column(page, view, "top_passwords", index=2) == {r["password"]: r["count"] for r in a["top_passwords"]}
    assert column(page, view, "first_names") == {r["value"]: r["count"] for r in f["top_first_names"]}
    assert column(page, view, "cities") == {r["value"]: r["count"] for r in f["top_cities"]}
    assert column(page, view, "reuse", index=2) == {r["password"]: r["count"] for r in a["reuse"]["top_reused"]}


@pytest.mark.parametrize("view", ["last", "all"])
def test_cards_show_the_figures(page: Page, stats: dict[str, Any], view: str) -> None:
    f = figures(stats, view)
    cards = {k: v for (vid, k), v in page.cards.items() if vid == view}
    assert set(cards) == set(CARDS)
    assert cards["total_users"] == f"{f['total_users']:,}"
    assert cards["average_age"] == f"{f['age']['mean']:.1f}"
    assert cards["top_gender"] == max(f["gender"], key=f["gender"].get)
    assert cards["countries"] == str(len(f["countries"]))
    strength = f["audit"]["strength"]
    assert cards["strong_share"] == f"{100 * strength['strong'] / (strength['strong'] + strength['weak']):.1f}%"
    assert cards["password_length_range"] == f"{f['password_length']['min']} / {f['password_length']['max']}"
    assert cards["most_secure_password"] == f["audit"]["most_secure_password"]["password"]


def test_page_is_self_contained_and_csp_clean(stats: dict[str, Any]) -> None:
    html = render.render_page(stats, generated_at=GENERATED_AT)
    tags = Page(html).tags
    scripts = [a for t, a in tags if t == "script"]
    assert scripts == [{"src": "static/dashboard.js", "defer": None}]  # no inline script
    assert "<style" not in html and "style=" not in html
    for _, attrs in tags:
        for name in ("src", "href"):
            url = attrs.get(name) or ""
            assert not url.startswith(("http:", "https:", "//")), url
    assert "cdn" not in html.lower()


@pytest.mark.parametrize("stats", [
    {}, {"last_run": None, "cumulative": None, "runs": []},
    {"last_run": {}, "cumulative": {"total_users": 0}, "runs": None},
])
def test_empty_state_says_no_data_yet(stats: dict[str, Any]) -> None:
    html = render.render_page(stats, generated_at=0.0)
    assert html.count("no data yet") >= 3  # both views and the run history
    assert "never" in html
    assert render.render_sections(stats, generated_at=0.0).keys() == set(render.SECTION_IDS)


GARBAGE: list[Any] = [None, [], "text", {"x": "y"}, float("nan"), True]


@pytest.mark.parametrize("value", GARBAGE, ids=repr)
def test_any_figure_may_be_missing_or_malformed(stats: dict[str, Any], value: Any) -> None:
    keys = [k for k in stats["last_run"] if k != "audit"] + [f"audit.{k}" for k in stats["last_run"]["audit"]]
    for key in keys:
        broken = json.loads(json.dumps(stats))
        target = broken["last_run"]
        if key.startswith("audit."):
            target, key = target["audit"], key[len("audit."):]
        target[key] = value
        html = render.render_page(broken, generated_at=GENERATED_AT)
        assert 'data-chart="gender"' in html
    broken = json.loads(json.dumps(stats))
    broken["runs"] = [value, {"run_id": value, "state": value, "duration_s": value}]
    broken["last_run"]["audit"] = value
    render.render_page(broken, generated_at=GENERATED_AT)


def test_hostile_strings_are_escaped_and_inert() -> None:
    stats = hostile_stats()
    html = render.render_page(stats, generated_at=GENERATED_AT)
    tags = Page(html).tags
    assert [a for t, a in tags if t == "script"] == [{"src": "static/dashboard.js", "defer": None}]
    assert not [t for t, _ in tags if t in ("img", "iframe", "object", "embed")]
    assert not [(t, n) for t, a in tags for n in a if n.startswith("on")]
    assert "<script>window" not in html and "<img" not in html and "<svg onload" not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert "{{7*7}}" in html  # shown as text: data is never a template
    assert "\u202e" not in html and "\ufffdgnp.exe" in html
    for doc in render.render_all(stats, generated_at=GENERATED_AT).values():
        assert b"\xe2\x80\xae" not in doc  # JSON is ASCII-only: the override travels as \u202e


def test_no_plaintext_password_in_page_or_json() -> None:
    stats = sample_stats()
    # Simulate an upstream slip: plaintext where masked passwords belong.
    audit = stats["cumulative"]["audit"]
    audit["top_passwords"][0]["password"] = "trustno1"
    audit["reuse"]["top_reused"][0]["password"] = "letmein"
    audit["most_secure_password"]["password"] = "Tr0ub4dor&3x!"
    docs = render.render_all(stats, generated_at=GENERATED_AT)
    for name, doc in docs.items():
        text = doc.decode()
        for password in KNOWN_PASSWORDS:
            assert password not in text, (name, password)
            assert json.dumps(password)[1:-1] not in text, (name, password)
    assert render.mask_password("trustno1") == "t******1"
    assert render.mask_password("s****r") == "s****r"
    assert render.mask_password("ab") == "**"


def test_json_is_strict_and_plain() -> None:
    stats = sample_stats()
    stats["cumulative"]["age"]["mean"] = float("nan")
    stats["cumulative"]["total_users"] = np.int64(1200)
    stats["cumulative"]["age"]["std"] = np.float64(3.5)
    docs = render.render_all(stats, generated_at=GENERATED_AT)
    doc = json.loads(docs["api/stats.json"], parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert doc["cumulative"]["age"]["mean"] is None
    assert doc["cumulative"]["total_users"] == 1200
    assert doc["generated_at"] == GENERATED_AT
    assert json.loads(docs["api/runs.json"]) == {"runs": stats["runs"]}
    sections = json.loads(docs["api/sections.json"])
    assert sections["generated_at"] == GENERATED_AT and set(sections["sections"]) == set(render.SECTION_IDS)


def test_render_all_reuses_the_render_of_an_identical_state(stats: dict[str, Any]) -> None:
    first = render.render_all(stats, generated_at=GENERATED_AT)
    assert render.render_all(stats, generated_at=GENERATED_AT) == first
    later = render.render_all(stats, generated_at=GENERATED_AT + 1)
    assert later["index.html"] != first["index.html"]


def test_sections_are_the_page_parts(stats: dict[str, Any]) -> None:
    page = render.render_page(stats, generated_at=GENERATED_AT)
    for sid, html in render.render_sections(stats, generated_at=GENERATED_AT).items():
        assert f'data-section="{sid}"' in page
        assert html.strip() and html in page


def test_write_site(tmp_path: pathlib.Path, stats: dict[str, Any]) -> None:
    out = tmp_path / "www"
    render.write_site(out, stats, generated_at=GENERATED_AT)
    render.write_site(out, stats, generated_at=GENERATED_AT + 1)  # over an existing site
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == ["api/runs.json", "api/sections.json", "api/stats.json", "dashboard.html", "index.html",
                     "static/dashboard.css", "static/dashboard.js"]
    assert (out / "index.html").read_bytes() == (out / "dashboard.html").read_bytes()
    assert json.loads((out / "api/stats.json").read_text())["generated_at"] == GENERATED_AT + 1
    for name in names:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert (out / "static/dashboard.js").read_bytes() == (render.STATIC_DIR / "dashboard.js").read_bytes()


def _best_ms(fn: Any, repeat: int = 10) -> tuple[float, float]:
    """Best wall and best CPU (this thread) milliseconds of ``repeat`` calls."""
    wall = cpu = math.inf
    for _ in range(repeat):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        wall = min(wall, (time.perf_counter() - w) * 1000)
        cpu = min(cpu, (time.thread_time() - c) * 1000)
    return wall, cpu


def test_render_of_a_million_users_takes_under_100_ms() -> None:
    """Benchmark. Asserts CPU time, which a host busy with other work cannot inflate; wall time is printed."""
    stats = large_stats(users=1_000_000, runs=500)
    render.render_page(stats, generated_at=GENERATED_AT)  # template compilation is a one-off
    page_wall, page_cpu = _best_ms(lambda: render.render_page(stats, generated_at=GENERATED_AT))
    stamps = iter(range(1, 100))  # a new generated_at each time: render_all reuses an identical state
    all_wall, all_cpu = _best_ms(lambda: render.render_all(stats, generated_at=GENERATED_AT + next(stamps)))
    print(f"render_page {page_wall:.1f} ms wall / {page_cpu:.1f} ms CPU; "
          f"render_all (page + JSON + sections) {all_wall:.1f} ms wall / {all_cpu:.1f} ms CPU")
    assert page_cpu < 100
    assert all_cpu < 100


def test_hostile_fixture_covers_every_payload() -> None:
    html = render.render_page(hostile_stats(), generated_at=GENERATED_AT)
    for payload in HOSTILE:
        assert str(render.charts.esc(payload)) in html, payload


def test_the_project_aggregates_render_without_plaintext_passwords() -> None:
    """The real StatsSummary/AuditSummary figures fit the page, and no user's password is on it."""
    from userfactory import make_users

    from infraetl import schema
    from infraetl.audit import AuditSummary
    from infraetl.stream_stats import StatsSummary

    users = make_users(300, 7)
    cols = schema.to_columns(users)
    figures = StatsSummary.from_columns(cols).figures()
    figures["audit"] = AuditSummary.from_columns(cols, b"k" * 32).figures()
    stats = {"generated_at": GENERATED_AT, "passwords_revealed": False,
             "last_run": {**figures, "run_id": "r1", "state": "complete", "source": "synthetic", "requested": 300},
             "cumulative": {**figures, "runs": 1}, "runs": []}
    docs = render.render_all(stats, generated_at=GENERATED_AT)
    page = Page(docs["index.html"].decode())
    for view in ("last", "all"):
        for chart in CHARTS:
            if chart not in ("quarantine", "warnings"):  # make_users' records are all clean
                assert page.tables[(view, chart)], (view, chart)
    # A password that is also a name, city or e-mail part cannot be told apart; skip those.
    other = json.dumps([{**u, "login": {**u["login"], "password": ""}} for u in users], ensure_ascii=False)
    passwords = {u["login"]["password"] for u in users} - {""}
    blank = render.render_page({}, generated_at=0)
    checked = [p for p in passwords if len(p) >= 5 and p not in other and p not in blank]
    assert len(checked) > 50
    for name, doc in docs.items():
        text = doc.decode()
        assert [p for p in checked if p in text] == [], name


def test_operator_opt_in_shows_passwords_and_says_so() -> None:
    stats = sample_stats()
    stats["passwords_revealed"] = True
    stats["last_run"]["audit"]["top_passwords"][0]["password"] = "trustno1"
    docs = render.render_all(stats, generated_at=GENERATED_AT)
    html = docs["index.html"].decode()
    assert "trustno1" in html and "trustno1" in docs["api/stats.json"].decode()
    assert "Passwords shown in plaintext (operator opt-in)" in html
    assert "Top 10 passwords (masked)" not in html


def test_quarantine_and_warning_shares_are_of_all_of_them_not_of_the_ten_shown() -> None:
    from infraetl.audit import AuditSummary
    from infraetl.stream_stats import StatsSummary

    s = StatsSummary.empty()
    s.add_counts(quarantine={f"missing:field{i:02d}": 1 for i in range(20)},
                 warnings={f"whitespace:field{i:02d}": 3 for i in range(40)})
    f = {**s.figures(), "audit": AuditSummary.empty().figures()}
    ctx = render.build_context({"last_run": {**f, "run_id": "r1", "state": "complete"}, "cumulative": f,
                                "runs": []}, generated_at=GENERATED_AT)
    panels = {p["id"]: p for p in ctx["views"]["last"]["panels"]}
    for pid, share in (("quarantine", 5.0), ("warnings", 2.5)):
        rows = panels[pid]["rows"]
        assert len(rows) == 10 and all(r["cells"][2][1] == share for r in rows), pid


def test_a_run_whose_every_user_was_quarantined_shows_its_quarantine() -> None:
    from infraetl.audit import AuditSummary
    from infraetl.stream_stats import StatsSummary

    s = StatsSummary.empty()
    s.add_counts(quarantine={"mojibake:name.last": 500})
    f = {**s.figures(), "audit": AuditSummary.empty().figures()}
    ctx = render.build_context({"last_run": {**f, "run_id": "r1", "state": "complete"}, "cumulative": f,
                                "runs": []}, generated_at=GENERATED_AT)
    view = ctx["views"]["last"]
    assert not view["empty"]
    quarantine = next(p for p in view["panels"] if p["id"] == "quarantine")
    assert [r["cells"][1][1] for r in quarantine["rows"]] == [500]


def _panels_of(figs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    ctx = render.build_context({"last_run": {**figs, "run_id": "r1", "state": "complete"}, "cumulative": figs,
                                "runs": []}, generated_at=GENERATED_AT)
    return {p["id"]: p for p in ctx["views"]["last"]["panels"]}


def test_top_names_say_when_their_counts_are_estimates() -> None:
    from infraetl.audit import AuditSummary
    from infraetl.sketches import TopK
    from infraetl.stream_stats import StatsSummary

    s = StatsSummary.empty()
    s.n = 12
    s.top["first_names"] = TopK(k=2).merge(TopK.from_counter({"Ann": 5, "Bo": 3, "Cy": 1, "Di": 1}, k=2))
    s.top["cities"] = TopK.from_counter({"Oslo": 5, "Rome": 3})
    panels = _panels_of({**s.figures(), "audit": AuditSummary.empty().figures()})
    assert "at most 1 more" in (panels["first_names"]["note"] or "")
    assert panels["cities"]["note"] is None  # exact: nothing to say
    assert [r["cells"][1][1] for r in panels["cities"]["rows"]] == [5, 3]


def test_personal_information_shows_every_kind() -> None:
    from infraetl.audit import AuditSummary
    from infraetl.stream_stats import StatsSummary

    audit = AuditSummary.empty().figures()
    kinds = {f"kind{i:02d}": 20 - i for i in range(11)}
    s = StatsSummary.empty()
    s.n = 30
    panels = _panels_of({**s.figures(), "audit": {**audit, "personal_info": kinds}})
    assert len(panels["personal_info"]["rows"]) == 11


def test_password_reuse_says_when_its_counts_are_lower_bounds() -> None:
    from infraetl.audit import AuditSummary
    from infraetl.stream_stats import StatsSummary

    s = StatsSummary.empty()
    s.n = 30
    audit = AuditSummary.empty().figures()
    for exact, words in ((True, "5 users share"), (False, "At least 5 users share")):
        reuse = {**audit["reuse"], "users_sharing": 5, "largest_group": 3, "exact": exact}
        note = _panels_of({**s.figures(), "audit": {**audit, "reuse": reuse}})["reuse"]["note"]
        assert note.startswith(words), note


def test_integer_bins_keep_every_key_whatever_their_spacing() -> None:
    # The smallest gap set the step: lengths 6, 8, 11 showed 6, 8, 10, 12 and lost the 11s (a review).
    from infraetl.dashboard.render import _filled

    got = dict(_filled([("6", 12), ("8", 12), ("11", 12)]))
    assert got == {"6": 12, "7": 0, "8": 12, "9": 0, "10": 0, "11": 12}
    got = dict(_filled([("1", 5), ("64", 2), ("80", 1)]))
    assert (got["1"], got["64"], got["80"]) == (5, 2, 1) and sum(got.values()) == 8
    assert dict(_filled([("0", 1), ("10", 2), ("30", 3)])) == {"0": 1, "10": 2, "20": 0, "30": 3}  # entropy bins


def test_decades_years_and_lengths_draw_their_empty_bins_and_outliers_share_the_last() -> None:
    """Charts drew the 10s beside the 30s, 2006 beside 2008, and one 245-character password
    dropped every empty length bin (lengths 2 and 17–24 vanished; a review)."""
    from infraetl.dashboard.render import MAX_BINS, _filled

    assert _filled([("10s", 3), ("30s", 1)], 10, "s") == [("10s", 3), ("20s", 0.0), ("30s", 1)]
    assert _filled([("2008", 2), ("2006", 1)], 1) == [("2006", 1), ("2007", 0.0), ("2008", 2)]
    lengths = [(str(n), 1) for n in (1, *range(3, 17), 25, 200, 245)]
    got = _filled(lengths, 1)
    assert [k for k, _ in got] == [str(n) for n in range(1, 26)] + ["200–245"]
    assert dict(got)["2"] == dict(got)["20"] == 0 and dict(got)["200–245"] == 2
    assert sum(v for _, v in got) == len(lengths)
    assert _filled([("1", 1), (str(1 + MAX_BINS), 4)], 1)[-1] == (str(1 + MAX_BINS), 4)  # one outlier: its own key
    # A low outlier (a valid registration in 1900) put every real year in the last bin (a review).
    years = _filled([("1900", 1), ("1850", 1)] + [(str(y), 10) for y in range(2003, 2027)], 1)
    assert years[0] == ("1850–1900", 2) and [k for k, _ in years[1:]] == [str(y) for y in range(2003, 2027)]
    stats = sample_stats()
    for doc in (stats["last_run"], stats["cumulative"]):
        doc["age"]["decades"] = {"10s": 3, "30s": 1}
        doc["registration_years"] = {"2006": 1, "2008": 2}
    panels = {p["id"]: p for p in render.build_context(stats, generated_at=GENERATED_AT)["views"]["last"]["panels"]}
    assert [r["key"] for r in panels["age_decades"]["rows"]] == ["10s", "20s", "30s"]
    assert [r["key"] for r in panels["registration_years"]["rows"]] == ["2006", "2007", "2008"]


def test_the_users_card_says_how_many_people_when_users_repeat_across_runs(stats: dict[str, Any]) -> None:
    # The same file replayed: 600 users counted, ~291 people (a review); within a run there are
    # no repeats (the producer drops them), so the last run's card says nothing of the kind.
    doc = copy.deepcopy(stats)
    cum, last = doc["cumulative"], doc["last_run"]
    cum["total_users"], cum["distinct"], cum["distinct_rse"] = 600, {"users": 291}, 0.0163
    last["distinct"], last["distinct_rse"] = {"users": last["total_users"] * 0.99}, 0.0163  # within its error
    subs = Page(render.render_page(doc, generated_at=GENERATED_AT)).card_subs
    assert "≈291 distinct people" in subs[("all", "total_users")]
    assert "distinct" not in subs.get(("last", "total_users"), "")


def test_the_most_secure_card_says_how_long_the_password_is() -> None:
    # Its mask keeps the length only up to 32 characters: a 245-character one looked like 32 (a review).
    doc = sample_stats()
    doc["last_run"]["audit"]["most_secure_password"].update(length=245, password="Z" + "*" * 30 + "…q")
    sub = Page(render.render_page(doc, generated_at=GENERATED_AT)).card_subs[("last", "most_secure_password")]
    assert sub.startswith("245 characters · score "), sub


def test_warnings_count_warnings_and_reuse_says_when_users_repeat_across_runs() -> None:
    # A user may hold two warnings: the table's "Users" column counted warnings; and replayed
    # users "shared" passwords with their own copies in the all-runs view (a review).
    doc = sample_stats()
    cum = doc["cumulative"]
    cum["warnings"] = {"markup": 3, "formula": 2}
    cum["total_users"], cum["distinct"], cum["distinct_rse"] = 600, {"users": 291}, 0.0163
    views = render.build_context(doc, generated_at=GENERATED_AT)["views"]
    panels = {p["id"]: p for p in views["all"]["panels"]}
    assert panels["warnings"]["columns"] == ["Reason", "Warnings", "Share"]
    assert panels["quarantine"]["columns"][1] == "Users"
    assert "share with their own copies" in panels["reuse"]["note"]
    last = {p["id"]: p for p in views["last"]["panels"]}
    assert "own copies" not in last["reuse"]["note"]


def test_the_page_names_its_tables_and_disclosures_for_a_screen_reader() -> None:
    # An accessibility review (axe in Chromium, and the accessibility tree): every table had an
    # empty name, 15 disclosures were all "Numbers", the run table's scroller had no name, an
    # empty password's mask was a blank row header, and the markup said "Last run" was the view
    # shown while :target showed "All runs" (without the script).
    doc = sample_stats()
    doc["last_run"]["audit"]["masks"] = [{"mask": "", "count": 2}, {"mask": "?l?d", "count": 1}]
    html = render.render_page(doc, generated_at=GENERATED_AT)
    assert 'aria-current' not in html
    assert '<summary>Numbers<span class="sr-only">: Gender</span></summary>' in html
    assert '<table class="numbers" aria-label="Top password masks">' in html
    assert '<th scope="row" data-value="">(empty)</th>' in html
    assert 'role="region" aria-label="Run history table"' in html and 'aria-label="Run history"' in html
    panels = {p["id"]: p for p in render.build_context(doc, generated_at=GENERATED_AT)["views"]["last"]["panels"]}
    assert {r["cells"][0][0] for r in panels["personal_info"]["rows"]} <= set(render.PERSONAL_KINDS.values())
