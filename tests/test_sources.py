"""Tests of the offline sources (synthetic, file replay) and the shared batch assembly."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from apiserver import strict_check

from infraetl.exceptions import ConfigError, SourceError
from infraetl.schema import FIELD_PATHS, NATIONALITIES
from infraetl.sources import Batch, RunPlan, accept_all, open_source
from infraetl.sources.randomuser import RandomUserSource
from infraetl.sources.replay import Collector, Rejected, ReplaySource
from infraetl.sources.synthetic import REFERENCE_DATE, SyntheticSource, UserGenerator

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = Path(__file__).parent / "data" / "randomuser-sample.json"
NULL_ID_NATS = ("IR", "NZ", "TR", "UA")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def sample_users() -> list[dict[str, Any]]:
    users: list[dict[str, Any]] = json.loads(SAMPLE.read_text(encoding="utf-8"))["results"]
    return users


def run(source: Any, check: Any = accept_all, **plan: Any) -> list[Batch]:
    return list(source.batches(RunPlan(**plan), check))


def users_of(batches: list[Batch]) -> list[dict[str, Any]]:
    return [u for b in batches for u in b.users]


def quarantine_of(batches: list[Batch]) -> Counter[str]:
    total: Counter[str] = Counter()
    for b in batches:
        total.update(b.quarantine)
    return total


def digest(batches: list[Batch]) -> str:
    """One hash of every batch's users, in order."""
    h = hashlib.sha256()
    for b in batches:
        h.update(json.dumps(b.users, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"|")
    return h.hexdigest()


def shape(value: Any) -> Any:
    """Keys of a nested user, with leaves replaced by None."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    return None


def reject_empty_password(users: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter[str]]:
    good = [u for u in users if u["login"]["password"]]
    return good, Counter({"empty:login.password": len(users) - len(good)} if len(good) < len(users) else {})


# -- synthetic --


def test_synthetic_same_seed_same_batches() -> None:
    plan = {"users": 1200, "seed": "same", "batch_size": 500}
    first, second = run(SyntheticSource(), **plan), run(SyntheticSource(chunk_size=97), **plan)
    assert [len(b.users) for b in first] == [500, 500, 200]
    assert digest(first) == digest(second)
    assert digest(run(SyntheticSource(), **{**plan, "seed": "other"})) != digest(first)


def test_synthetic_same_users_in_another_process() -> None:
    """A restarted producer must get the same users: no hash(), no clock, no set order."""
    code = (
        "import hashlib, json\n"
        "from infraetl.sources import RunPlan\n"
        "from infraetl.sources.synthetic import SyntheticSource\n"
        "plan = RunPlan(users=300, nat=('IR', 'GB', 'RS'), seed='proc', batch_size=100)\n"
        "b = list(SyntheticSource().batches(plan))\n"
        "print(hashlib.sha256(json.dumps([x.users for x in b], sort_keys=True).encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    here = run(SyntheticSource(), users=300, nat=("IR", "GB", "RS"), seed="proc", batch_size=100)
    assert out == hashlib.sha256(json.dumps([x.users for x in here], sort_keys=True).encode()).hexdigest()


def test_synthetic_has_the_api_shape_for_every_nationality() -> None:
    reference = shape(sample_users()[2])
    users = UserGenerator("shape").users(3000)
    assert {u["nat"] for u in users} == set(NATIONALITIES)
    for u in users:
        assert shape(u) == reference
        assert isinstance(u["location"]["street"]["number"], int)
        assert isinstance(u["dob"]["age"], int) and isinstance(u["registered"]["age"], int)
        assert isinstance(u["location"]["postcode"], (int, str))
        assert UUID4.match(u["login"]["uuid"])
        assert u["email"].endswith("@example.com") and u["email"].isascii()
        salted = (u["login"]["password"] + u["login"]["salt"]).encode()
        assert u["login"]["sha256"] == hashlib.sha256(salted).hexdigest()
        if u["nat"] in NULL_ID_NATS:
            assert u["id"]["value"] is None
        else:
            assert isinstance(u["id"]["value"], str) and u["id"]["value"]
    kinds = {(u["nat"], type(u["location"]["postcode"])) for u in users}
    assert ("GB", str) in kinds and ("DE", int) in kinds and ("IR", str) in kinds
    assert len({u["login"]["uuid"] for u in users}) == len(users)


def test_synthetic_keeps_the_api_quirks() -> None:
    users = UserGenerator("quirks").users(6000)
    by_nat: dict[str, list[dict[str, Any]]] = {}
    for u in users:
        by_nat.setdefault(u["nat"], []).append(u)
    assert any("\u200c" in u["name"]["last"] for u in by_nat["IR"])
    assert any(re.search("[\u0600-\u06ff]", u["name"]["first"]) for u in by_nat["IR"])
    assert all(re.search("[\u0400-\u04ff]", u["name"]["first"]) for u in by_nat["UA"])
    rs_streets = {u["location"]["street"]["name"] for u in by_nat["RS"]}
    assert any("\u0408" in s for s in rs_streets) and any(s.isascii() for s in rs_streets)
    assert any(u["name"]["first"].endswith(" ") or u["name"]["last"].endswith(" ") for u in users)


def test_synthetic_ages_match_dates_at_the_reference_date() -> None:
    ref = date(*REFERENCE_DATE)
    for u in UserGenerator("ages").users(2000):
        for key in ("dob", "registered"):
            d = date.fromisoformat(u[key]["date"][:10])
            assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", u[key]["date"])
            assert u[key]["age"] == ref.year - d.year - ((d.month, d.day) > (ref.month, ref.day))
        assert 21 <= u["dob"]["age"] <= 77 and 0 <= u["registered"]["age"] <= 22


def test_synthetic_passwords_are_realistic() -> None:
    users = UserGenerator("passwords").users(10000)
    passwords = [u["login"]["password"] for u in users]
    counts = Counter(passwords)
    empty = counts[""] / len(users)
    assert 0.002 < empty < 0.01
    def classes(p: str) -> int:
        return sum((any(c.islower() for c in p), any(c.isupper() for c in p),
                    any(c.isdigit() for c in p), any(not c.isalnum() for c in p)))

    strong = sum(1 for p in passwords if len(p) >= 12 and classes(p) >= 3) / len(users)
    assert 0.03 < strong < 0.08

    def personal(u: dict[str, Any]) -> bool:
        p, first = u["login"]["password"], u["email"].split("@")[0].split(".")[0]
        year = u["dob"]["date"][:4]
        return bool(p) and (first in p.lower() or year in p or year[2:] in p or p == u["login"]["username"])

    assert 0.07 < sum(map(personal, users)) / len(users) < 0.2
    top = [p for p, _ in counts.most_common(50)]
    assert "" in passwords and all(p.isascii() for p in top)
    assert counts.most_common(1)[0][1] > 20  # weak words repeat, as in the API


def test_synthetic_nat_filter_and_order_independent_codes() -> None:
    users = users_of(run(SyntheticSource(), users=500, nat=("gb", "FR"), seed="n"))
    assert {u["nat"] for u in users} == {"GB", "FR"}


def test_synthetic_tops_up_exactly_and_reports_only_needed_drops() -> None:
    source = SyntheticSource(chunk_size=333)
    batches = run(source, reject_empty_password, users=5000, seed="top", batch_size=700)
    assert [len(b.users) for b in batches] == [700] * 7 + [100]
    stream = UserGenerator("top").users(6000)
    passwords = [u["login"]["password"] for u in stream]
    # The 5000th user with a password ends the run; empties after it were never needed.
    last = [i for i, p in enumerate(passwords) if p][4999]
    assert quarantine_of(batches) == Counter({"empty:login.password": passwords[: last + 1].count("")})
    assert [u["login"]["uuid"] for u in users_of(batches)] == \
        [u["login"]["uuid"] for u in stream[: last + 1] if u["login"]["password"]]


def test_synthetic_fails_when_the_checker_rejects_everything() -> None:
    def reject_all(users: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter[str]]:
        return [], Counter({"bad:everything": len(users)})

    with pytest.raises(SourceError, match="only 0 of 10 users passed the checks"):
        run(SyntheticSource(), reject_all, users=10)


def test_synthetic_honours_deadline_and_cancel() -> None:
    with pytest.raises(SourceError, match="deadline"):
        run(SyntheticSource(), users=10, deadline=time.monotonic() - 1)
    cancel = threading.Event()
    batches = SyntheticSource().batches(RunPlan(users=1000, batch_size=100, cancelled=cancel.is_set))
    assert len(next(batches).users) == 100
    cancel.set()
    with pytest.raises(SourceError, match="cancelled"):
        list(batches)


@pytest.mark.parametrize("source", [SyntheticSource(), ReplaySource(SAMPLE), RandomUserSource("http://127.0.0.1:9/")])
def test_unknown_nationality_is_a_config_error(source: Any) -> None:
    with pytest.raises(ConfigError, match="'XX'"):
        run(source, users=10, nat=("GB", "XX"))


def test_open_source_picks_the_implementation(tmp_path: Path) -> None:
    assert open_source("synthetic").name == "synthetic"
    assert open_source(f"file:{SAMPLE}").name == "file"
    assert open_source("randomuser", api_url="http://127.0.0.1:1/api/").name == "randomuser"
    with pytest.raises(ConfigError, match="colour"):
        open_source("synthetic", colour="red")
    with pytest.raises(ConfigError, match="does not exist"):
        open_source(f"file:{tmp_path / 'missing.json'}")


def test_zero_users_yields_nothing() -> None:
    assert run(SyntheticSource(), users=0) == []


# -- collector --


def user(uuid: str, nat: str = "GB") -> dict[str, Any]:
    return {"login": {"uuid": uuid}, "nat": nat}


def test_collector_dedupes_filters_and_cuts_exactly() -> None:
    c = Collector(RunPlan(users=3, nat=("GB",), batch_size=2))
    records = [user("a"), "junk", user("a"), user("b", "FR"), {"login": {}, "nat": "GB"}, user("c"),
               Rejected("parse:line"), user("d"), None, user("e")]
    batches = c.add(records)
    assert [[u["login"]["uuid"] for u in b.users] for b in batches] == [["a", "c"], ["d"]]
    # Only what was looked at up to the 3rd good user counts; the None after it does not.
    assert quarantine_of(batches) == Counter({
        "type:record": 1, "duplicate:login.uuid": 1, "nat_not_requested": 1, "missing:login.uuid": 1,
        "parse:line": 1,
    })
    assert c.done and c.examined == 8 and c.add([user("f")]) == []


def test_collector_dedupes_across_pages_and_carries_counts() -> None:
    c = Collector(RunPlan(users=3, batch_size=3))
    assert c.add([user("a"), 42]) == []
    batches = c.add([user("a"), user("b"), user("c")])
    assert len(batches) == 1
    assert batches[0].quarantine == Counter({"type:record": 1, "duplicate:login.uuid": 1})


# -- replay --


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n"
                            for x in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pool_users() -> list[dict[str, Any]]:
    return UserGenerator("replay").users(250)


def test_replay_json_array(tmp_path: Path, pool_users: list[dict[str, Any]]) -> None:
    path = tmp_path / "users.json"
    path.write_text(json.dumps(pool_users, indent=1), encoding="utf-8")
    batches = run(ReplaySource(path, chunk_size=64), users=250, batch_size=100)
    assert [len(b.users) for b in batches] == [100, 100, 50]
    assert users_of(batches) == pool_users


def test_replay_saved_api_response_keeps_null_id_nationalities() -> None:
    batches = run(ReplaySource(SAMPLE), strict_check, users=4)
    got = users_of(batches)
    assert [u["nat"] for u in got] == ["IR", "NZ", "GB", "DE"]
    assert [u["id"]["value"] for u in got][:2] == [None, None]
    assert quarantine_of(batches) == Counter()


def test_replay_json_lines_with_bad_lines(tmp_path: Path, pool_users: list[dict[str, Any]]) -> None:
    lines: list[Any] = list(pool_users[:100])
    lines[10:10] = ['{"gender": "female", "name": ', "not json at all", "[1, 2"]
    lines.insert(50, "\xff\xfe garbage")
    lines.insert(60, "")
    path = write_jsonl(tmp_path / "users.jsonl", lines)
    batches = run(ReplaySource(path), users=100, batch_size=40)
    assert users_of(batches) == pool_users[:100]
    assert quarantine_of(batches) == Counter({"parse:line": 4})


def test_replay_json_lines_of_api_responses(tmp_path: Path, pool_users: list[dict[str, Any]]) -> None:
    pages = [{"results": pool_users[i:i + 50], "info": {"page": i // 50 + 1}} for i in range(0, 250, 50)]
    path = write_jsonl(tmp_path / "pages.jsonl", [*pages[:2], {"error": "Uh oh"}, *pages[2:]])
    batches = run(ReplaySource(path), users=250, batch_size=100)
    assert users_of(batches) == pool_users
    assert quarantine_of(batches) == Counter({"api_error:line": 1})


def test_replay_first_line_broken_is_still_json_lines(tmp_path: Path,
                                                      pool_users: list[dict[str, Any]]) -> None:
    path = write_jsonl(tmp_path / "users.jsonl", ['{"broken', *pool_users[:5]])
    batches = run(ReplaySource(path), users=5)
    assert len(users_of(batches)) == 5 and quarantine_of(batches) == Counter({"parse:line": 1})


def test_replay_streams_json_lines(tmp_path: Path, pool_users: list[dict[str, Any]],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_jsonl(tmp_path / "big.jsonl", pool_users * 40)  # 10,000 lines, duplicates after 250
    from infraetl.sources import replay

    parsed = 0
    real_loads = json.loads

    def counting_loads(s: Any, *a: Any, **k: Any) -> Any:
        nonlocal parsed
        parsed += 1
        return real_loads(s, *a, **k)

    monkeypatch.setattr(replay.json, "loads", counting_loads)  # type: ignore[attr-defined]
    batches = run(ReplaySource(path, chunk_size=50), users=120, batch_size=50)
    assert len(users_of(batches)) == 120
    assert parsed <= 120 + 50 + 5  # read up to the chunk that completed the run, not the file


def test_replay_dedupes_and_filters_nat(tmp_path: Path, pool_users: list[dict[str, Any]]) -> None:
    path = write_jsonl(tmp_path / "dups.jsonl", pool_users + pool_users)
    gb = [u for u in pool_users if u["nat"] == "GB"]
    batches = run(ReplaySource(path), users=len(gb), nat=("GB",))
    assert users_of(batches) == gb
    with pytest.raises(SourceError) as err:
        run(ReplaySource(path), users=251)
    assert str(err.value) == f"file {path} holds only 250 valid users, 251 were requested"


@pytest.mark.parametrize("content, message", [
    ("{\n  \"results\": [\n", "is not valid JSON"),
    ('{\n  "error": "Uh oh, something has gone wrong"\n}', "saved API error"),
    ("42", "holds only 0 valid users"),
])
def test_replay_unusable_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SourceError, match=message):
        run(ReplaySource(path), users=1)


def test_seen_uuids_is_a_set_across_merges_and_all_or_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from infraetl.sources import seen

    monkeypatch.setattr(seen, "MERGE_AT", 8)
    s = seen.SeenUuids()
    first = [f"00000000-0000-4000-8000-{i:012d}" for i in range(20)]
    assert s.add_all(first[:10]) and len(s) == 10  # crosses MERGE_AT: part sorted, part recent
    assert not s.add(first[3]) and not s.add(first[9])
    # One repeat (old or within the list) refuses the whole list, and adds nothing.
    assert not s.add_all([first[10], first[2]]) and len(s) == 10
    assert not s.add_all([first[11], first[11]]) and len(s) == 10
    assert s.add_all(first[10:20]) and len(s) == 20
    assert s.add("not a canonical uuid at all") and not s.add("not a canonical uuid at all")
    assert all(not s.add(u) for u in first)
    # The merged keys stay one strictly increasing array (what the membership look-up bisects).
    assert len(s._sorted) >= 16 and bool((s._sorted[1:] > s._sorted[:-1]).all())
    assert set(s._sorted.tolist()) | s._recent == {seen.key(u) for u in [*first, "not a canonical uuid at all"]}


def test_seen_uuids_cost_about_8_bytes_each() -> None:
    import tracemalloc

    from infraetl.sources.seen import SeenUuids

    tracemalloc.start()
    s = SeenUuids()
    for start in range(0, 300_000, 500):
        assert s.add_all([f"{i:08x}-0000-4000-8000-000000000000" for i in range(start, start + 500)])
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(s) == 300_000
    assert held < 300_000 * 24  # a set of the strings would hold ~115 bytes each


# -- the producer's row checker: the same batches as dicts + flattening --


def messy_records(n: int, seed: str) -> list[Any]:
    """Users with every kind of defect the collector and the checker count, in a fixed order."""
    import copy

    users = UserGenerator(seed).users(n)
    out: list[Any] = []
    for i, u in enumerate(users):
        u = copy.deepcopy(u)
        k = i % 23
        if k == 3:
            del u["email"]                      # missing:email
        elif k == 5:
            u["dob"]["age"] = True              # type:dob.age
        elif k == 7:
            u["name"]["first"] = ""             # empty:name.first
        elif k == 11:
            out.append(copy.deepcopy(users[i - 1]))  # duplicate:login.uuid
        elif k == 13:
            del u["id"]                         # valid: optional fields filled
        elif k == 17:
            out.append("not a user")            # type:record
        elif k == 19:
            out.append(Rejected("parse:line"))
        elif k == 21:
            u["location"]["postcode"] = 12345   # an int postcode travels as a string
        out.append(u)
    return out


@pytest.mark.parametrize(("want", "nat", "batch_size", "chunk"), [
    (300, (), 100, 100), (257, (), 64, 37), (120, ("GB", "IR", "NZ"), 50, 100), (1, (), 500, 7),
])
def test_row_checker_gives_the_same_batches_as_dicts(want: int, nat: tuple[str, ...], batch_size: int,
                                                      chunk: int) -> None:
    from infraetl.schema import rows_to_columns, to_columns
    from infraetl.validate import check_records, check_rows

    records = messy_records(1500, "rows")
    got = {}
    for check in (check_records, check_rows):
        c = Collector(RunPlan(users=want, nat=nat, batch_size=batch_size), check)
        batches = [b for i in range(0, len(records), chunk) for b in c.add(records[i:i + chunk])]
        flat = rows_to_columns if check is check_rows else to_columns
        got[check.__name__] = ([(flat(b.users), b.quarantine) for b in batches], c.examined, c.accepted)
    assert got["check_rows"] == got["check_records"]
    batches, examined, accepted = got["check_rows"]
    assert accepted == want and sum(len(cols["login.uuid"]) for cols, _ in batches) == want
    if want > 100:  # the defects were reached
        reasons = quarantine_of([Batch([], q) for _, q in batches])
        assert {"missing:email", "type:dob.age", "empty:name.first", "type:record"} <= reasons.keys()
        assert "12345" in [v for cols, _ in batches for v in cols["location.postcode"]]


@pytest.mark.parametrize("source", ["replay", "synthetic"])
def test_sources_with_the_row_checker_match_the_dict_checker(tmp_path: Path, source: str) -> None:
    from infraetl.schema import rows_to_columns, to_columns
    from infraetl.validate import check_records, check_rows

    if source == "replay":
        lines: list[Any] = [r if isinstance(r, dict) else "{broken" for r in messy_records(900, "file")]
        src: Any = ReplaySource(write_jsonl(tmp_path / "u.jsonl", lines))
    else:
        src = SyntheticSource()
    plan = {"users": 700, "batch_size": 200, "seed": "same"}
    dicts = [(to_columns(b.users), b.quarantine) for b in run(src, check_records, **plan)]
    rows = [(rows_to_columns(b.users), b.quarantine) for b in run(src, check_rows, **plan)]
    assert rows == dicts and len(rows) == 4


# -- the typed fast path of the replay: a subset of the general path, never a different verdict --

MUTATIONS: list[Any] = [None, "", " ", "x", 0, 7, -1, 1.5, True, [], {}, (1 << 63) - 1, 1 << 63,
                        (1 << 64) - 1, 1 << 64, -(1 << 63), -(1 << 63) - 1, "\u0000", "<script>",
                        "é" * 256, "é" * 257]


def _general_verdict(line: bytes) -> tuple[str, Any]:
    """What the general path (orjson, else json; then check_rows) makes of one line."""
    import orjson

    from infraetl.validate import check_rows

    try:
        record = orjson.loads(line)
    except ValueError:
        try:
            record = json.loads(line)
        except ValueError:
            return "unparsable", None
    rows, reasons, _ = check_rows([record])
    return ("row", rows[0]) if rows else ("rejected", dict(reasons))


def _mutants() -> list[bytes]:
    import copy

    base = [*sample_users(), *UserGenerator("typed").users(3)]
    lines = [json.dumps(u, ensure_ascii=False).encode() for u in base]
    paths = list(FIELD_PATHS)
    paths += ["id", "name", "location", "location.street", "login", "dob"]
    for i, u in enumerate(base):
        for path in paths:
            *parents, leaf = path.split(".")
            for value in [*MUTATIONS, "DELETE"]:
                m = copy.deepcopy(u)
                node = m
                for part in parents:
                    node = node[part]
                if value == "DELETE":
                    node.pop(leaf, None)
                else:
                    node[leaf] = value
                lines.append(json.dumps(m, ensure_ascii=i % 2 == 0).encode())
    # Raw JSON the dumper would not write: duplicate keys, escapes, NaN, a page, not an object.
    good = lines[0].decode()
    lines += [
        ('{"gender": "x", ' + good[1:]).encode(),                      # duplicate key: last wins
        good.replace('"gender": "', '"gender": "\\ud800', 1).encode(),  # lone surrogate
        good.replace('"age": ', '"age": NaN, "x": ', 1).encode(),
        good.replace('"age": ', '"age": 1e2, "x": ', 1).encode(),
        b'{"results": [' + lines[1] + b"]}", b"[1, 2]", b"42", b'"user"', b"", b"{",
        lines[2].decode().encode("utf-16"), lines[3] + b" \xff",
    ]
    return lines


def test_typed_decoder_takes_only_good_users_and_makes_their_exact_rows() -> None:
    from infraetl.sources.typed import REFUSED, decode_row

    taken = refused = 0
    for line in _mutants():
        verdict, value = _general_verdict(line)
        try:
            row = decode_row(line)
        except REFUSED:
            refused += 1
            continue
        taken += 1
        assert verdict == "row", (line[:200], value)
        assert row == value and [type(v) for v in row] == [type(v) for v in value], line[:200]
    # Both kinds were exercised: the grid has thousands of broken users and many good ones.
    assert taken > 400 and refused > 1000


def test_replay_with_the_row_checker_uses_the_typed_path_and_matches_the_general_one(tmp_path: Path) -> None:
    from infraetl.schema import rows_to_columns
    from infraetl.sources.replay import _chunked, _json_lines
    from infraetl.validate import check_rows

    path = tmp_path / "mutants.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in _mutants()) + b"\n")

    def general(users: int, batch_size: int = 4) -> list[Batch]:
        collector, out = Collector(RunPlan(users=users, batch_size=batch_size), check_rows), []
        with open(path, "rb") as f:
            for chunk in _chunked(_json_lines(f), 100):
                out += collector.add(chunk)
        return out

    good = sum(len(b.users) for b in general(10**6, 1))  # the distinct good users in the file
    assert good >= 10
    for users in (good, good - 3):
        typed = list(ReplaySource(path).batches(RunPlan(users=users, batch_size=4), check_rows))
        assert [(rows_to_columns(b.users), b.quarantine) for b in typed] == \
            [(rows_to_columns(b.users), b.quarantine) for b in general(users)]
        assert sum(len(b.users) for b in typed) == users
        assert sum(quarantine_of(typed).values()) > 100


# -- records that used to escape the checks and fail a whole run (found by a review) --

def _jsonl(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "users.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("where", ["a field the pipeline keeps", "a field the fast decoder skips"])
def test_a_line_that_is_not_utf8_is_refused_as_a_whole_whatever_field_holds_the_byte(
        tmp_path: Path, where: str) -> None:
    from userfactory import make_users

    from infraetl.validate import check_rows

    users = make_users(20, seed=2)
    lines = [json.dumps(u, ensure_ascii=False).encode() for u in users]
    if where == "a field the pipeline keeps":
        lines[5] = lines[5].replace(json.dumps(users[5]["name"]["first"]).encode(), b'"Jo\xffn"', 1)
    else:  # as the API's picture URLs or hashes
        lines[5] = lines[5][:-1] + b', "picture": {"large": "Jo\xffn"}}'
    batches = run(ReplaySource(_jsonl(tmp_path, lines)), check_rows, users=19, batch_size=50)
    assert len(users_of(batches)) == 19 and quarantine_of(batches) == {"parse:line": 1}


def test_an_integer_beyond_64_bits_is_a_type_error_in_a_whole_document_file(tmp_path: Path) -> None:
    from userfactory import make_users

    from infraetl.validate import check_rows

    users = make_users(10, seed=4)
    users[3]["location"]["street"]["number"] = 10**20  # the standard parser keeps it an int
    path = tmp_path / "users.json"
    path.write_text(json.dumps(users))
    batches = run(ReplaySource(path), check_rows, users=9, batch_size=50)
    assert len(users_of(batches)) == 9
    assert quarantine_of(batches) == {"type:location.street.number": 1}


def test_json_nested_too_deeply_is_a_broken_line_not_a_failed_run(tmp_path: Path) -> None:
    from userfactory import make_users

    from infraetl.sources.replay import parse_json
    from infraetl.validate import check_rows

    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ValueError):
        parse_json(deep)  # what the RandomUser source retries as a broken page
    lines = [json.dumps(u).encode() for u in make_users(5, seed=6)]
    batches = run(ReplaySource(_jsonl(tmp_path, [*lines[:2], deep, *lines[2:]])), check_rows,
                  users=5, batch_size=50)
    assert len(users_of(batches)) == 5 and quarantine_of(batches) == {"parse:line": 1}


def test_an_api_address_that_cannot_be_parsed_is_refused_before_any_run() -> None:
    with pytest.raises(ConfigError, match="is not an http:// or https:// address"):
        RandomUserSource(api_url="http://[::1/api/")


@pytest.mark.parametrize("url", ["http://exa mple.com/api/"])
def test_an_api_address_no_retry_can_mend_fails_the_run_at_once(url: str) -> None:
    source = RandomUserSource(api_url=url, retry_budget=50, backoff_base=1.0, backoff_cap=5.0)
    t = time.monotonic()
    with pytest.raises(SourceError, match="not retried"):
        run(source, users=10)
    assert time.monotonic() - t < 5


def test_a_user_repeated_with_its_uuid_in_upper_case_is_a_duplicate(tmp_path: Path) -> None:
    # The duplicate check compared the strings: the same person was taken twice.
    users = sample_users()[1:]
    again = json.loads(json.dumps(users[0]))
    again["login"]["uuid"] = again["login"]["uuid"].upper()
    path = write_jsonl(tmp_path / "users.jsonl", [*users, again])
    from infraetl.validate import check_rows

    with pytest.raises(SourceError, match="holds only 3 valid users, 4 were requested"):
        list(ReplaySource(path).batches(RunPlan(users=4, batch_size=10), check_rows))
