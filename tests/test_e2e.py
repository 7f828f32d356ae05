"""End to end: real daemons on 127.0.0.1, real ZeroMQ, SQLite and HTTP, driven by infraetl-ctl."""

from __future__ import annotations

import itertools
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ctl, figures_without_times, get_json, get_text, metric, wait_for

from infraetl import config
from infraetl.localcluster import LocalCluster


def test_start_run_300_users_exact(cluster: LocalCluster) -> None:
    proc = ctl(cluster, "start-run", "--users", "300", "--seed", "e2e")
    assert "complete" in proc.stdout and cluster.url in proc.stdout
    stats = get_json(cluster.url + "api/stats.json")
    assert stats["last_run"]["total_users"] == 300
    assert stats["last_run"]["delivered"] == 300 and stats["last_run"]["requested"] == 300
    assert stats["cumulative"]["total_users"] == stats["last_run"]["total_users"]
    assert stats["runs"][0]["state"] == "complete"
    # The producer's view agrees.
    status = json.loads(ctl(cluster, "status", "--json").stdout)
    assert status["runs"][0]["state"] == "complete" and status["runs"][0]["produced"] == 300


def test_second_run_adds_to_cumulative(cluster: LocalCluster) -> None:
    ctl(cluster, "start-run", "--users", "120", "--seed", "a")
    ctl(cluster, "start-run", "--users", "80", "--seed", "b", "--nat", "GB,FR")
    stats = get_json(cluster.url + "api/stats.json")
    assert set(stats["last_run"]["nationalities"]) <= {"GB", "FR"}
    assert stats["cumulative"]["runs"] == 2
    assert stats["cumulative"]["total_users"] == sum(r["delivered"] for r in stats["runs"])


def test_users_the_nat_filter_leaves_out_are_not_quarantined(cluster: LocalCluster, tmp_path: Path) -> None:
    # Filtering a file by --nat counted every other nationality as quarantined ("nat_not_requested"):
    # the card read "2,905 quarantined" for a run with nothing wrong in it.
    import userfactory

    users = userfactory.make_users(400, seed=7)
    wanted = {"GB", "FR"}
    n_wanted = sum(u["nat"] in wanted for u in users)
    assert 10 < n_wanted < 390
    source = tmp_path / "users.jsonl"
    source.write_text("".join(json.dumps(u) + "\n" for u in users))
    proc = ctl(cluster, "start-run", "--users", str(n_wanted), "--source", f"file:{source}", "--nat", "GB,FR")
    # Those after the last user the run needed are not read.
    last_wanted = max(i for i, u in enumerate(users) if u["nat"] in wanted)
    left_out = last_wanted + 1 - n_wanted
    assert f"{n_wanted} users applied, 0 quarantined, {left_out} left out by --nat" in proc.stdout, proc.stdout
    last = get_json(cluster.url + "api/stats.json")["last_run"]
    assert last["total_users"] == n_wanted and last["quarantined"] == 0
    assert last["quarantine"] == {} and last["filtered"] == {"nat_not_requested": left_out}
    run = json.loads(ctl(cluster, "status", "--json").stdout)["runs"][0]
    assert (run["quarantined"], run["filtered"]) == (0, left_out)
    page = get_text(cluster.url)[2]
    card = page.split('data-card="total_users"')[1].split("</li>")[0]
    assert f"{left_out:,} left out by the nationality filter" in card and "quarantined" not in card


def test_a_huge_value_is_quarantined_and_the_run_completes(cluster: LocalCluster, tmp_path: Path) -> None:
    # A 13 MB first name made its batch too large to seal: the whole run failed, advising a
    # smaller --batch-size (which could not help). A 100,000-character password made the
    # average password length 1,007.
    import userfactory

    users = userfactory.make_users(40, seed=3)
    users[5]["name"]["first"] = "N" * 13_000_000
    users[9]["login"]["password"] = "x7" * 50_000
    source = tmp_path / "users.jsonl"
    source.write_text("".join(json.dumps(u) + "\n" for u in users))
    proc = ctl(cluster, "start-run", "--users", "38", "--source", f"file:{source}")
    assert "38 users applied, 2 quarantined" in proc.stdout, proc.stdout
    last = get_json(cluster.url + "api/stats.json")["last_run"]
    assert last["quarantine"] == {"length:name.first": 1, "length:login.password": 1}
    assert last["password_length"]["max"] <= 64


def test_ctl_with_wrong_key_is_not_authorised(cluster: LocalCluster) -> None:
    env = dict(cluster.env)
    env.pop("ETL_ENCRYPTION_KEY_FILE")
    env["ETL_ENCRYPTION_KEY"] = config.new_key()
    proc = ctl(cluster, "start-run", "--users", "10", env=env, check=False)
    assert proc.returncode == 1
    assert "not authorised" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(ctl(cluster, "status", "--json").stdout)["runs"] == []


@pytest.mark.parametrize("args, message", [
    (["start-run", "--users", "0"], "--users"),
    (["start-run", "--users", "5", "--nat", "GB,XX"], "XX"),
    (["start-run", "--users", "5", "--source", "ftp"], "unknown source"),
    (["start-run", "--users", "5", "--source", "file:/nonexistent.json"], "no such file"),
    (["start-run", "--users", "5", "--source", "file:/tmp"], "/tmp on the producer's host is not a regular file"),
    (["cancel", "r-nope"], "no run r-nope"),
    (["--call-timeout", "nan", "status"], "--call-timeout"),
    (["--call-timeout", "1e300", "status"], "--call-timeout"),
    (["start-run", "--users", "5", "--deadline", "inf"], "--deadline"),
    (["wait", "r-nope", "--timeout", "nan"], "--timeout"),
    (["keygen", "--curve", "{root}/etl-key"], "cannot write the key pair"),
    (["keygen", "--curve", "{root}/curve", "--name", "a/b"], "not a file name"),
    (["keygen", "--name", "foo"], "goes with --curve DIR"),  # was ignored
    (["--producer", "127.0.0.1:5557", "status"], "not a ZeroMQ endpoint"),  # was exit 1, "Invalid argument"
    (["--curve-server-key", "{root}/etl-key", "status"], "CURVE needs both"),  # was CURVE off, silently
])
def test_bad_arguments_one_line_no_traceback(cluster: LocalCluster, args: list[str], message: str) -> None:
    proc = ctl(cluster, *(a.format(root=cluster.root) for a in args), check=False)
    assert proc.returncode in (1, 2)
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["start-run", "--users", "5", "--nat", "GB,XX"], "unknown nationality code(s) XX"),
    (["start-run", "--users", "5", "--source", "bogus"], "unknown source 'bogus'"),
    (["start-run", "--users", "5", "--source", ""], "unknown source ''"),
    (["start-run", "--users", "5", "--seed", "s" * 50_000], "at most 256 characters"),
    (["start-run", "--users", "5", "--seed", "a\x1bb"], "control characters"),
    (["wait", ""], "must not be empty"),  # was a traceback, or another run's answer
    (["cancel", "r" * 60_000], "at most 128 characters"),  # was a wait for nothing, "is it running?"
])
def test_usage_errors_exit_2_before_asking_the_producer(cluster: LocalCluster, args: list[str],
                                                        message: str) -> None:
    proc = ctl(cluster, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(ctl(cluster, "status", "--json").stdout)["runs"] == []


def test_a_request_too_big_for_the_control_socket_is_refused_at_once(cluster: LocalCluster) -> None:
    import time

    from helpers import cluster_sealer

    from infraetl.control import ControlClient, ControlError

    with ControlClient(cluster.control, cluster_sealer(cluster), timeout=30) as client:
        t = time.monotonic()
        with pytest.raises(ControlError, match="over the 64,512 the producer takes"):
            client.call("status", run_id="r" * 70_000)
        assert time.monotonic() - t < 5
        assert client.call("status")["runs"] == []  # and the next one is answered


def test_wait_gives_up_at_its_timeout_not_at_the_end_of_a_call(cluster: LocalCluster) -> None:
    """``wait --timeout 1`` against a producer that does not answer ends after about a second,
    not after the 30 s a call may take (it overran by a whole call; a review)."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "infraetl.ctl", "--producer", f"tcp://127.0.0.1:{port}",
                           "--call-timeout", "30", "wait", "r-x", "--timeout", "1"],
                          env=cluster.env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t
    assert proc.returncode == 1 and "not finished after 1s" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert took < 15, took  # the whole command: interpreter start-up, then at most ~1 s of waiting


def test_the_producer_refuses_a_seed_past_its_limit() -> None:
    from infraetl.exceptions import InfraETLError
    from infraetl.producer import check_run_args

    with pytest.raises(InfraETLError, match="--seed"):
        check_run_args({"users": 5, "seed": "s" * 257})
    assert check_run_args({"users": 5, "seed": "s" * 256})["seed"] == "s" * 256


def test_keygen_into_a_full_disk_is_one_sentence(tmp_path: Path) -> None:
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "infraetl.ctl", "keygen"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "No space left on device" in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2


def test_the_demo_takes_its_port_back_from_time_wait() -> None:
    import socket

    from infraetl.ctl import _port_free

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the dashboard's server
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.close()  # the server side closes first: its end of the connection is in TIME_WAIT
        client.close()
    assert _port_free(port)


@pytest.mark.parametrize("deadline", [float("nan"), float("inf"), 0, 1e12, "60"])
def test_a_run_deadline_must_be_a_number_of_seconds(deadline: object) -> None:
    from infraetl.exceptions import InfraETLError
    from infraetl.producer import check_run_args

    with pytest.raises(InfraETLError, match="--deadline"):
        check_run_args({"users": 5, "deadline": deadline})
    assert check_run_args({"users": 5, "deadline": 60})["deadline"] == 60


def _start(cluster: LocalCluster, users: int, seed: str) -> str:
    return ctl(cluster, "start-run", "--users", str(users), "--seed", seed, "--no-wait").stdout.strip()


def _reference(cluster: LocalCluster, users: int, seed: str) -> dict:
    """Figures of a fault-free run of the same users, in the same cluster."""
    ctl(cluster, "start-run", "--users", str(users), "--seed", seed)
    return figures_without_times(get_json(cluster.url + "api/stats.json")["last_run"])


@pytest.mark.slow
@pytest.mark.parametrize("role", ["consumer", "producer"])
def test_kill9_mid_run_counts_every_user_once(cluster: LocalCluster, role: str) -> None:
    users, seed = 20000, f"crash-{role}"
    run_id = _start(cluster, users, seed)
    wait_for(lambda: metric(cluster, "infraetl_batches_applied_total") >= 5, 60, "some batches applied")
    if role == "consumer":
        cluster.consumer.kill9()
        cluster.restart_consumer()
    else:
        assert cluster.producer is not None
        cluster.producer.kill9()
        cluster.start_producer()
    ctl(cluster, "wait", run_id, "--timeout", "120")
    faulty = figures_without_times(get_json(cluster.url + "api/stats.json")["last_run"])
    assert faulty["total_users"] + faulty["quarantined"] == users
    assert faulty == _reference(cluster, users, seed)


def test_sigterm_exits_zero_quickly(cluster: LocalCluster) -> None:
    assert cluster.producer is not None
    for d in (cluster.producer, cluster.consumer):
        d.signal(signal.SIGTERM)
        assert d.proc is not None
        assert d.proc.wait(5) == 0


def test_a_backlog_longer_than_one_drain_is_applied_whole_without_resends(cluster: LocalCluster) -> None:
    # Frames pushed by hand, so nobody re-sends a frame the consumer loses: any frame taken
    # off the socket and not handled would leave the run incomplete for good.
    import zmq
    from helpers import cluster_sealer
    from userfactory import sample_users

    from infraetl import schema, wire
    from infraetl.consumer import DRAIN_MAX

    sample = sample_users()
    sealer = cluster_sealer(cluster)
    run, batches = "backlog", DRAIN_MAX + 44
    frames = [sealer.seal(wire.make("begin", run, 0, producer="by-hand", requested=batches * len(sample),
                                    source="test"))]
    frames += [sealer.seal(wire.make("data", run, seq, producer="by-hand", n=len(sample),
                                     cols=schema.to_columns(sample), quarantine={}))
               for seq in range(1, batches + 1)]
    frames.append(sealer.seal(wire.make("end", run, -1, producer="by-hand", batches=batches,
                                        delivered=batches * len(sample), quarantine={})))
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 0)
    push.connect(cluster.consumer.endpoints["data"])
    try:
        cluster.consumer.signal(signal.SIGSTOP)  # the whole run is waiting when the consumer wakes
        try:
            for frame in frames:
                push.send(frame)
        finally:
            cluster.consumer.signal(signal.SIGCONT)

        def complete() -> bool:
            runs = get_json(cluster.url + "api/stats.json")["runs"]
            return any(r["run_id"] == run and r["state"] == "complete" for r in runs)
        wait_for(complete, 60, f"all {batches} batches of the backlog applied and the run complete")
    finally:
        push.close(linger=0)
        ctx.term()
    last = get_json(cluster.url + "api/stats.json")["last_run"]
    assert last["total_users"] == batches * len(sample)
    assert metric(cluster, "infraetl_batches_duplicate_total") == 0


def test_a_resent_batch_is_acked_again_without_redoing_its_work(cluster: LocalCluster) -> None:
    # A consumer working off a backlog longer than the producer's resend timeout receives
    # re-sends of batches it has applied; redoing their work would slow it down further.
    from helpers import cluster_sealer, push_frames
    from userfactory import sample_users

    from infraetl import schema, wire

    sample = sample_users()
    cols = schema.to_columns(sample)
    cols["email"][0] = "nobody"  # quarantined here: users applied counts the users kept (untested before)
    frame = cluster_sealer(cluster).seal(wire.make(
        "data", "resent", 1, producer="by-hand", n=len(sample), cols=cols, quarantine={}))
    push_frames(cluster.consumer.endpoints["data"], [frame])
    wait_for(lambda: metric(cluster, "infraetl_batches_applied_total") == 1, 30, "the batch applied")
    assert metric(cluster, "infraetl_users_applied_total") == len(sample) - 1
    work = {s: metric(cluster, "infraetl_stage_seconds_total", f'stage="{s}"') for s in ("validate", "audit")}
    assert all(v > 0 for v in work.values())
    push_frames(cluster.consumer.endpoints["data"], [frame, frame])
    wait_for(lambda: metric(cluster, "infraetl_batches_duplicate_total") == 2, 30, "both re-sends ACKed")
    assert {s: metric(cluster, "infraetl_stage_seconds_total", f'stage="{s}"') for s in work} == work
    assert metric(cluster, "infraetl_batches_applied_total") == 1
    assert metric(cluster, "infraetl_users_applied_total") == len(sample) - 1


def test_password_figures_stay_whole_across_a_key_rotation(tmp_path) -> None:
    """The same passwords twice, with a rotation (SIGHUP: new key first) between the runs: the
    cumulative figures count each password once with twice the users, as without a rotation.
    Fingerprints under a key derived afresh from the new sealing key split each in two."""
    from infraetl.localcluster import write_key_file

    old, new = config.new_key(), config.new_key()
    key_file = write_key_file(tmp_path / "etl-key", old)
    c = LocalCluster(tmp_path / "cluster", key_file=key_file).start()
    try:
        ctl(c, "start-run", "--users", "300", "--seed", "rotation")
        one = get_json(c.url + "api/stats.json")["cumulative"]["audit"]
        write_key_file(key_file, f"{new}\n{old}")
        assert c.producer is not None and c.consumer is not None
        for daemon in (c.producer, c.consumer):
            daemon.signal(signal.SIGHUP)
            wait_for(lambda d=daemon: "re-read 2 key(s)" in d.log_path.read_text(), 10, "the reload")
        ctl(c, "start-run", "--users", "300", "--seed", "rotation")
        two = get_json(c.url + "api/stats.json")["cumulative"]["audit"]
        assert two["reuse"]["distinct"] == one["reuse"]["distinct"]
        assert two["reuse"]["largest_group"] == 2 * one["reuse"]["largest_group"]
        assert [r["count"] for r in two["top_passwords"]] == [2 * r["count"] for r in one["top_passwords"]]
        # The same after a restart on the new key alone (step 3 of the rotation).
        write_key_file(key_file, new)
        c.stop()
        c.start()
        ctl(c, "start-run", "--users", "300", "--seed", "rotation")
        three = get_json(c.url + "api/stats.json")["cumulative"]["audit"]
        assert three["reuse"]["distinct"] == one["reuse"]["distinct"]
        assert three["reuse"]["largest_group"] == 3 * one["reuse"]["largest_group"]
    finally:
        c.stop()


def test_a_dashboard_on_an_ipv6_address_has_a_url_that_works(tmp_path: Path) -> None:
    # Was "http://::1:PORT/": the URL start-run and wait print, which no client can open.
    import socket

    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback on this machine: {e}")
    c = LocalCluster(tmp_path / "c", consumer_args=["--http-bind", "[::1]:0"])
    try:
        c.consumer.start()
        url = c.consumer.endpoints["url"]
        assert url.startswith("http://[::1]:") and url.endswith("/")
        assert get_json(url + "healthz")["status"] == "ok"
    finally:
        c.stop()


def test_a_begin_that_lands_after_its_run_completed_still_names_the_source(cluster: LocalCluster) -> None:
    # A BEGIN lost or refused for its stamp is sent again, and may land after the END: the page
    # showed the run without its source and filter for good (found with clocks apart).
    from helpers import cluster_sealer, push_frames
    from userfactory import sample_users

    from infraetl import schema, wire

    sealer, sample = cluster_sealer(cluster), sample_users()
    data = wire.make("data", "late-begin", 1, producer="by-hand", n=len(sample), cols=schema.to_columns(sample),
                     quarantine={})
    end = wire.make("end", "late-begin", -1, producer="by-hand", batches=1, delivered=len(sample), quarantine={})
    push_frames(cluster.consumer.endpoints["data"], [sealer.seal(data), sealer.seal(end)])

    def last_run() -> dict:
        return get_json(cluster.url + "api/stats.json")["last_run"] or {}
    wait_for(lambda: last_run().get("run_id") == "late-begin", 30, "the run complete")
    assert last_run()["source"] == ""
    begin = wire.make("begin", "late-begin", 0, producer="by-hand", requested=len(sample), source="file:/late.jsonl")
    push_frames(cluster.consumer.endpoints["data"], [sealer.seal(begin)])
    wait_for(lambda: last_run()["source"] == "file:/late.jsonl", 30, "the late BEGIN shown")
    assert 'file:/late.jsonl' in get_text(cluster.url)[2]  # the page, re-rendered


def test_copies_of_a_late_begin_render_the_page_once(cluster: LocalCluster) -> None:
    # A late BEGIN with an empty source re-rendered the whole site on every copy (a review).
    from helpers import cluster_sealer, push_frames
    from userfactory import sample_users

    from infraetl import schema, wire

    sealer, sample, data_port = cluster_sealer(cluster), sample_users(), cluster.consumer.endpoints["data"]
    cols = schema.to_columns(sample)

    def batch(run: str) -> bytes:
        return sealer.seal(wire.make("data", run, 1, producer="by-hand", n=len(sample), cols=cols, quarantine={}))

    end = wire.make("end", "late-empty", -1, producer="by-hand", batches=1, delivered=len(sample), quarantine={})
    push_frames(data_port, [batch("late-empty"), sealer.seal(end)])
    wait_for(lambda: (get_json(cluster.url + "api/stats.json")["last_run"] or {}).get("run_id") == "late-empty", 30,
             "the run complete")
    begin = sealer.seal(wire.make("begin", "late-empty", 0, producer="by-hand", requested=len(sample), source=""))
    page = cluster.consumer.state_dir / "www" / "dashboard.html"

    def handled(frames: list[bytes], marker: int) -> None:
        # A batch of another run behind them: frames are handled in order, and it is counted.
        push_frames(data_port, [*frames, batch(f"marker-{marker}")])
        wait_for(lambda: metric(cluster, "infraetl_batches_applied_total") >= 1 + marker, 30, "the frames handled")

    handled([begin], 1)
    rendered = page.stat().st_mtime_ns
    handled([begin] * 3, 2)
    assert page.stat().st_mtime_ns == rendered


def _events(url: str) -> Iterator[tuple[str, dict]]:
    """The consumer's live update stream, event by event (name, data)."""
    import socket
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    sock.sendall(f"GET /events HTTP/1.1\r\nHost: {u.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode())
    buf = b""
    try:
        while True:
            while b"\n\n" not in buf:
                got = sock.recv(65536)
                if not got:
                    return
                buf += got
            block, buf = buf.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().splitlines() if ": " in line)
            if "event" in fields:
                yield fields["event"], json.loads(fields.get("data") or "null")
    finally:
        sock.close()


def test_a_fresh_consumer_announces_no_run_and_a_late_begin_names_none(tmp_path: Path) -> None:
    """A fresh consumer told every new stream that a run with no id had just completed; a late
    BEGIN announced the run before it as complete (a review). Now: no news, and "updated"."""
    from helpers import cluster_sealer, push_frames
    from userfactory import sample_users

    from infraetl import schema, wire

    c = LocalCluster(tmp_path / "c")
    c.consumer.start()
    try:
        stream = _events(c.url)
        event, data = next(stream)
        assert event == "hello" and data["last"] is None, data
        sealer, sample = cluster_sealer(c), sample_users()
        frames = [wire.make("data", "r-late", 1, producer="by-hand", n=len(sample), cols=schema.to_columns(sample),
                            quarantine={}),
                  wire.make("end", "r-late", -1, producer="by-hand", batches=1, delivered=len(sample), quarantine={}),
                  wire.make("begin", "r-late", 0, producer="by-hand", requested=len(sample), source="file:/x.jsonl")]
        push_frames(c.consumer.endpoints["data"], [sealer.seal(f) for f in frames])
        seen = list(itertools.islice(((e, d) for e, d in stream if e not in ("progress", "ping")), 2))
        assert seen[0][0] == "run-complete" and seen[0][1]["run_id"] == "r-late", seen
        assert seen[1][0] == "updated" and set(seen[1][1]) == {"generated_at"}, seen
    finally:
        c.stop()
