"""The peer of the benchmark: InfraETL1's whole pipeline, done the way it did it.

Re-written here (not copied) from the original's source, step by step, so the
benchmark can quote a speed-up over the very approach this project replaces,
measured side by side on the same users:

``extract`` (VM1)
    parse each API page with the standard JSON parser; keep a user only if every value
    is non-null and no string is blank (a recursive walk); flatten each user to dotted
    keys; collect the CSV header by scanning every user's keys; write the CSV with
    ``csv.DictWriter``; encrypt the whole file with one Fernet token.
``transform`` (VM2, after the scp that a file on disk stands in for)
    decrypt; read the CSV back with ``csv.DictReader`` and rebuild each nested user;
    walk every field of every user and test each string for "strange characters"
    (NFKC, four whole-string patterns through ``re``'s cache, the allowed-characters
    pattern, then the character categories and code points), setting a flagged user
    aside with a message per field; compute the statistics with ``statistics.mean``,
    ``datetime.fromisoformat`` and per-figure loops.
``audit``
    seven passes over the users: complexity classes by regex, the top 10, strong vs
    weak (charset entropy and classes by ``any()`` over the characters), first or
    last name, birth year and username inside the password, the "most secure" one.
``load``
    write the processed users and the statistics as indented JSON, and the dashboard
    by string replacement into a template with the charts' data as JSON.

Two of the original's defects are left out because they would change which users
are counted, not how fast: its null check also dropped every user whose
``id.value`` is null (IR, NZ, TR, UA), so ``id`` is not part of the check here;
and it printed each flagged field, which here goes to a buffer instead of the
terminal. Its validator's other defect is kept, because that is how it computed
the figures: text outside Latin-1 plus Latin Extended (Persian, Cyrillic, …) is
"strange", and such users are left out of the statistics and the audit.

:func:`lean_pipeline` is a leaner per-record version of VM2 alone (JSON instead of
CSV, one regex per field, no files): a lower bound on the original's cost that
the benchmark quotes as well. Nothing here is used by the pipeline.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import string
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

# ------------------------------------------------------------------ VM1: extract


def _present(value: Any) -> bool:
    """The original's null check: no None anywhere, no blank string, recursively."""
    if value is None:
        return False
    if isinstance(value, str) and value.strip() == "":
        return False
    if isinstance(value, dict):
        return all(_present(v) for v in value.values())
    if isinstance(value, list):
        return all(_present(v) for v in value)
    return True


def _flatten(d: dict[str, Any], parent: str = "") -> dict[str, Any]:
    items: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{parent}.{k}" if parent else k
        if isinstance(v, dict):
            items.extend(_flatten(v, key).items())
        else:
            items.append((key, v))
    return dict(items)


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flat_key, value in flat.items():
        keys = flat_key.split(".")
        node = out
        for k in keys[:-1]:
            if k not in node:
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return out


def extract(pages: list[bytes], key: bytes) -> bytes:
    """VM1: API pages in, one encrypted CSV out."""
    kept: list[dict[str, Any]] = []
    for page in pages:
        data = json.loads(page)
        for user in data["results"]:
            if _present({k: v for k, v in user.items() if k != "id"}):
                kept.append(user)
    flat = [_flatten(u) for u in kept]
    fieldnames: list[str] = []
    for row in flat:
        for k in row:
            if k not in fieldnames:
                fieldnames.append(k)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(flat)
    return Fernet(key).encrypt(buffer.getvalue().encode("utf-8"))


# ------------------------------------------------------------------ VM2: transform

_ALLOWED = r"^[\w\s'’‘\-–—.,;:/()@+À-ÿ&]+$"


def _strange(text: str) -> bool:
    """The original's "strange characters" test, step for step."""
    normalized = unicodedata.normalize("NFKC", text)
    if (re.fullmatch(r"&[a-zA-Z0-9#]+;", normalized)
            or re.fullmatch(r"^[+-]\d{1,2}:\d{2}$", normalized)
            or re.fullmatch(r"^[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}$", normalized)
            or re.fullmatch(r"^https?://\S+$", normalized)):
        return False
    if re.compile(_ALLOWED, re.UNICODE).fullmatch(normalized):
        return False
    if any(unicodedata.category(ch).startswith("C") for ch in normalized):
        return True
    return any(ord(ch) > 591 for ch in normalized)


def _fields(data: Any, parent: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _fields(v, f"{parent}.{k}" if parent else k)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield from _fields(item, f"{parent}[{i}]")
    else:
        yield parent, data


def _read_csv(token: bytes, key: bytes) -> list[dict[str, Any]]:
    text = Fernet(key).decrypt(token).decode("utf-8")
    return [_unflatten(row) for row in csv.DictReader(io.StringIO(text))]


def _validate(users: list[dict[str, Any]], log: io.StringIO) -> tuple[list[dict[str, Any]], int]:
    valid, flagged = [], 0
    for idx, user in enumerate(users, start=1):
        bad = False
        for field, value in _fields(user):
            if isinstance(value, str) and _strange(value):
                log.write(f"Strange character detected in user #{idx}, field '{field}': {value}\n")
                bad = True
        if bad:
            flagged += 1
        else:
            valid.append(user)
    return valid, flagged


def _stats(users: list[dict[str, Any]]) -> dict[str, Any]:
    ages = [int(u["dob"]["age"]) for u in users if "dob" in u and "age" in u["dob"]]
    genders = [u["gender"] for u in users if "gender" in u]
    countries = [u["location"]["country"] for u in users if "location" in u]
    nats = [u["nat"] for u in users if "nat" in u]
    domains = [u["email"].split("@")[-1] for u in users if "email" in u]
    ulen = [len(u.get("login", {}).get("username", "")) for u in users]
    passwords = [u.get("login", {}).get("password", "") for u in users]
    years: defaultdict[str, int] = defaultdict(int)
    for u in users:
        registered = u.get("registered", {}).get("date", "")
        if registered:
            try:
                years[str(datetime.fromisoformat(registered.rstrip("Z")).year)] += 1
            except ValueError:
                continue
    zones = Counter(u.get("location", {}).get("timezone", {}).get("offset") for u in users
                    if u.get("location", {}).get("timezone", {}).get("offset"))
    decades: defaultdict[str, int] = defaultdict(int)
    for age in ages:
        decades[f"{age // 10 * 10}s"] += 1
    plen = [len(p) for p in passwords if p]
    return {
        "total_users": len(users),
        "average_age": round(statistics.mean(ages), 2) if ages else 0.0,
        "minimum_age": min(ages, default=0), "maximum_age": max(ages, default=0),
        "most_frequent_gender": Counter(genders).most_common(1)[0][0] if genders else None,
        "gender_distribution": dict(Counter(genders)),
        "different_countries": len(set(countries)),
        "users_per_country": dict(Counter(countries)),
        "nationality_distribution": dict(Counter(nats)),
        "email_domain_distribution": dict(Counter(domains)),
        "username_length_stats": {"min": min(ulen, default=0), "max": max(ulen, default=0),
                                  "average": round(statistics.mean(ulen), 2) if ulen else 0.0},
        "age_decade_distribution": dict(decades),
        "password_length_stats": {
            "min": min(plen, default=0), "max": max(plen, default=0),
            "average": round(statistics.mean(plen), 2) if plen else 0.0,
            "distribution": dict(Counter(plen)),
            "short_percentage": round(sum(1 for n in plen if n < 8) / len(plen) * 100, 2) if plen else 0.0,
        },
        "registration_by_year": dict(sorted(years.items())),
        "timezone_distribution": dict(zones.most_common(10)),
    }


def transform(token: bytes, key: bytes) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """VM2: the encrypted CSV in; the users it keeps, how many it flagged, the statistics."""
    log = io.StringIO()
    users, flagged = _validate(_read_csv(token, key), log)
    return users, flagged, _stats(users)


# ------------------------------------------------------------------ VM2: audit


def _kinds(pw: str) -> int:
    return sum((any(c.islower() for c in pw), any(c.isupper() for c in pw),
                any(c.isdigit() for c in pw), any(c in string.punctuation for c in pw)))


def _entropy(pw: str) -> float:
    if not pw:
        return 0.0
    r = 0
    r += 26 if any(c.islower() for c in pw) else 0
    r += 26 if any(c.isupper() for c in pw) else 0
    r += 10 if any(c.isdigit() for c in pw) else 0
    r += len(string.punctuation) if any(c in string.punctuation for c in pw) else 0
    r += 1 if any(c.isspace() for c in pw) else 0
    return len(pw) * math.log2(r) if r else 0.0


def _name_in(u: dict[str, Any], low: str) -> bool:
    first = u.get("name", {}).get("first", "").lower()
    last = u.get("name", {}).get("last", "").lower()
    return bool((first and first in low) or (last and last in low))


def _year_in(u: dict[str, Any], pw: str) -> bool:
    born = u.get("dob", {}).get("date", "")
    year = born[:4] if born else ""
    return bool(year and year in pw)


def _user_in(u: dict[str, Any], low: str) -> bool:
    username = u.get("login", {}).get("username", "").lower()
    return bool(username and username in low)


def audit(users: list[dict[str, Any]]) -> dict[str, Any]:
    """The password audit, one pass per figure as the original made them."""
    passwords = [u.get("login", {}).get("password", "") for u in users]
    complexity: defaultdict[str, int] = defaultdict(int)
    for p in passwords:
        if not p:
            continue
        if re.fullmatch(r"[a-z]+", p):
            complexity["lowercase_only"] += 1
        elif re.fullmatch(r"\d+", p):
            complexity["numbers_only"] += 1
        elif re.search(r"[^\w]", p):
            complexity["includes_symbols"] += 1
        else:
            complexity["letters_and_numbers"] += 1
    top = [{"password": p, "count": c} for p, c in Counter(passwords).most_common(10)]
    strong = 0
    for u in users:
        pw = u.get("login", {}).get("password", "")
        if _entropy(pw) >= 50 and pw and _kinds(pw) >= 3:
            strong += 1
    name_in = sum(_name_in(u, u.get("login", {}).get("password", "").lower()) for u in users)
    year_in = sum(_year_in(u, u.get("login", {}).get("password", "")) for u in users)
    user_in = sum(_user_in(u, u.get("login", {}).get("password", "").lower()) for u in users)
    best, best_score = "N/A", -1
    for u in users:
        pw = u.get("login", {}).get("password", "")
        if not pw:
            continue
        low = pw.lower()
        if _name_in(u, low) or _year_in(u, pw) or _user_in(u, low):
            continue
        score = len(pw) + 3 * _kinds(pw)
        if score > best_score:
            best, best_score = pw, score
    n = len(users)
    return {
        "password_complexity_stats": dict(complexity),
        "password_pattern_stats": top,
        "password_strength": {"strong": strong, "weak": n - strong,
                              "percent_strong": round(strong / n * 100, 2) if n else 0.0, "total_users": n},
        "name_in_password": {"count": name_in, "total": n},
        "birthyear_in_password": {"count": year_in, "total": n},
        "username_in_password": {"count": user_in, "total": n},
        "most_secure_password": best,
    }


# ------------------------------------------------------------------ VM2: load

_TEMPLATE = """<!doctype html><html><head><title>InfraETL</title></head><body>
<p>{{TOTAL_USERS}} users, mean age {{AVG_AGE}}, mostly {{MOST_FREQUENT_GENDER}},
{{DIFFERENT_COUNTRIES}} countries, at {{TIMESTAMP}}</p>
<p>password length {{AVG_PASSWORD_LENGTH}} ({{PASS_LEN_MIN}}–{{PASS_LEN_MAX}}); strong
{{PASSWORD_STRENGTH_SUMMARY}}; name {{NAME_IN_PASSWORD}}; birth year {{BIRTHYEAR_IN_PASSWORD}};
username {{USERNAME_IN_PASSWORD}}; most secure {{MOST_SECURE_PASSWORD}}</p>
<table>{{TOP_PASSWORDS}}</table>{{CHARTS}}</body></html>"""


def _chart(element: str, kind: str, data: dict[Any, Any]) -> str:
    return (f"new Chart(document.getElementById('{element}').getContext('2d'), {{type: '{kind}', "
            f"data: {{labels: {json.dumps(list(data))}, datasets: [{{data: {json.dumps(list(data.values()))}}}]}}}});")


def load(users: list[dict[str, Any]], stats: dict[str, Any], out: Path) -> Path:
    """Write the processed users, the statistics and the dashboard; return the dashboard's path."""
    with open(out / "processed_users.json", "w", encoding="utf-8") as f:
        json.dump(users, f, indent=4)
    with open(out / "statistics.json", "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=4)
    lengths, strength = stats["password_length_stats"], stats["password_strength"]
    top_countries = dict(sorted(stats["users_per_country"].items(), key=lambda x: x[1], reverse=True)[:10])
    charts = "".join(_chart(e, k, d) for e, k, d in (
        ("genderChart", "pie", stats["gender_distribution"]),
        ("ageChart", "bar", {k: stats["age_decade_distribution"][k] for k in sorted(stats["age_decade_distribution"])}),
        ("countryChart", "bar", top_countries),
        ("passComplexityChart", "doughnut",
         {k.replace("_", " ").title(): v for k, v in stats["password_complexity_stats"].items()}),
        ("passLengthChart", "bar", dict(sorted(lengths["distribution"].items()))),
        ("regYearChart", "line", stats["registration_by_year"]),
        ("timezoneChart", "bar", {f"UTC {k}": v for k, v in stats["timezone_distribution"].items()}),
    ))
    rows = "".join(f"<tr><td>{i}</td><td>{t['password']}</td><td>{t['count']}</td></tr>"
                   for i, t in enumerate(stats["password_pattern_stats"][:10], 1))
    html = _TEMPLATE
    for name, value in (
        ("TOTAL_USERS", stats["total_users"]), ("AVG_AGE", stats["average_age"]),
        ("MOST_FREQUENT_GENDER", stats["most_frequent_gender"]),
        ("DIFFERENT_COUNTRIES", stats["different_countries"]),
        ("TIMESTAMP", datetime.now().strftime("%Y-%m-%d %H:%M:%S")),
        ("AVG_PASSWORD_LENGTH", lengths["average"]), ("PASS_LEN_MIN", lengths["min"]),
        ("PASS_LEN_MAX", lengths["max"]),
        ("PASSWORD_STRENGTH_SUMMARY", f"{strength['percent_strong']}% ({strength['strong']})"),
        ("NAME_IN_PASSWORD", f"{stats['name_in_password']['count']} / {stats['name_in_password']['total']}"),
        ("BIRTHYEAR_IN_PASSWORD",
         f"{stats['birthyear_in_password']['count']} / {stats['birthyear_in_password']['total']}"),
        ("USERNAME_IN_PASSWORD",
         f"{stats['username_in_password']['count']} / {stats['username_in_password']['total']}"),
        ("MOST_SECURE_PASSWORD", stats["most_secure_password"]),
        ("TOP_PASSWORDS", rows), ("CHARTS", f"<script>{charts}</script>"),
    ):
        html = html.replace("{{" + name + "}}", str(value))
    page = out / "dashboard.html"
    page.write_text(html, encoding="utf-8")
    return page


def original_pipeline(pages: list[bytes], key: bytes, out: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """The whole original run: its statistics (with the audit and the flagged count) and its
    seconds per phase (``extract``, ``transform``, ``audit``, ``load``)."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    (out / "valid_users.csv.enc").write_bytes(extract(pages, key))
    seconds["extract"] = time.perf_counter() - t
    t = time.perf_counter()
    users, flagged, stats = transform((out / "valid_users.csv.enc").read_bytes(), key)
    seconds["transform"] = time.perf_counter() - t
    t = time.perf_counter()
    stats.update(audit(users))
    stats["flagged_users"] = flagged
    seconds["audit"] = time.perf_counter() - t
    t = time.perf_counter()
    load(users, stats, out)
    seconds["load"] = time.perf_counter() - t
    return stats, seconds


def api_pages(users: list[dict[str, Any]], size: int = 500) -> list[bytes]:
    """The users as the API's response bodies, ``size`` a page (what VM1 downloaded)."""
    return [json.dumps({"results": users[i:i + size],
                        "info": {"seed": "bench", "results": size, "page": i // size + 1, "version": "1.4"}},
                       ensure_ascii=False).encode("utf-8")
            for i in range(0, len(users), size)]


# ------------------------------------------------------------------ the lean variant

_STRANGE = re.compile(r"[^\w\s@.,'\-+:/()]")
_LOWER_ONLY = re.compile(r"^[a-z]+$")
_DIGITS_ONLY = re.compile(r"^\d+$")
_SYMBOL = re.compile(r"[^\w]")


def _leaves(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        out = []
        for v in obj.values():
            out.extend(_leaves(v))
        return out
    return [obj]


def lean_pipeline(token: bytes, key: bytes) -> dict[str, Any]:
    """VM2's figures, leaner than the original: JSON in memory, one regex per field,
    one loop per group of figures, no files. A lower bound on the original's cost."""
    users = json.loads(Fernet(key).decrypt(token))
    clean = []
    strange = 0
    for u in users:
        leaves = _leaves({k: v for k, v in u.items() if k != "id"})
        if any(v is None for v in leaves):
            continue
        if any(isinstance(v, str) and _STRANGE.search(v) for v in leaves):
            strange += 1
        clean.append(u)
    ages = [u["dob"]["age"] for u in clean]
    gender: Counter[str] = Counter()
    countries: Counter[str] = Counter()
    nats: Counter[str] = Counter()
    domains: Counter[str] = Counter()
    years: Counter[str] = Counter()
    zones: Counter[str] = Counter()
    ulen, plen = [], []
    for u in clean:
        gender[u["gender"]] += 1
        countries[u["location"]["country"]] += 1
        nats[u["nat"]] += 1
        domains[u["email"].split("@")[-1]] += 1
        years[u["registered"]["date"][:4]] += 1
        zones[u["location"]["timezone"]["offset"]] += 1
        ulen.append(len(u["login"]["username"]))
        plen.append(len(u["login"]["password"]))
    classes: Counter[str] = Counter()
    strong = 0
    top: Counter[str] = Counter()
    name_in = user_in = year_in = 0
    best, best_score = None, -1
    for u in clean:
        pw = u["login"]["password"]
        if _LOWER_ONLY.match(pw):
            classes["lowercase_only"] += 1
        elif _DIGITS_ONLY.match(pw):
            classes["numbers_only"] += 1
        elif _SYMBOL.search(pw):
            classes["includes_symbols"] += 1
        else:
            classes["letters_and_numbers"] += 1
        kinds = _kinds(pw)
        if _entropy(pw) >= 50 and kinds >= 3:
            strong += 1
        top[pw] += 1
        low = pw.lower()
        personal = False
        if u["name"]["first"].lower() in low or u["name"]["last"].lower() in low:
            name_in += 1
            personal = True
        if u["login"]["username"].lower() in low:
            user_in += 1
            personal = True
        if u["dob"]["date"][:4] in pw:
            year_in += 1
            personal = True
        score = len(pw) + 3 * kinds
        if not personal and score > best_score:
            best, best_score = pw, score
    n = len(clean)
    return {
        "total_users": n, "strange": strange,
        "age": {"mean": sum(ages) / n if n else None, "min": min(ages, default=None),
                "max": max(ages, default=None)},
        "gender": dict(gender), "countries": dict(countries), "nationalities": dict(nats),
        "email_domains": dict(domains), "registration_years": dict(years), "timezones": dict(zones),
        "username_length": {"min": min(ulen, default=None), "max": max(ulen, default=None),
                            "mean": sum(ulen) / n if n else None},
        "password_length": {"min": min(plen, default=None), "max": max(plen, default=None),
                            "mean": sum(plen) / n if n else None},
        "audit": {"complexity": dict(classes), "strong": strong, "weak": n - strong,
                  "top_passwords": top.most_common(10), "name_in_password": name_in,
                  "username_in_password": user_in, "birthyear_in_password": year_in,
                  "most_secure_password": best is not None},
    }
