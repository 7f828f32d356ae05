"""The real daemons' dashboard in headless Chromium: runs started with infraetl-ctl, checked on the page."""

from __future__ import annotations

import json
import pathlib
import random
import re
import string
from typing import Any

import pytest
from browser import CHROMIUM, TABLES_JS, Watched
from helpers import ctl, get_json, get_text
from markupsafe import escape

from infraetl.localcluster import LocalCluster

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not pathlib.Path(CHROMIUM).exists(), reason=f"needs Debian chromium at {CHROMIUM}"),
]

LIVE_MS = 2000  # an open page shows a finished run within 2 s of infraetl-ctl returning
SAMPLE_FILE = pathlib.Path(__file__).parent / "data" / "randomuser-sample.json"
SAMPLE = json.loads(SAMPLE_FILE.read_text(encoding="utf-8"))["results"]

# data-chart id -> how its rows relate to the JSON under the figure's data-key:
# "all": every non-zero entry is a row; "top": the 10 largest entries.
CHARTS = {
    "gender": "all", "age_decades": "all", "countries": "top", "complexity": "all", "password_length": "all",
    "registration_years": "all", "timezones": "top", "strength": "all", "entropy": "all",
    "personal_info": "all", "weak_by_nationality": "nationality", "quarantine": "top", "warnings": "top",
}
# Counts of reasons, not a partition of the users: their share column has no single obvious denominator.
NO_USER_SHARE = {"quarantine", "warnings"}
# Each card as "view/card" -> [value, sub-line or null].
CARDS_JS = """() => Object.fromEntries([...document.querySelectorAll('section.view [data-card]')].map(c => {
  const sub = c.querySelector('.card-sub');
  return [c.closest('section').id + '/' + c.dataset.card,
          [c.querySelector('.card-value').textContent.trim(), sub ? sub.textContent : null]];
}))"""

# The run history lists the run and the last-run view shows its users.
RUN_SHOWN = """({run, users}) => document.querySelector(`#runs tr[data-run="${run}"]`) !== null
  && document.querySelector('#last [data-card="total_users"] .card-value').textContent === users"""


def lookup(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def _num(text: str | None) -> float:
    return float(text) if text not in (None, "", "None") else 0.0


def table_problems(name: str, table: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    """Where one figure's table disagrees with the JSON it was drawn from (empty if nowhere)."""
    chart = name.split("/", 1)[1]
    source = lookup(figures, table["key"]) or {}
    rows: dict[str, list[str]] = table["rows"]
    users = figures["total_users"]
    problems = []
    if not any(source.values() if chart != "weak_by_nationality" else source):
        return [] if table["empty"] and not rows else [f"{name}: rows {rows} for empty JSON {source}"]
    if not table["svg"] or table["titles"] != len(rows):
        problems.append(f"{name}: {len(rows)} rows but svg={table['svg']} with {table['titles']} titles")
    if chart == "weak_by_nationality":
        for nat, (_, n, weak, pct) in rows.items():
            want = source.get(nat, {})
            # The share from the counts (the JSON's is rounded to 2 decimals; the page's was rounded twice).
            exact = 100 * want["weak"] / want["users"] if want.get("users") else None
            if (_num(n), _num(weak)) != (want.get("users"), want.get("weak")) or exact is None \
                    or abs(_num(pct) - exact) > 1e-9 or abs(exact - want.get("percent_weak", -1)) > 0.005 + 1e-9:
                problems.append(f"{name}/{nat}: page {n}, {weak}, {pct}% but JSON {want}")
        if len(rows) != min(len(source), 25):
            problems.append(f"{name}: {len(rows)} rows for {len(source)} nationalities")
        return problems
    for key, cells in rows.items():
        count = _num(cells[1])
        if count != source.get(key, 0):
            problems.append(f"{name}/{key}: page says {cells[1]} users, JSON {source.get(key)}")
        if chart not in NO_USER_SHARE and _num(cells[2]) != round(100 * count / users, 1):
            problems.append(f"{name}/{key}: share {cells[2]}% but {count:g} of {users} users "
                            f"is {100 * count / users:.1f}%")
    if CHARTS[chart] == "all":
        missing = {k for k, v in source.items() if v and k not in rows}
        if missing:
            problems.append(f"{name}: JSON entries {sorted(missing)} have no row")
    else:
        shown = [source.get(k, 0) for k in rows]
        hidden = [v for k, v in source.items() if k not in rows]
        if len(rows) != min(10, len(source)) or (hidden and max(hidden) > min(shown)):
            problems.append(f"{name}: rows {sorted(rows)} are not the top 10 of {source}")
    return problems


def expected_cards(f: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """The value and sub-line each card must show for the figures ``f``, written out by hand."""
    users, audit = f["total_users"], f["audit"]
    quarantined = sum(f["quarantine"].values())
    plen, age, strength = f["password_length"], f["age"], audit["strength"]
    top_gender = max(f["gender"].items(), key=lambda kv: kv[1])

    def share(n: int) -> str:
        return f"{100 * n / users:.1f}% of users"

    return {
        "total_users": (f"{users:,}", f"{quarantined:,} quarantined" if quarantined else None),
        "average_age": (f"{age['mean']:,.1f}",
                        f"median {age['median']:,.1f} · {age['min']}–{age['max']}"),
        "top_gender": (top_gender[0], f"{100 * top_gender[1] / sum(f['gender'].values()):.1f}%"),
        "countries": (f"{len(f['countries']):,}", None),
        "password_length": (f"{plen['mean']:,.1f}", f"{plen['short_pct']:.1f}% shorter than 8"),
        "password_length_range": (f"{plen['min']} / {plen['max']}", None),
        "strong_share": (f"{100 * strength['strong'] / (strength['strong'] + strength['weak']):.1f}%",
                         f"{strength['strong']:,} strong"),
        **{k: (f"{audit[k]:,}", share(audit[k]))
           for k in ("name_in_password", "birthyear_in_password", "username_in_password")},
        "most_secure_password": (audit["most_secure_password"]["password"],
                                 f"{audit['most_secure_password']['length']:,} characters · "
                                 f"score {audit['most_secure_password']['score']} (length + 3 a character class) · "
                                 f"zxcvbn {audit['most_secure_password']['zxcvbn_score']}"),
    }


def assert_matches_api(page: Any, stats: dict[str, Any]) -> None:
    """Every chart and card of both views shows what ``/api/stats.json`` holds (all differences listed)."""
    tables, cards = page.evaluate(TABLES_JS), page.evaluate(CARDS_JS)
    problems = []
    for view, figures in (("last", stats["last_run"]), ("all", stats["cumulative"])):
        missing = {c for c in CHARTS if f"{view}/{c}" not in tables}
        if missing:
            problems.append(f"{view}: charts {sorted(missing)} are not on the page")
        for chart in sorted(set(CHARTS) - missing):
            problems += table_problems(f"{view}/{chart}", tables[f"{view}/{chart}"], figures)
        for card, want in expected_cards(figures).items():
            got = cards.get(f"{view}/{card}")
            if got is None or tuple(got) != want:
                problems.append(f"{view} card {card}: page {got}, expected {want}")
    assert not problems, f"{len(problems)} differences between the page and the API:\n" + "\n".join(problems)


def run_id_of(proc: Any) -> str:
    match = re.search(r"run (\S+) complete", proc.stdout)
    assert match, proc.stdout
    return match.group(1)


def test_page_matches_the_api_after_a_300_user_run(watched: Watched, cluster: LocalCluster,
                                                   artifacts: pathlib.Path) -> None:
    ctl(cluster, "start-run", "--users", "300", "--seed", "browser-e2e")
    stats = get_json(cluster.url + "api/stats.json")
    assert stats["last_run"]["total_users"] == 300
    page = watched.open("/")
    page.screenshot(path=str(artifacts / "dashboard-e2e.png"), full_page=True)
    assert page.locator(f'#runs tr[data-run="{stats["last_run"]["run_id"]}"]').count() == 1
    watched.assert_clean()
    assert_matches_api(page, stats)


def test_open_page_shows_the_next_run_without_a_reload(watched: Watched, cluster: LocalCluster) -> None:
    first = run_id_of(ctl(cluster, "start-run", "--users", "60", "--seed", "live-a"))
    page = watched.open_live()
    assert page.locator(f'#runs tr[data-run="{first}"]').count() == 1
    page.evaluate("() => { window.__marker = 1; }")
    second = run_id_of(ctl(cluster, "start-run", "--users", "250", "--seed", "live-b"))
    page.wait_for_function(RUN_SHOWN, arg={"run": second, "users": "250"}, timeout=LIVE_MS)
    assert page.evaluate("() => window.__marker") == 1  # the same document: swapped in place
    stats = get_json(cluster.url + "api/stats.json")
    assert stats["last_run"]["run_id"] == second and stats["cumulative"]["total_users"] == 310
    watched.assert_clean()
    assert_matches_api(page, stats)


# Names, places and passwords that would run, render markup or evaluate if anything trusted them.
HOSTILE = ["<script>window.__pwned=1</script>", '"><img src=x onerror="window.__pwned=1">',
           "{{7*7}}", "${7*7}", "\u202eevil\u202c.exe"]
HOSTILE_PASSWORDS = ["<script>window.__pwned=2</script>", '"><img src=x onerror="window.__pwned=2">',
                     "{{7*7}}{{6*6}}", "${7*7}${6*6}"]
BIDI_PASSWORD = "pass\u202eword\u202c-override"


def hostile_users(tmp_path: pathlib.Path) -> tuple[pathlib.Path, int, list[str]]:
    """Users with hostile names, cities and passwords as JSON Lines: (path, users, password plaintexts)."""
    rnd = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "!#%&*+-=?@^_"
    users, secrets = [], list(HOSTILE_PASSWORDS)
    for i in range(110):
        u = json.loads(json.dumps(SAMPLE[i % len(SAMPLE)]))
        u["login"]["uuid"] = f"00000000-0000-4000-8000-{i:012d}"
        if i < 100:  # 20 users per payload in first name, last name and city: into the top-10s
            u["name"]["first"] = u["name"]["last"] = u["location"]["city"] = HOSTILE[i % len(HOSTILE)]
            if i % 2:
                u["login"]["password"] = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(20, 32)))
                secrets.append(u["login"]["password"])
            else:  # each hostile password shared by a dozen users: into the top passwords and reuse
                u["login"]["password"] = HOSTILE_PASSWORDS[(i // 2) % len(HOSTILE_PASSWORDS)]
        else:
            u["login"]["password"] = BIDI_PASSWORD
        users.append(u)
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(json.dumps(u, ensure_ascii=False) for u in users), encoding="utf-8")
    return path, len(users), secrets + [BIDI_PASSWORD]


INERT_JS = """() => ({
  pwned: typeof window.__pwned,
  scripts: [...document.querySelectorAll('script')].map(s => s.src),
  images: document.querySelectorAll('img, iframe, object, embed').length,
  handlers: [...document.querySelectorAll('*')]
            .filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
  names: Object.fromEntries([...document.querySelectorAll('#last [data-chart="first_names"] tr[data-key], '
                                                         + '#last [data-chart="cities"] tr[data-key]')]
                            .map(tr => [tr.dataset.key, tr.querySelector('th').textContent])),
  text: document.body.innerText,
})"""


def assert_inert(page: Any, base: str) -> dict[str, Any]:
    """Nothing hostile ran or became markup; the payloads that survived validation show as text."""
    page.evaluate("() => document.querySelectorAll('details').forEach(d => { d.open = true; })")
    seen = page.evaluate(INERT_JS)
    assert seen["pwned"] == "undefined"
    assert seen["scripts"] == [base + "/static/dashboard.js"]
    assert seen["images"] == 0 and seen["handlers"] == 0
    for payload in HOSTILE[:4]:
        assert seen["names"].get(payload) == payload, f"{payload!r} not shown as text in {seen['names']}"
    assert not [k for k in seen["names"] if "49" in k or "49" in seen["names"][k]]
    assert "\u202e" not in seen["text"]
    return seen


def test_hostile_users_stay_data_through_the_pipeline(watched: Watched, cluster: LocalCluster,
                                                      tmp_path: pathlib.Path,
                                                      artifacts: pathlib.Path) -> None:
    path, count, secrets = hostile_users(tmp_path)
    page = watched.open_live()
    run = run_id_of(ctl(cluster, "start-run", "--users", str(count), "--source", f"file:{path}"))
    # First through the live swap into the open page, then through a fresh load.
    page.wait_for_selector(f'#runs tr[data-run="{run}"]', state="attached", timeout=LIVE_MS)
    assert_inert(page, watched.base)
    page.reload(wait_until="load")
    assert_inert(page, watched.base)
    page.screenshot(path=str(artifacts / "dashboard-e2e-hostile.png"), full_page=True)

    stats = get_json(cluster.url + "api/stats.json")
    last = stats["last_run"]
    assert last["run_id"] == run
    # The 20 bidi-named users and the 10 with a bidi password are quarantined, and the page says so.
    assert last["quarantined"] == 30 and sum(last["quarantine"].values()) == 30
    assert all(reason.startswith("bidi:") for reason in last["quarantine"]), last["quarantine"]
    assert last["total_users"] == count - 30
    assert page.locator('#last [data-card="total_users"] .card-sub').inner_text() == "30 quarantined"
    assert page.locator(f'#runs tr[data-run="{run}"] td').nth(4).inner_text() == "30"

    # The server's HTML, and the sections the live script swaps in, hold the payloads only escaped.
    _, _, html = get_text(cluster.url)
    sections = get_json(cluster.url + "api/sections.json")["sections"]
    for where, markup in {"GET /": html, **sections}.items():
        for payload in [*HOSTILE, *HOSTILE_PASSWORDS]:
            assert payload not in markup or payload == escape(payload), f"{payload!r} unescaped in {where}"
        for fragment in ("<script>window", "<img", 'onerror="', "\u202e", "\u202c"):
            assert fragment not in markup, f"{fragment!r} in {where}"
    for payload in HOSTILE[:4]:
        assert str(escape(payload)) in html, f"{payload!r} did not reach the page as text"
    assert html.count("<script") == 1
    served = {path: get_text(cluster.url + path)[2] for path in ("", "api/stats.json", "api/sections.json")}
    served["page"] = page.content()
    for where, body in served.items():
        for pw in secrets:
            for form in {pw, str(escape(pw)), json.dumps(pw)[1:-1]}:  # as is, HTML-escaped, JSON-escaped
                assert form not in body, f"password {pw!r} in {where}"
    watched.assert_clean()
    assert_matches_api(page, stats)


def test_page_is_complete_without_javascript(browser: Any, cluster: LocalCluster) -> None:
    ctl(cluster, "start-run", "--users", "300", "--seed", "no-js")
    stats = get_json(cluster.url + "api/stats.json")
    w = Watched(browser, cluster.url, java_script_enabled=False)
    try:
        page = w.open("/")
        assert page.evaluate("() => document.documentElement.classList.contains('js')") is False
        assert page.locator("#last").is_visible()
        assert page.locator('#last [data-chart="gender"] svg').is_visible()
        assert [u for u in w.requests if "/api/" in u or "/events" in u] == []  # no script ran
        w.assert_clean()
        assert_matches_api(page, stats)
    finally:
        w.close()
