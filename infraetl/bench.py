"""``infraetl-ctl bench``: end-to-end throughput, stage costs, the floor and the peer, in one run.

1. Generate N synthetic users into a JSON Lines file (not timed), so the
   producer replays a file and the source is not the bottleneck.
2. Start a consumer and a producer on 127.0.0.1 (real processes, real
   sockets) and time ``start-run`` to the consumer's ACK of the rendered run.
   That cold run is the headline; a second run of the same users through
   the same daemons is reported as "warm" (every password already cached).
3. Read each daemon's time per stage and its peak RSS (VmHWM).
4. The floor: Fernet open + msgpack decode of the very same batches, in
   this process, and the ratio of the consumer's total cost to it.
5. The peer: InfraETL1's whole run, done its way (``bench_original``), on the
   same users, and our end-to-end speed-up over it; also over its transform +
   audit alone and over a leaner per-record version of its VM2.
6. Render time of the dashboard on the final state.
7. The consumer by itself, as it runs on its own host in the two-host
   deployment: a fresh consumer takes the same batches, sealed beforehand
   by the producer's own functions, as fast as it can.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import config, schema, wire
from .control import ControlClient, wait_run
from .exceptions import InfraETLError
from .localcluster import LocalCluster
from .soak import children, proc_status_mb


def _peak_rss_mb(pid: int) -> float | None:
    return proc_status_mb(pid, "VmHWM") or None


def _rss_mb(pid: int) -> float | None:
    return proc_status_mb(pid, "VmRSS") or None


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (0.0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def busy_share(cpu: float, wall: float) -> float:
    """The share of the machine's cores that ``cpu`` CPU-seconds kept busy over ``wall`` seconds."""
    return round(cpu / (wall * (os.cpu_count() or 1)), 2)


def children_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by the live children of ``pid``."""
    return sum(map(cpu_s, children(pid)))


def generate(path: Path, users: int, seed: str = "bench") -> None:
    """Write ``users`` synthetic API-shaped users to ``path`` as JSON Lines."""
    from .sources import RunPlan, accept_all
    from .sources.synthetic import SyntheticSource

    with open(path, "w", encoding="utf-8") as f:
        plan = RunPlan(users=users, seed=seed, batch_size=5000)
        for batch in SyntheticSource().batches(plan, accept_all):
            f.write("\n".join(json.dumps(u, ensure_ascii=False) for u in batch.users))
            f.write("\n")


def _batches(path: Path, size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            batch.append(json.loads(line))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def _stage_seconds(metrics_text: str) -> dict[str, float]:
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("infraetl_stage_seconds_total{"):
            stage = line.split('stage="')[1].split('"')[0]
            out[stage] = float(line.split()[-1])
    return out


def _consumer_metrics(url: str) -> tuple[dict[str, float], float]:
    """The consumer's seconds per stage so far, and its last whole re-render (after the run the
    bench waited for), from one read of its /metrics."""
    import urllib.request

    with urllib.request.urlopen(url + "metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("infraetl_render_last_seconds "):
            return _stage_seconds(text), float(line.split()[-1])
    raise InfraETLError("the consumer's /metrics has no infraetl_render_last_seconds")


def measure_floor(path: Path, sealer: wire.Sealer, users: int, batch_size: int) -> tuple[float, int]:
    """Seconds to open + decode the very same sealed batches the producer sends."""
    frames = _run_frames(sealer, path, users, batch_size, "floor")[1:-1]  # the data batches
    return _open_all(sealer, frames), len(frames)


def measure_dict_floor(path: Path, sealer: wire.Sealer, batch_size: int) -> float:
    """Seconds to open + decode the same users as batches of API-shaped dicts (context only).

    The issue's yardstick (~68,000 users/s on these machines) is this layout: the users as
    the API gives them, one map each. The columnar batches the pipeline sends open several
    times faster, which makes the real floor (:func:`measure_floor`) that much stricter.
    """
    frames = [sealer.seal({"users": users}) for users in _batches(path, batch_size)]
    return _open_all(sealer, frames)


def _open_all(sealer: wire.Sealer, frames: list[bytes]) -> float:
    t = time.perf_counter()
    for frame in frames:
        sealer.open_raw(frame)
    return time.perf_counter() - t


def measure_peer(path: Path, key: bytes) -> dict[str, Any]:
    """InfraETL1's whole run on the same users, and the lean per-record variant of its VM2.

    The original's run starts from the API's pages (held in memory here, as our producer's
    file is in the page cache) and ends with its dashboard written; the lean variant starts
    from one Fernet token of the users as JSON and ends with the figures.
    """
    from cryptography.fernet import Fernet

    from .bench_original import api_pages, lean_pipeline, original_pipeline

    users = [u for batch in _batches(path, 10000) for u in batch]
    n = len(users)
    pages = api_pages(users)
    token = Fernet(key).encrypt(json.dumps(users).encode())
    del users
    with tempfile.TemporaryDirectory(prefix="infraetl-peer-") as out:
        t = time.perf_counter()
        stats, phases = original_pipeline(pages, key, Path(out))
        whole = time.perf_counter() - t
    del pages
    t = time.perf_counter()
    lean = lean_pipeline(token, key)
    lean_s = time.perf_counter() - t
    # Both computed figures for the users they kept (the original sets aside what its checks
    # reject, as it did): a peer that skipped its work would not have.
    if not (0.9 * n < stats["total_users"] <= n and lean["total_users"] == n):
        raise InfraETLError(f"the peer computed figures for {stats['total_users']:,} and {lean['total_users']:,} "
                            f"of {n:,} users: it did not do its work")
    return {"users": n, "whole_s": whole, "phases_s": phases, "kept_users": stats["total_users"],
            "lean_s": lean_s}


def measure_render(doc: dict[str, Any], repeat: int = 15) -> float:
    """Median seconds to render the whole page from a stats document."""
    from .dashboard.render import render_page

    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        render_page(doc, generated_at=doc.get("generated_at") or time.time())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _timed_run(client: ControlClient, cluster: LocalCluster, users: int, data: Path) -> tuple[float, dict[str, Any]]:
    """Seconds from ``start-run`` to the consumer's ACK of the rendered run, and its row."""
    t0 = time.perf_counter()
    started = client.call("start-run", users=users, source=f"file:{data}", seed="bench",
                          deadline=run_deadline(users))
    row = wait_run(client, started["run_id"], timeout=run_deadline(users) + 60, poll=0.05, check=cluster.check)
    if row["state"] != "complete":
        raise InfraETLError(f"the bench run ended {row['state']}: {row.get('reason')}")
    return time.perf_counter() - t0, row


def run_deadline(users: int) -> float:
    """Seconds a bench run of ``users`` may take: at 1,000 users/s, a tenth of what it does here."""
    return max(600.0, users / 1000)


#: Largest run the peer takes: like the original it holds the whole run in memory (~17 KB a user).
PEER_MAX_USERS = 1_000_000


#: The producer id the consumer-alone measurement sends as (its ACKs' topic).
ALONE_PRODUCER = "bench-alone"


def _run_frames(sealer: wire.Sealer, path: Path, users: int, batch_size: int, run: str) -> list[bytes]:
    """The frames a producer sends for a run of the file's users: BEGIN, the batches, END."""
    from .sources import RunPlan
    from .sources.replay import ReplaySource
    from .validate import check_rows

    who = {"producer": ALONE_PRODUCER}
    frames = [sealer.seal(wire.make("begin", run, 0, requested=users, source=f"file:{path}", **who))]
    seq = delivered = 0
    for batch in ReplaySource(path).batches(RunPlan(users=users, batch_size=batch_size), check_rows):
        seq += 1
        delivered += len(batch.users)
        frames.append(sealer.seal(wire.make(
            "data", run, seq, n=len(batch.users), cols=schema.rows_to_columns(batch.users),  # type: ignore[arg-type]
            quarantine=dict(batch.quarantine), **who)))
    frames.append(sealer.seal(wire.make("end", run, -1, batches=seq, delivered=delivered, quarantine={},
                                        requested=users, **who)))
    return frames


def measure_consumer_alone(root: Path, path: Path, users: int, batch_size: int,
                           consumer_args: list[str] | None = None) -> dict[str, Any]:
    """A fresh consumer by itself, as on its own host: a run's sealed frames pushed as fast as
    it takes them, timed from the first frame to its ACK of the rendered run; then the same
    users again as a second run (warm caches). The frames are made by the producer's own
    functions before the clock starts."""
    import zmq

    cluster = LocalCluster(root / "alone", consumer_args=consumer_args)
    ctx = zmq.Context()
    push, acks = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
    try:
        cluster.consumer.start()
        keys = config.parse_keys(cluster.key_file.read_text(), "the bench key")
        sealer = wire.Sealer(keys, ttl=config.TOKEN_TTL, max_size=config.MAX_FRAME)
        push.setsockopt(zmq.SNDHWM, 0)
        push.connect(cluster.consumer.endpoints["data"])
        acks.setsockopt(zmq.SUBSCRIBE, ALONE_PRODUCER.encode() + b"\0")
        acks.connect(cluster.consumer.endpoints["ack"])
        pid = cluster.consumer.pid
        out: dict[str, Any] = {}
        for label in ("cold", "warm"):
            run = f"alone-{label}"
            frames = _run_frames(sealer, path, users, batch_size, run)
            cpu = cpu_s(pid), children_cpu_s(pid)
            t = time.perf_counter()
            for frame in frames:
                push.send(frame)
            _wait_end_ack(acks, sealer, run, deadline=time.monotonic() + run_deadline(users),
                          check=cluster.check)
            wall = time.perf_counter() - t
            main, helper = cpu_s(pid) - cpu[0], children_cpu_s(pid) - cpu[1]
            out[f"{label}_users_per_s"] = round(users / wall)
            if label == "cold":
                out["cpu_us_per_user"] = {"consumer": round(main / users * 1e6, 1),
                                          "helper": round(helper / users * 1e6, 1)}
                out["cores_busy_share"] = busy_share(main + helper, wall)
        import urllib.request

        with urllib.request.urlopen(cluster.url + "api/stats.json", timeout=30) as r:
            out["applied_users"] = json.loads(r.read())["last_run"]["total_users"]
        return out
    finally:
        push.close(linger=0)
        acks.close(linger=0)
        ctx.term()
        cluster.stop()


def _wait_end_ack(acks: Any, sealer: wire.Sealer, run: str, deadline: float, check: Any) -> None:
    """Until the consumer ACKs the END of ``run`` as complete (it does once the run is rendered)."""
    prefix = len(ALONE_PRODUCER) + 1
    while (left := deadline - time.monotonic()) > 0:
        check()
        if not acks.poll(int(min(left, 1.0) * 1000) + 1):
            continue
        msg = sealer.open(acks.recv()[prefix:])
        if msg["run"] == run and msg.get("of") == "end" and msg.get("status") == "complete":
            return
    raise InfraETLError(f"the consumer did not complete bench run {run} in time")


def run_bench(users: int, *, workdir: Path | None = None, batch_size: int = config.BATCH_SIZE,
              peer: bool = True, batch_workers: int = config.BATCH_WORKERS) -> dict[str, Any]:
    """Run the whole benchmark once; return its figures."""
    import urllib.request

    with tempfile.TemporaryDirectory(prefix="infraetl-bench-") as tmp:
        root = workdir or Path(tmp)
        data = root / "users.jsonl"
        t = time.perf_counter()
        generate(data, users)
        gen_s = time.perf_counter() - t
        consumer_args = ["--batch-workers", str(batch_workers)]
        cluster = LocalCluster(root / "cluster", consumer_args=consumer_args,
                               producer_args=["--batch-size", str(batch_size), "--window", "128"])
        try:
            cluster.start()
            keys = config.parse_keys(cluster.key_file.read_text(), "the bench key")
            sealer = wire.Sealer(keys, ttl=config.TOKEN_TTL, max_size=config.MAX_FRAME)
            assert cluster.producer is not None
            with cluster.blaming_daemons(), ControlClient(cluster.control, sealer, timeout=10) as client:
                rss_start = {"consumer": _rss_mb(cluster.consumer.pid)}
                pids = {"producer": cluster.producer.pid, "consumer": cluster.consumer.pid}
                cpu_start = {role: cpu_s(pid) for role, pid in pids.items()}
                cpu_start["helper"] = children_cpu_s(cluster.consumer.pid)
                e2e, row = _timed_run(client, cluster, users, data)
                cpu = {role: cpu_s(pid) - cpu_start[role] for role, pid in pids.items()}
                producer_stages = client.call("status", limit=1)["stages"]
                consumer_stages, render_s = _consumer_metrics(cluster.url)
                helper_s = children_cpu_s(cluster.consumer.pid)
                cpu["helper"] = helper_s - cpu_start["helper"]
                rss = {"consumer": _peak_rss_mb(cluster.consumer.pid),
                       "producer": _peak_rss_mb(cluster.producer.pid),
                       # The consumer's zxcvbn helper is part of the consumer (its unit's memory).
                       "consumer_helper": sum(proc_status_mb(pid, "VmHWM") for pid in children(cluster.consumer.pid))
                       or None}
                rss_end = {"consumer": _rss_mb(cluster.consumer.pid)}
                # The same users again through the same daemons: what a long-running
                # consumer does once the passwords it sees are cached (zxcvbn skipped).
                warm_e2e, warm_row = _timed_run(client, cluster, users, data)
                stages_after, warm_render_s = _consumer_metrics(cluster.url)
                warm_stages = {k: v - consumer_stages.get(k, 0.0) for k, v in stages_after.items()}
            with urllib.request.urlopen(cluster.url + "api/stats.json", timeout=30) as r:
                doc = json.loads(r.read())
        finally:
            cluster.stop()
        floor_s, n_frames = measure_floor(data, sealer, users, batch_size)
        alone = measure_consumer_alone(root, data, users, batch_size, consumer_args)
        dict_floor_s = measure_dict_floor(data, sealer, batch_size)
        consumer_total = sum(consumer_stages.values())
        result: dict[str, Any] = {
            "users": users, "batches": n_frames, "batch_size": batch_size, "batch_workers": batch_workers,
            "generate_s": round(gen_s, 3),
            "end_to_end_s": round(e2e, 3), "end_to_end_users_per_s": round(users / e2e),
            "consumer_stages_s": {k: round(v, 4) for k, v in consumer_stages.items()},
            "producer_stages_s": {k: round(v, 4) for k, v in producer_stages.items()},
            "consumer_total_s": round(consumer_total, 3),
            "consumer_us_per_user": round(consumer_total / users * 1e6, 2),
            "floor_s": round(floor_s, 5), "floor_us_per_user": round(floor_s / users * 1e6, 2),
            "floor_users_per_s": round(users / floor_s),
            "consumer_over_floor": round(consumer_total / floor_s, 2),
            "dict_floor_users_per_s": round(users / dict_floor_s),
            "consumer_over_dict_floor": round(consumer_total / dict_floor_s, 2),
            "consumer_helper_cpu_s": round(helper_s, 3),
            # CPU, not wall: the audit's wall time already holds any wait for the helper.
            "consumer_with_helper_over_floor": round((cpu["consumer"] + cpu["helper"]) / floor_s, 2),
            # On a shared 2-core machine CPU per user is steadier than wall time, and all three
            # processes compete for the same two cores: their sum bounds the throughput.
            "cpu_us_per_user": {k: round(v / users * 1e6, 1) for k, v in cpu.items()},
            # How busy the three kept the machine: near 1.0, only less CPU per user is faster.
            "cores_busy_share": busy_share(sum(cpu.values()), e2e),
            "peak_rss_mb": {k: round(v, 1) if v else None for k, v in rss.items()},
            "consumer_rss_mb": {"start": rss_start["consumer"], "end": rss_end["consumer"]},
            # The consumer's whole re-render after the run (figures from the store, the page,
            # its files, the server's copy): what "render" costs it; then after the second run,
            # on twice the state; and the page alone from the same document (median of 15).
            "render_ms": round(render_s * 1000, 2),
            "warm_render_ms": round(warm_render_s * 1000, 2),
            "page_render_ms": round(measure_render(doc) * 1000, 2),
            # What one consumer host takes (two-host deployment): the consumer by itself.
            "consumer_alone": alone,
            "applied_users": row.get("applied_users"),
            "warm_end_to_end_s": round(warm_e2e, 3),
            "warm_end_to_end_users_per_s": round(users / warm_e2e),
            "warm_consumer_us_per_user": round(sum(warm_stages.values()) / users * 1e6, 2),
            "warm_consumer_stages_s": {k: round(v, 4) for k, v in warm_stages.items()},
        }
        if peer:
            result.update(peer_figures(measure_peer(data, keys[0]), e2e))
        return result


def peer_figures(peer: dict[str, Any], e2e: float) -> dict[str, Any]:
    """The peer's figures and our end-to-end speed-up over each of them."""
    n, phases = peer["users"], peer["phases_s"]
    transform_audit = phases["transform"] + phases["audit"]
    return {
        # The original's whole run (API pages to the written dashboard) against ours
        # (start-run to the rendered dashboard): the like-for-like comparison.
        "peer_s": round(peer["whole_s"], 3), "peer_users_per_s": round(n / peer["whole_s"]),
        "speedup_vs_peer": round(peer["whole_s"] / e2e, 2),
        "peer_phases_s": {k: round(v, 3) for k, v in phases.items()},
        "peer_kept_users": peer["kept_users"],
        # Its VM2 transform + audit alone (the "about 8,000 users/s"), and a leaner
        # per-record VM2: stricter comparisons, since our figure includes everything.
        "peer_transform_audit_users_per_s": round(n / transform_audit),
        "speedup_vs_peer_transform_audit": round(transform_audit / e2e, 2),
        "lean_peer_users_per_s": round(n / peer["lean_s"]),
        "speedup_vs_lean_peer": round(peer["lean_s"] / e2e, 2),
    }


def format_report(r: dict[str, Any]) -> str:
    """The human-readable report."""
    lines = [
        f"users: {r['users']:,} in {r['batches']} batches of {r['batch_size']}; consumer --batch-workers "
        f"{r.get('batch_workers', 0)} (2-core shared machine: noisy)",
        f"end to end (start-run → rendered dashboard): {r['end_to_end_s']:.2f} s = "
        f"{r['end_to_end_users_per_s']:,} users/s",
        "consumer stages (wall s, sharing the cores with the producer): " + ", ".join(
            f"{k} {v:.3f}" for k, v in r["consumer_stages_s"].items()),
        "producer stages (wall s): " + ", ".join(f"{k} {v:.3f}" for k, v in r["producer_stages_s"].items()),
        f"consumer total: {r['consumer_total_s']:.3f} s = {r['consumer_us_per_user']} µs/user",
        f"floor (Fernet open + msgpack decode of the same batches, re-sealed, in this process after the "
        f"daemons stopped: no contention): {r['floor_s']:.3f} s = "
        f"{r['floor_us_per_user']} µs/user ({r['floor_users_per_s']:,} users/s)",
        f"consumer / floor: {r['consumer_over_floor']}× (its stages' wall time; the CPU of the consumer "
        f"process and its zxcvbn helper together: {r['consumer_with_helper_over_floor']}×)",
        f"for scale, the same users as batches of API-shaped dicts open at "
        f"{r['dict_floor_users_per_s']:,} users/s; consumer / that floor: {r['consumer_over_dict_floor']}×",
        "CPU per user in the cold run (µs; user + system): " + ", ".join(
            f"{k} {v}" for k, v in r["cpu_us_per_user"].items())
        + f" = {sum(r['cpu_us_per_user'].values()):.1f} in all; they kept "
        f"{r['cores_busy_share']:.0%} of the machine's cores busy",
        f"peak RSS (VmHWM) in the cold run: consumer {r['peak_rss_mb']['consumer']} MB + its zxcvbn helper "
        f"{r['peak_rss_mb'].get('consumer_helper')} MB, producer {r['peak_rss_mb']['producer']} MB",
        f"dashboard re-render by the consumer after the run (figures from the store, page, files, "
        f"server copy): {r['render_ms']} ms; after the second run (twice the state): "
        f"{r.get('warm_render_ms')} ms; the page alone: {r.get('page_render_ms')} ms (median of 15)",
        "the consumer by itself, as on its own host (the same batches pushed as fast as it takes "
        f"them): {r['consumer_alone']['cold_users_per_s']:,} users/s cold, "
        f"{r['consumer_alone']['warm_users_per_s']:,} warm; CPU per user in the cold run: consumer "
        f"{r['consumer_alone']['cpu_us_per_user']['consumer']} µs, helper "
        f"{r['consumer_alone']['cpu_us_per_user']['helper']} µs; "
        f"{r['consumer_alone']['cores_busy_share']:.0%} of the cores busy",
        f"warm (the same users again, passwords cached): {r['warm_end_to_end_s']:.2f} s = "
        f"{r['warm_end_to_end_users_per_s']:,} users/s; consumer {r['warm_consumer_us_per_user']} µs/user ("
        + ", ".join(f"{k} {v:.3f}" for k, v in r["warm_consumer_stages_s"].items()) + " s)",
    ]
    if "peer_s" in r:
        lines += [
            f"InfraETL1's whole run on the same users (API pages → its dashboard): {r['peer_s']:.2f} s = "
            f"{r['peer_users_per_s']:,} users/s (" + ", ".join(
                f"{k} {v:.2f} s" for k, v in r["peer_phases_s"].items())
            + f"); end-to-end speed-up {r['speedup_vs_peer']}×",
            f"  its transform + audit alone: {r['peer_transform_audit_users_per_s']:,} users/s "
            f"(ours end to end: {r['speedup_vs_peer_transform_audit']}× that)",
            f"  a leaner per-record VM2 (JSON, one regex a field, no files): "
            f"{r['lean_peer_users_per_s']:,} users/s (ours: {r['speedup_vs_lean_peer']}× that)",
        ]
    return "\n".join(lines)


def median_report(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Element-wise median of several runs' figures (numbers only; the rest from the first)."""
    def med(values: list[Any]) -> Any:
        if all(isinstance(v, dict) for v in values):
            return {k: med([v.get(k) for v in values]) for k in values[0]}
        nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if nums and all(v == values[0] for v in values):
            return values[0]  # users, batches: not 20,000.0 from an even --repeat
        if len(nums) == len(values) and nums:
            m = statistics.median(nums)
            return round(m, 4) if isinstance(m, float) else m
        return values[0]

    return {k: med([r.get(k) for r in results]) for k in results[0]}
