"""Key lookup order, rotation, and the refusal of bad or exposed keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ctl

from infraetl import config
from infraetl.exceptions import KeyError_
from infraetl.localcluster import write_key_file


def test_lookup_order_credentials_first(tmp_path: Path) -> None:
    k1, k2, k3 = (config.new_key() for _ in range(3))
    cred = tmp_path / "cred"
    write_key_file(cred / "etl-key", k1)
    f = write_key_file(tmp_path / "k", k2)
    env = {"CREDENTIALS_DIRECTORY": str(cred), "ETL_ENCRYPTION_KEY_FILE": str(f), "ETL_ENCRYPTION_KEY": k3}
    assert config.load_keys(env) == (k1.encode(),)
    del env["CREDENTIALS_DIRECTORY"]
    assert config.load_keys(env) == (k2.encode(),)
    del env["ETL_ENCRYPTION_KEY_FILE"]
    assert config.load_keys(env) == (k3.encode(),)


def test_rotation_comma_and_lines(tmp_path: Path) -> None:
    k1, k2 = config.new_key(), config.new_key()
    assert config.load_keys({"ETL_ENCRYPTION_KEY": f"{k1}, {k2}"}) == (k1.encode(), k2.encode())
    f = tmp_path / "keys"
    write_key_file(f, f"{k1}\n{k2}")
    assert config.load_keys({"ETL_ENCRYPTION_KEY_FILE": str(f)}) == (k1.encode(), k2.encode())


@pytest.mark.parametrize("bad", ["", "short", "x" * 44, "a" * 42 + "=="])
def test_malformed_key_names_variable_and_fix_but_not_key(bad: str) -> None:
    with pytest.raises(KeyError_) as e:
        config.load_keys({"ETL_ENCRYPTION_KEY": bad} if bad else {})
    msg = str(e.value)
    assert "ETL_ENCRYPTION_KEY" in msg and "infraetl-ctl keygen" in msg
    if len(bad) > 4:
        assert bad not in msg


def test_group_readable_key_file_refused(tmp_path: Path) -> None:
    f = write_key_file(tmp_path / "k")
    f.chmod(0o640)
    with pytest.raises(KeyError_, match="readable by group or others.*chmod 600"):
        config.load_keys({"ETL_ENCRYPTION_KEY_FILE": str(f)})


def test_missing_key_file() -> None:
    with pytest.raises(KeyError_, match="does not exist"):
        config.load_keys({"ETL_ENCRYPTION_KEY_FILE": "/nonexistent/etl-key"})


@pytest.mark.parametrize("value", ["{k}", "{k}\n", "/etc/infraetl/{k}", "{k},{k}"])
def test_key_put_where_its_file_name_belongs_is_not_repeated(value: str) -> None:
    # ETL_ENCRYPTION_KEY_FILE=$(cat etl-key): the message naming the missing file printed the key.
    key = config.new_key()
    with pytest.raises(KeyError_) as e:
        config.load_keys({"ETL_ENCRYPTION_KEY_FILE": value.format(k=key)})
    assert key not in str(e.value) and key[:20] not in str(e.value)
    assert "holds a key, not the name of a file" in str(e.value)


@pytest.mark.parametrize("role", ["consumer", "producer"])
def test_daemon_without_key_exits_2_with_one_sentence(role: str, tmp_path: Path) -> None:
    bad = "not-a-key-" + "z" * 34
    env = {"PATH": "/usr/bin:/bin", "ETL_ENCRYPTION_KEY": bad, "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", f"infraetl.{role}", "--state-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert bad not in proc.stderr + proc.stdout
    assert "ETL_ENCRYPTION_KEY" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("case", ["busy dashboard port", "port out of range", "state dir under a file"])
def test_consumer_start_up_mistakes_are_one_sentence_not_a_traceback(case: str, tmp_path: Path) -> None:
    import socket

    key_file = write_key_file(tmp_path / "etl-key")
    (tmp_path / "a-file").write_text("")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    state, http = {
        "busy dashboard port": (tmp_path / "c", f"127.0.0.1:{holder.getsockname()[1]}"),
        "port out of range": (tmp_path / "c", "127.0.0.1:99999"),
        "state dir under a file": (tmp_path / "a-file" / "c", "127.0.0.1:0"),
    }[case]
    env = {"PATH": "/usr/bin:/bin", "ETL_ENCRYPTION_KEY_FILE": str(key_file), "HOME": str(tmp_path)}
    try:
        proc = subprocess.run([sys.executable, "-m", "infraetl.consumer", "--state-dir", str(state),
                               "--data-bind", "tcp://127.0.0.1:*", "--ack-bind", "tcp://127.0.0.1:*",
                               "--http-bind", http, "--zxcvbn-workers", "0"],
                              env=env, capture_output=True, text=True, timeout=30)
    finally:
        holder.close()
    # A value wrong in itself is a usage error (2, not restarted); one that fails when used, 1.
    assert proc.returncode == (2 if case == "port out of range" else 1), proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and {
        "busy dashboard port": "cannot serve the dashboard",
        "port out of range": "bad HTTP address",
        "state dir under a file": "cannot create the state directory",
    }[case] in last


@pytest.mark.parametrize(("option", "value"), [
    ("--token-ttl", "nan"),      # would turn the replay window off
    ("--token-ttl", "0"),        # would refuse every frame
    ("--max-frame", "0"),
    ("--max-frame", str(1 << 63)),
    ("--resend-after", "nan"),   # would never re-send
    ("--run-deadline", "inf"),
])
def test_producer_refuses_option_values_it_could_not_work_with(option: str, value: str, tmp_path: Path) -> None:
    key_file = write_key_file(tmp_path / "etl-key")
    env = {"PATH": "/usr/bin:/bin", "ETL_ENCRYPTION_KEY_FILE": str(key_file), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "infraetl.producer", "--state-dir", str(tmp_path / "p"),
                           option, value], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert option in proc.stderr and "Invalid value" in proc.stderr


@pytest.mark.parametrize("value", ["proxy.example", "10.0.0.1,nope", "300.1.1.1"])
def test_consumer_refuses_a_trusted_address_that_is_not_one(value: str, tmp_path: Path) -> None:
    key_file = write_key_file(tmp_path / "etl-key")
    env = {"PATH": "/usr/bin:/bin", "ETL_ENCRYPTION_KEY_FILE": str(key_file), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "infraetl.consumer", "--state-dir", str(tmp_path / "c"),
                           "--http-trusted", value], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--http-trusted" in proc.stderr and "is not an IP address" in proc.stderr


def test_trusted_addresses_match_clients_on_either_socket_family() -> None:
    assert config.trusted_addresses(" 10.0.0.5 , ::1,") == {"10.0.0.5", "::ffff:10.0.0.5", "::1"}
    # As the refusal log names a client of a dual-stack socket (str() of it would be "::ffff:a00:5").
    assert config.trusted_addresses("::ffff:10.0.0.5") == {"10.0.0.5", "::ffff:10.0.0.5"}


@pytest.mark.parametrize("role, args, message", [
    ("consumer", ["--state-dir", ""], "must name a directory"),  # was: the working directory
    ("producer", ["--state-dir", " "], "must name a directory"),
    ("consumer", ["--http-bind", "junk"], "bad HTTP address"),  # was exit 1, restarted by systemd
    ("consumer", ["--http-bind", "127.0.0.1:99999"], "bad HTTP address"),
    ("consumer", ["--public-url", "http://x/" + "a" * 3000], "at most 2,048 characters"),
    ("producer", ["--producer-id", "p" * 300], "at most 255 characters"),  # ACKs over 64 KB: lost
    ("producer", ["--producer-id", "a\nb"], "control characters"),
    ("producer", ["--api-url", "file:///etc/passwd"], "is not an http:// or https:// address"),
    ("consumer", ["--curve-secret", "/etc/hostname"], "--curve-secret needs --curve-allow DIR"),
    ("producer", ["--curve-secret", "/etc/hostname", "--curve-allow", "/tmp"], "needs --curve-server-key FILE"),
    ("producer", ["--curve-secret", "/etc/hostname", "--curve-server-key", "/etc/hostname"],
     "needs --curve-allow DIR"),
    ("consumer", ["--curve-secret", "/nonexistent.key_secret", "--curve-allow", "/tmp"], "no such file"),
    ("consumer", ["--curve-secret", "/etc/hostname", "--curve-allow", "/etc/hostname"], "not a directory"),
])
def test_daemon_option_values_that_could_only_fail_later_exit_2(role: str, args: list[str], message: str,
                                                                tmp_path: Path) -> None:
    key = write_key_file(tmp_path / "k")
    env = {"PATH": "/usr/bin:/bin", "ETL_ENCRYPTION_KEY_FILE": str(key), "HOME": str(tmp_path)}
    argv = [sys.executable, "-m", f"infraetl.{role}", *args]
    if "--state-dir" not in args:
        argv += ["--state-dir", str(tmp_path / "state")]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # nothing written anywhere


@pytest.mark.parametrize("role, args", [
    ("consumer", ["--curve-allow", "/etc/infraetl/curve/clients"]),
    ("producer", ["--curve-server-key", "/etc/infraetl/curve/consumer.key"]),
])
def test_curve_half_configured_is_a_usage_error_not_curve_off(role: str, args: list[str], tmp_path: Path) -> None:
    # Without --curve-secret CURVE is off: an allow-list alone looked like authentication.
    key = write_key_file(tmp_path / "k")
    env = {"PATH": "/usr/bin:/bin", "ETL_ENCRYPTION_KEY_FILE": str(key), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", f"infraetl.{role}", "--state-dir", str(tmp_path / "s"), *args],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "need(s) --curve-secret" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("role", ["consumer", "producer"])
def test_a_second_daemon_on_the_same_state_directory_exits_with_one_sentence(role: str, tmp_path: Path) -> None:
    # Two producers on one spool each resumed the same run: every batch made and sent twice.
    from infraetl.localcluster import LocalCluster

    with LocalCluster(tmp_path / "c") as c:
        first = c.consumer if role == "consumer" else c.producer
        assert first is not None
        argv = [a if not a.startswith(("tcp://", "127.0.0.1:")) else
                ("tcp://127.0.0.1:*" if a.startswith("tcp://") else "127.0.0.1:0") for a in first.argv]
        if role == "producer":  # connect to the running consumer, bind elsewhere
            argv[argv.index("--data-connect") + 1] = c.consumer.endpoints["data"]
            argv[argv.index("--ack-connect") + 1] = c.consumer.endpoints["ack"]
        proc = subprocess.run(argv, env=c.env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "another infraetl daemon is using the state directory" in proc.stderr
        assert first.alive()
        # The lock goes with the process, kill -9 included.
        first.kill9()
        c.restart_consumer() if role == "consumer" else c.start_producer()
        assert json.loads(ctl(c, "status", "--json").stdout)["runs"] == []


def test_a_reader_that_stops_early_is_no_error(tmp_path: Path) -> None:
    # `infraetl-ctl status | head -1` printed "Error: Broken pipe" and exited 1 (a review).
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the ctl writes
    proc = subprocess.run([sys.executable, "-m", "infraetl.ctl", "keygen"], stdout=w, stderr=subprocess.PIPE,
                          text=True, timeout=30, cwd=tmp_path)
    os.close(w)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr
