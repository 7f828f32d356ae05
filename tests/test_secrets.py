"""No plaintext password and no key anywhere the daemons write or serve."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

from helpers import ctl, get_text

from infraetl.localcluster import LocalCluster

SAMPLE = json.loads((Path(__file__).parent / "data" / "randomuser-sample.json").read_text())["results"]


def _users_with_secret_passwords(n: int) -> tuple[list[dict], list[str]]:
    rnd = random.Random(99)
    alphabet = string.ascii_letters + string.digits + "!#%&*+-=?@^_"
    users, secrets = [], []
    for i in range(n):
        u = json.loads(json.dumps(SAMPLE[i % len(SAMPLE)]))
        u["login"]["uuid"] = f"00000000-0000-4000-8000-{i:012d}"
        pw = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(14, 24)))
        # A few reused, so they reach the top-10 and the reuse figures.
        if i % 10 == 0:
            pw = "Zq9!" + "reusedSecret" + "x7#Lp"
        u["login"]["password"] = pw
        users.append(u)
        secrets.append(pw)
    return users, sorted(set(secrets))


def _haystacks(root: Path) -> list[tuple[str, bytes]]:
    return [(str(p), p.read_bytes()) for p in root.rglob("*") if p.is_file()]


def test_no_plaintext_password_at_rest_or_served(cluster: LocalCluster, tmp_path: Path) -> None:
    users, secrets = _users_with_secret_passwords(400)
    src = tmp_path / "users.jsonl"
    src.write_text("\n".join(json.dumps(u, ensure_ascii=False) for u in users))
    proc = ctl(cluster, "start-run", "--users", "400", "--source", f"file:{src}")
    assert "complete" in proc.stdout
    served = []
    for path in ("", "dashboard.html", "api/stats.json", "api/runs.json", "metrics"):
        status, _, body = get_text(cluster.url + path)
        assert status == 200
        served.append((path, body.encode()))
    key = cluster.key_file.read_text().strip().encode()
    places = _haystacks(cluster.consumer.state_dir) + served
    assert len(places) > 5
    for where, data in places:
        for pw in secrets:
            assert pw.encode() not in data, f"password found in {where}"
            assert pw.lower().encode() not in data, f"lowercased password found in {where}"
        assert key not in data, f"the key found in {where}"
    # The API's password hashes never leave the producer either.
    for where, data in places + _haystacks(cluster.root / "producer"):
        assert SAMPLE[0]["login"]["sha256"].encode() not in data, where
    # Logs never hold the key or a password.
    for log in (cluster.consumer.log(), cluster.producer.log() if cluster.producer else ""):
        assert cluster.key_file.read_text().strip() not in log
        assert not any(pw in log for pw in secrets)


def test_reveal_passwords_is_an_explicit_opt_in(tmp_path: Path) -> None:
    users, _ = _users_with_secret_passwords(200)
    src = tmp_path / "users.jsonl"
    src.write_text("\n".join(json.dumps(u, ensure_ascii=False) for u in users))
    with LocalCluster(tmp_path / "cluster", consumer_args=["--reveal-passwords"]) as c:
        ctl(c, "start-run", "--users", "200", "--source", f"file:{src}")
        status, _, body = get_text(c.url + "api/stats.json")
        stats = json.loads(body)
        assert stats["passwords_revealed"] is True
        top = stats["last_run"]["audit"]["top_passwords"][0]["password"]
        assert top == "Zq9!reusedSecretx7#Lp"  # reused by every 10th user: the operator asked to see it
        _, _, page = get_text(c.url)
        assert "plaintext" in page


def test_state_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """Started by hand under umask 022, the state was world-readable: with --reveal-passwords,
    every tallied password (found by a review)."""
    import os
    import stat

    from infraetl.spool import Spool
    from infraetl.store import Store

    old = os.umask(0o022)
    try:
        store = Store(tmp_path / "consumer" / "consumer.sqlite3")
        store.set_secret("x", b"y")
        spool = Spool(tmp_path / "producer" / "spool.sqlite3")
        spool.create_run("r1", {"users": 1})
        files = [tmp_path / "consumer" / "consumer.sqlite3", tmp_path / "consumer" / "consumer.sqlite3-wal",
                 tmp_path / "producer" / "spool.sqlite3", tmp_path / "producer" / "spool.sqlite3-wal"]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        assert modes == dict.fromkeys(modes, 0o600), modes
        for d in ("consumer", "producer"):
            assert stat.S_IMODE((tmp_path / d).stat().st_mode) == 0o700
        store.close()
        spool.close()
        for p in files:  # as an older release left them
            if p.exists():
                p.chmod(0o644)
        Store(files[0]).close()
        assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
        assert not files[1].exists() or stat.S_IMODE(files[1].stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_turning_reveal_passwords_off_masks_what_it_stored(tmp_path: Path) -> None:
    """The plaintext a run under --reveal-passwords stored stayed in the state database after the
    option was turned off (found by a review): a start without it now masks every stored audit."""
    users, secrets = _users_with_secret_passwords(200)
    src = tmp_path / "users.jsonl"
    src.write_text("\n".join(json.dumps(u, ensure_ascii=False) for u in users))
    with LocalCluster(tmp_path / "cluster", consumer_args=["--reveal-passwords"]) as c:
        ctl(c, "start-run", "--users", "200", "--source", f"file:{src}")
        state = c.consumer.state_dir
        assert any(s.encode() in blob for _, blob in _haystacks(state) for s in secrets)  # opted in
        c.consumer.stop()
        c.consumer_args = []
        c.restart_consumer()
        leaks = [(path, s) for path, blob in _haystacks(state) for s in secrets if s.encode() in blob]
        assert sorted({p for p, _ in leaks}) == []
        assert "masked the plaintext passwords of" in c.consumer.log_path.read_text()
        stats = json.loads(get_text(c.url + "api/stats.json")[2])
        assert stats["passwords_revealed"] is False
        assert stats["cumulative"]["audit"]["top_passwords"][0]["count"] == 20  # the figures stay
        ctl(c, "start-run", "--users", "50", "--seed", "after")  # and runs go on, masked
        assert not [s for _, blob in _haystacks(state) for s in secrets if s.encode() in blob]
