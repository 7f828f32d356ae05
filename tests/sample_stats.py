"""A realistic ``/api/stats.json`` document, as the consumer computes it, for dashboard tests.

``sample_stats()`` is three complete runs and one running; ``large_stats()``
the same shape scaled to a million users with many runs and long tails;
``hostile_stats()`` puts script, markup, template and bidi payloads in every
string a user controls. ``KNOWN_PASSWORDS`` are the plaintexts behind the
masked passwords in these documents: none may appear on the page.
"""

from __future__ import annotations

import copy
from typing import Any

from infraetl.pwshape import mask

#: Plaintexts whose masked forms appear below (top passwords, reuse, most secure).
KNOWN_PASSWORDS: tuple[str, ...] = (
    "soccer", "trustno1", "letmein", "qwerty123", "dragon", "sunshine",
    "monkey", "shadow", "master", "superman", "Tr0ub4dor&3x!",
)

GENERATED_AT = 1_714_566_000.0  # 2024-05-01 12:20:00 UTC


def _figures(users: int, seed: int = 0) -> dict[str, Any]:
    """The figures of a run (or of all runs) for ``users`` users, in proportion."""
    def share(p: float) -> int:
        return round(users * p)

    male = share(0.507)
    countries = {
        "United States": share(0.12), "Germany": share(0.1), "France": share(0.09),
        "United Kingdom": share(0.085), "Brazil": share(0.08), "Canada": share(0.075),
        "Australia": share(0.07), "Spain": share(0.065), "Netherlands": share(0.06),
        "Norway": share(0.055), "Finland": share(0.05), "Ireland": share(0.045),
        "Switzerland": share(0.04), "Denmark": share(0.035),
    }
    nat_codes = ["US", "DE", "FR", "GB", "BR", "CA", "AU", "ES", "NL", "NO", "FI", "IE", "CH", "DK"]
    nationalities = dict(zip(nat_codes, countries.values(), strict=False))
    top = ["soccer", "trustno1", "letmein", "qwerty123", "dragon", "sunshine",
           "monkey", "shadow", "master", "superman"]
    return {
        "total_users": users,
        "age": {"mean": 48.7, "min": 21, "max": 77, "median": 48.0, "std": 16.2,
                "p10": 27.0, "p90": 71.0,
                "decades": {"20s": share(0.15), "30s": share(0.18), "40s": share(0.19),
                            "50s": share(0.18), "60s": share(0.17), "70s": share(0.13)}},
        "gender": {"male": male, "female": users - male},
        "countries": countries,
        "nationalities": nationalities,
        "email_domains": {"example.com": users},
        "username_length": {"min": 7, "max": 18, "mean": 12.4},
        "password_length": {"min": 3, "max": 16, "mean": 7.2,
                            "histogram": {str(n): share(p) for n, p in
                                          [(3, .02), (4, .06), (5, .11), (6, .21), (7, .18), (8, .2),
                                           (9, .08), (10, .06), (11, .03), (12, .02), (14, .02), (16, .01)]},
                            "short_pct": 40.0},
        "registration_years": {str(y): share(0.05) + (y % 3) for y in range(2002, 2023)},
        "timezones": {tz: share(p) for tz, p in [
            ("+5:30", .06), ("-5:00", .055), ("+1:00", .05), ("0:00", .045), ("+9:00", .04),
            ("-8:00", .038), ("+3:00", .035), ("-3:00", .033), ("+10:00", .03), ("-7:00", .028),
            ("+4:00", .025), ("-10:00", .02)]},
        "quarantine": {"missing:location.postcode": 3 + seed, "strange_characters:name.first": 1},
        "warnings": {"id.value missing": share(0.04), "postcode not numeric": share(0.02)},
        "age_by_nationality": {c: {"n": n, "mean": 45.0 + i, "std": 15.5, "min": 21.0, "max": 77.0}
                               for i, (c, n) in enumerate(nationalities.items())},
        "top_first_names": [{"value": name, "count": max(1, share(0.004) - i), "max_count": max(1, share(0.004) - i)}
                            for i, name in enumerate(["Emma", "Noah", "Léa", "Oliver", "Mía", "Lucas", "Ida",
                                                      "Aarav", "Нина", "Matheus"])],
        "top_cities": [{"value": city, "count": max(1, share(0.003) - i), "max_count": max(1, share(0.003) - i)}
                       for i, city in enumerate(["Bendigo", "Nantes", "Oulu", "Drammen", "Cork", "Zürich",
                                                 "São Paulo", "Almere", "Toledo", "Kolkata"])],
        "audit": {
            "users": users,
            "revealed": False,
            "complexity": {"lowercase_only": share(0.58), "numbers_only": share(0.07),
                           "letters_and_numbers": share(0.3), "includes_symbols": share(0.05),
                           "empty": 0},
            "strength": {"strong": share(0.012), "weak": users - share(0.012), "percent_strong": 1.2},
            "name_in_password": share(0.011),
            "username_in_password": share(0.004),
            "birthyear_in_password": share(0.006),
            "top_passwords": [{"password": mask(p), "count": max(1, share(0.01) - i)}
                              for i, p in enumerate(top)],
            "most_secure_password": {"password": mask("Tr0ub4dor&3x!"), "score": 4, "length": 13,
                                     "classes": ["lower", "upper", "digit", "symbol"], "zxcvbn_score": 4},
            "entropy_bits": {"mean": 31.6, "histogram": {
                **{str(b): 0 for b in range(0, 200, 10)}, "200+": 0,
                "0": share(0.05), "10": share(0.22), "20": share(0.38), "30": share(0.22), "40": share(0.1),
                "50": share(0.03)}},
            "zxcvbn_score": {"0": share(0.46), "1": share(0.38), "2": share(0.12), "3": share(0.03),
                             "4": share(0.01)},
            "reuse": {"users_sharing": share(0.12), "largest_group": max(1, share(0.01)),
                      "top_reused": [{"password": mask(p), "count": max(2, share(0.01) - i)}
                                     for i, p in enumerate(top[:5])]},
            "personal_info": {"first_name": share(0.008), "last_name": share(0.003), "username": share(0.004),
                              "birth_year": share(0.006), "city": share(0.001)},
            "masks": [{"mask": "llllll", "count": share(0.15)}, {"mask": "llllllll", "count": share(0.12)},
                      {"mask": "lllllldd", "count": share(0.04)}],
            "by_nationality": {c: {"users": n, "weak": (w := n - (n * (i % 5 + 1)) // 40),
                                   "percent_weak": round(100 * w / n, 1)}
                               for i, (c, n) in enumerate(nationalities.items()) if n},
            "empty_passwords": 0,
        },
    }


def _run(i: int, users: int, *, state: str = "complete", source: str = "randomuser") -> dict[str, Any]:
    started = GENERATED_AT - 3600 + i * 600.0
    finished = None if state == "running" else started + 4.25 + i
    return {"run_id": f"20240501T{11 + i // 6:02d}{(i % 6) * 10:02d}00-{i:04x}", "source": source,
            "requested": users, "delivered": users - (4 if state == "complete" else users // 2),
            "quarantined": 4 if state == "complete" else 0, "started_at": started,
            "finished_at": finished, "duration_s": None if finished is None else finished - started,
            "state": state, "reason": None if state != "failed" else "source: HTTP 503 after 5 retries"}


def sample_stats() -> dict[str, Any]:
    """Three complete runs (300, 500, 400 users), a failed one and one in progress."""
    runs = [_run(0, 300), _run(1, 500, source="synthetic"), _run(2, 50, state="failed"),
            _run(3, 400), _run(4, 1000, state="running")]
    last = runs[3]
    figures_last = _figures(last["delivered"], seed=1)
    complete = [r for r in runs if r["state"] == "complete"]
    return {
        "generated_at": GENERATED_AT,
        "passwords_revealed": False,
        "last_run": {**figures_last, "run_id": last["run_id"], "state": "complete",
                     "source": last["source"], "requested": last["requested"]},
        "cumulative": {**_figures(sum(r["delivered"] for r in complete), seed=3), "runs": len(complete)},
        "runs": runs,
    }


def large_stats(users: int = 1_000_000, runs: int = 500) -> dict[str, Any]:
    """A state of ``users`` users over ``runs`` runs, with long tails in every counter."""
    stats = sample_stats()
    cumulative = {**_figures(users), "runs": runs}
    cumulative["countries"].update({f"Country {i}": 10 + i for i in range(200)})
    cumulative["timezones"].update({f"+{i % 14}:{(i * 15) % 60:02d}": 5 + i for i in range(40)})
    cumulative["email_domains"].update({f"mail{i}.example": i for i in range(500)})
    cumulative["registration_years"].update({str(y): 1000 + y for y in range(1990, 2025)})
    cumulative["quarantine"].update({f"strange_characters:field{i}": i for i in range(50)})
    stats["cumulative"] = cumulative
    stats["runs"] = [_run(i, users // runs) for i in range(runs)]
    return stats


HOSTILE: tuple[str, ...] = (
    "<script>window.__pwned=1</script>",
    '"><img src=x onerror="window.__pwned=2">',
    "{{7*7}}",
    "\u202egnp.exe",
    "'><svg onload=window.__pwned=3>",
    "</title><script>window.__pwned=4</script>",
)


def hostile_stats() -> dict[str, Any]:
    """The sample with hostile strings as names, cities, countries, domains, reasons, run ids and passwords."""
    stats = copy.deepcopy(sample_stats())
    for figures in (stats["last_run"], stats["cumulative"]):
        for key in ("countries", "nationalities", "email_domains", "timezones", "quarantine", "warnings"):
            figures[key].update({h: 10_000 + i for i, h in enumerate(HOSTILE)})
        audit = figures["audit"]
        audit["personal_info"].update({h: 9_000 + i for i, h in enumerate(HOSTILE)})
        audit["top_passwords"] = [{"password": h, "count": 9_000 + i} for i, h in enumerate(HOSTILE)]
        audit["reuse"]["top_reused"] = [{"password": h, "count": 9_000 + i} for i, h in enumerate(HOSTILE)]
        audit["most_secure_password"] = {"password": HOSTILE[1], "score": 4, "classes": list(HOSTILE),
                                         "zxcvbn_score": 4}
        audit["masks"] = [{"mask": h, "count": 10} for h in HOSTILE]
        figures["top_first_names"] = [{"value": h, "count": 9_000 + i, "max_count": 9_000 + i}
                                      for i, h in enumerate(HOSTILE)]
        figures["top_cities"] = [{"value": h, "count": 9_000 + i, "max_count": 9_000 + i}
                                 for i, h in enumerate(HOSTILE)]
        audit["by_nationality"].update({h: {"users": 10, "weak": 5, "percent_weak": 50.0} for h in HOSTILE})
    for run, h in zip(stats["runs"], HOSTILE, strict=False):
        run["run_id"], run["source"], run["reason"] = h, h, h
    stats["last_run"]["run_id"] = HOSTILE[0]
    stats["last_run"]["source"] = HOSTILE[1]
    return stats
