"""The peer of the benchmark: InfraETL1's approach, re-written as it computed things.

VM2 of the original decrypted one Fernet file holding a JSON list of users,
checked every string field for "strange characters" with a regex, then
computed each figure with its own loop over a list of dicts, and audited
each password with regexes. This module does the same work on the same
users, per record and in plain Python, so the benchmark can quote a
speed-up measured side by side. It is not used by the pipeline.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from typing import Any

from cryptography.fernet import Fernet

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


def charset_entropy(pw: str) -> float:
    """L·log2(R) with R from the classes present (the original's estimator)."""
    r = 0
    if any(c.islower() for c in pw):
        r += 26
    if any(c.isupper() for c in pw):
        r += 26
    if any(c.isdigit() for c in pw):
        r += 10
    if any(c in string.punctuation for c in pw):
        r += 32
    if " " in pw:
        r += 1
    return len(pw) * math.log2(r) if r else 0.0


def original_pipeline(token: bytes, key: bytes) -> dict[str, Any]:
    """Decrypt, parse, validate and compute every figure the original showed."""
    users = json.loads(Fernet(key).decrypt(token))
    # validation: every string leaf checked for strange characters, nulls dropped
    clean = []
    strange = 0
    for u in users:
        # The original's null check, minus its bug: id.* may be null (IR, NZ, TR, UA).
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
        kinds = sum((any(c.islower() for c in pw), any(c.isupper() for c in pw),
                     any(c.isdigit() for c in pw), any(c in string.punctuation for c in pw)))
        if charset_entropy(pw) >= 50 and kinds >= 3:
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
