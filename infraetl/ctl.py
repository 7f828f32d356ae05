"""``infraetl-ctl``: the operator's command line.

Commands are thin: parse, call one library function, print (formatting
lives in ``cli_output``). Library errors become one line on stderr and exit
1; usage errors exit 2 (click's convention). No traceback reaches a user.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from . import config, schema, wire
from .cli_daemons import Seconds, env_option, short_text
from .cli_output import Progress, emit_json, runs_table
from .control import ControlClient, wait_run
from .exceptions import InfraETLError

PATH = click.Path(path_type=Path)


class Ctx:
    """What every subcommand shares."""

    def __init__(self, producer: str, timeout: float, curve_secret: Path | None,
                 curve_server_key: Path | None) -> None:
        self.producer = producer
        self.timeout = timeout
        self.curve_secret = curve_secret
        self.curve_server_key = curve_server_key

    def client(self) -> ControlClient:
        """A control client sealed with the key from the environment."""
        keys = config.load_keys()
        sealer = wire.Sealer(keys, ttl=config.TOKEN_TTL, max_size=1 << 20)
        return ControlClient(self.producer, sealer, timeout=self.timeout,
                             curve_secret=self.curve_secret, curve_server_key=self.curve_server_key)


class Group(click.Group):
    """Turns InfraETLError into one line on stderr and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InfraETLError as e:
            raise click.ClickException(str(e)) from None
        except BrokenPipeError:  # `infraetl-ctl status | head -1`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
            sys.exit(141)  # as a shell reports a command SIGPIPE ended
        except OSError as e:  # writing the output (keygen > a full disk), a work directory...
            raise click.ClickException(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}") from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)


def _endpoint(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not re.fullmatch(r"(tcp|ipc)://\S+", value or ""):
        raise click.BadParameter(f"{value[:100]!r} is not a ZeroMQ endpoint: tcp://HOST:PORT (or ipc://PATH)")
    return value


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@env_option("--producer", default=config.PRODUCER, callback=_endpoint,
            help="The producer's control endpoint (tcp://HOST:PORT).")
@env_option("--call-timeout", type=Seconds(0.1, 86_400), default=5.0,
            help="Seconds to wait for each answer from the producer.")
@env_option("--curve-secret", type=PATH, default=None, help="CURVE: this client's .key_secret file.")
@env_option("--curve-server-key", type=PATH, default=None, help="CURVE: the producer's public .key file.")
@click.version_option(package_name="infraetl")
@click.pass_context
def cli(ctx: click.Context, producer: str, call_timeout: float, curve_secret: Path | None,
        curve_server_key: Path | None) -> None:
    """Operate an infraetl pipeline: start and follow runs, make keys, run the demo."""
    if bool(curve_secret) != bool(curve_server_key):
        # Half of it would leave CURVE off for the server key alone, unnoticed.
        raise click.UsageError("CURVE needs both --curve-secret (this client's .key_secret) and "
                               "--curve-server-key (the producer's public .key)")
    ctx.obj = Ctx(producer, call_timeout, curve_secret, curve_server_key)


@cli.command()
@click.option("--curve", "curve_dir", type=PATH, default=None,
              help="Instead of a Fernet key, write a CURVE key pair NAME.key / NAME.key_secret into DIR.")
@click.option("--name", default=None, help="Base name of the CURVE key files (with --curve; default: infraetl).")
def keygen(curve_dir: Path | None, name: str | None) -> None:
    """Print a new Fernet key on stdout (redirect it into a 0600 file)."""
    if name is not None and curve_dir is None:
        raise click.UsageError("--name names CURVE key files: it goes with --curve DIR")
    name = name or "infraetl"
    if curve_dir is not None:
        from .curve import create_keypair

        public, secret = create_keypair(curve_dir, name)
        click.echo(f"wrote {public} (public: give it to the peers) and {secret} (secret, mode 0600)")
        return
    if sys.stdout.isatty():
        click.echo("note: this is a secret; redirect it into a file: infraetl-ctl keygen > etl-key", err=True)
    click.echo(config.new_key())


def _nat(value: str | None) -> list[str]:
    codes = [c.strip().upper() for c in (value or "").split(",") if c.strip()]
    refused = schema.unknown_nationalities(codes)
    if refused:
        raise click.BadParameter(refused)
    return codes


def _source(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value in config.SOURCES or (value.startswith("file:") and len(value) > 5):
        short_text(4096)(ctx, param, value)
        return value
    raise click.BadParameter(f"unknown source {value[:100]!r}: use randomuser, synthetic or file:PATH")


#: Longest run id the ctl sends: a request must fit the producer's 64 KB control frames.
MAX_RUN_ID = 128
run_id_argument = click.argument("run_id", callback=short_text(MAX_RUN_ID, may_be_empty=False))


@cli.command("start-run")
@click.option("--users", type=click.IntRange(1, 10_000_000), required=True, help="How many users to process.")
@click.option("--nat", default=None, callback=lambda ctx, param, value: _nat(value),
              help="Comma-separated nationality codes to keep (default: all).")
@click.option("--seed", default=None, callback=short_text(config.MAX_SEED),
              help="Seed for reproducible users (default: random).")
@click.option("--source", default="synthetic", show_default=True, callback=_source,
              help="randomuser (the API), synthetic (offline) or file:PATH (on the producer's host).")
@click.option("--deadline", type=Seconds(1, 10_000_000), default=None,
              help="Seconds the producer may spend fetching before the run fails (default: its --run-deadline).")
@click.option("--no-wait", is_flag=True, help="Return as soon as the run is accepted.")
@click.option("--timeout", type=Seconds(0.1, 10_000_000), default=900.0, show_default=True,
              help="Seconds to wait for the dashboard to show the run.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def start_run(obj: Ctx, users: int, nat: list[str], seed: str | None, source: str,
              deadline: float | None, no_wait: bool, timeout: float, as_json: bool) -> None:
    """Start a run; by default wait until the dashboard shows it."""
    with obj.client() as client:
        started = client.call("start-run", users=users, nat=nat, seed=seed, source=source,
                              deadline=deadline)
        run_id = started["run_id"]
        if no_wait:
            emit_json(started) if as_json else click.echo(run_id)
            return
        if not as_json:
            click.echo(f"run {run_id}: {users} users from {source}", err=True)
        _follow(client, run_id, users, timeout, as_json)


def _follow(client: ControlClient, run_id: str, requested: int, timeout: float, as_json: bool) -> None:
    progress = Progress(requested, enabled=not as_json and sys.stderr.isatty())
    try:
        row = wait_run(client, run_id, timeout=timeout, on_progress=progress, on_error=progress.unanswered)
    finally:
        progress.close()
    if as_json:
        emit_json(row)
    if row["state"] != "complete":
        raise InfraETLError(f"run {run_id} {row['state']}: {row.get('reason') or 'no reason given'}")
    if not as_json:
        filtered = f", {row['filtered']} left out by --nat" if row.get("filtered") else ""
        click.echo(f"run {run_id} complete: {row['applied_users']} users applied, "
                   f"{row['quarantined']} quarantined{filtered}")
        click.echo(f"dashboard: {row.get('url')}")


@cli.command()
@run_id_argument
@click.option("--timeout", type=Seconds(0.1, 10_000_000), default=900.0, show_default=True,
              help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def wait(obj: Ctx, run_id: str, timeout: float, as_json: bool) -> None:
    """Wait until RUN_ID is rendered on the dashboard (exit 1 if it failed)."""
    with obj.client() as client:
        # Every call inside the wait: one before it, to a producer restarting, failed at once
        # and overran --timeout (a review).
        _follow(client, run_id, 0, timeout, as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Runs to list.")
@click.pass_obj
def status(obj: Ctx, as_json: bool, limit: int) -> None:
    """List the producer's runs: state, users requested, batches spooled and ACKed, users the
    consumer counted (once complete; nothing of a failed or cancelled run), and why a run failed."""
    with obj.client() as client:
        result = client.call("status", limit=limit)
    if as_json:
        emit_json(result)
    else:
        click.echo(runs_table(result["runs"]))
        click.echo(f"{result['in_flight']} frame(s) awaiting ACK")
        rejected = result.get("rejected") or {}
        if rejected:
            click.echo("frames rejected since the producer started: "
                       + ", ".join(f"{reason} {n:,}" for reason, n in sorted(rejected.items())))
        offset = result.get("consumer_clock_offset_s")
        if type(offset) in (int, float) and abs(offset) >= wire.PeerClock.TELL_AT:
            click.echo(f"the consumer's clock is {offset:+.0f} s off the producer's: frames are stamped in its "
                       "time; set both hosts' clocks right (NTP)")


@cli.command()
@run_id_argument
@click.pass_obj
def cancel(obj: Ctx, run_id: str) -> None:
    """Cancel a running run: it is closed as cancelled at once, and nothing of it is counted
    (unless the consumer had already completed it: then it stays complete, and says so)."""
    with obj.client() as client:
        client.call("cancel", run_id=run_id)
    click.echo(f"run {run_id}: cancelled; nothing of it is counted, unless the consumer had completed it "
               "already (`infraetl-ctl status` then shows it complete)")


@cli.command()
@click.option("--users", type=click.IntRange(1, 10_000_000), default=300, show_default=True,
              help="Users in the demo run.")
@click.option("--once", is_flag=True, help="Exit 0 after the run instead of serving until Ctrl-C.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Dashboard port on 127.0.0.1 (0 or busy: any free port).")
@click.option("--seed", default="demo", show_default=True, help="Seed of the offline users.")
def demo(users: int, once: bool, http_port: int, seed: str) -> None:
    """Start a consumer and a producer on 127.0.0.1 and run the offline source through them."""
    from .bench import run_deadline
    from .localcluster import LocalCluster

    _stop_on_sigterm()  # SIGTERM at any point stops both daemons, as Ctrl-C does
    with tempfile.TemporaryDirectory(prefix="infraetl-demo-") as tmp:
        port = http_port if http_port and _port_free(http_port) else 0
        cluster = LocalCluster(Path(tmp), http_port=port)
        try:
            cluster.start()
            click.echo(f"consumer and producer up (state in {tmp}); dashboard: {cluster.url}", err=True)
            keys = config.parse_keys(cluster.key_file.read_text(), "the demo key")
            sealer = wire.Sealer(keys, ttl=config.TOKEN_TTL, max_size=1 << 20)
            with cluster.blaming_daemons(), ControlClient(cluster.control, sealer, timeout=10) as client:
                started = client.call("start-run", users=users, seed=seed, source="synthetic")
                click.echo(f"run {started['run_id']}: {users} synthetic users", err=True)
                _follow(client, started["run_id"], users, run_deadline(users), as_json=False)
            if once:
                return
            click.echo("serving the dashboard; press Ctrl-C to stop", err=True)
            try:
                while cluster.consumer.alive():
                    time.sleep(0.5)
            except KeyboardInterrupt:
                return
            raise InfraETLError("the consumer stopped unexpectedly; see its log above")
        except InfraETLError:
            click.echo(cluster.consumer.log()[-2000:], err=True)
            raise
        finally:
            cluster.stop()


@cli.command()
@click.option("--users", type=click.IntRange(1000, 10_000_000), default=100_000, show_default=True,
              help="Users to push through both daemons.")
@click.option("--repeat", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Runs of the whole benchmark; the report quotes medians.")
@click.option("--batch-size", type=click.IntRange(1, 5000), default=config.BATCH_SIZE, show_default=True,
              help="Users per batch, as the producer's --batch-size (the floor uses the same batches).")
@click.option("--no-peer", is_flag=True,
              help="Skip InfraETL1's approach (the peer; like the original it holds the whole run in "
                   "memory, ~17 KB a user).")
@click.option("--batch-workers", type=click.IntRange(0, 16), default=config.BATCH_WORKERS, show_default=True,
              help="The consumer's --batch-workers.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench(users: int, repeat: int, batch_size: int, no_peer: bool, batch_workers: int, as_json: bool) -> None:
    """Benchmark both daemons end to end against the floor and InfraETL1's approach."""
    from .bench import PEER_MAX_USERS, format_report, median_report, run_bench

    if not no_peer and users > PEER_MAX_USERS:
        raise click.BadParameter(f"the peer holds the whole run in memory (~17 KB a user): use --no-peer "
                                 f"above {PEER_MAX_USERS:,} users", param_hint="--users")
    _stop_on_sigterm()
    results = []
    for i in range(repeat):
        results.append(run_bench(users, batch_size=batch_size, peer=not no_peer, batch_workers=batch_workers))
        if not as_json and repeat > 1:
            click.echo(f"--- run {i + 1} of {repeat}", err=True)
            click.echo(format_report(results[-1]), err=True)
    report = median_report(results)
    if as_json:
        emit_json({"median": report, "runs": results})
    else:
        click.echo(f"=== median of {repeat} run(s)")
        click.echo(format_report(report))


@cli.command()
@click.option("--users", type=click.IntRange(10_000, 10_000_000), default=1_000_000, show_default=True,
              help="Users to push through both daemons.")
@click.option("--interval", type=Seconds(0.1, 3600), default=1.0, show_default=True,
              help="Seconds between samples of progress and memory.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def soak(users: int, interval: float, as_json: bool) -> None:
    """Push many users through both daemons; report throughput over time and RSS start and end."""
    from .soak import format_timeline, run_soak

    _stop_on_sigterm()
    result = run_soak(users, interval=interval)
    if as_json:
        emit_json(result.as_dict())
    else:
        click.echo(format_timeline(result))
    if result.state != "complete" or result.total_users != users:
        raise InfraETLError(f"soak run {result.state}: {result.total_users:,} of {users:,} users on the dashboard")


@cli.command()
@click.option("--users", type=click.IntRange(1000, 10_000_000), default=100_000, show_default=True,
              help="Users of the run, once without faults and once under them.")
@click.option("--faults", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="Faults to inject while the run lasts.")
@click.option("--every", type=Seconds(0.1, 3600), default=2.0, show_default=True,
              help="Mean seconds between faults (each pause is 0.5-1.5 times this).")
@click.option("--random-seed", type=int, default=1, show_default=True,
              help="Seed of the fault sequence: the same seed draws the same faults.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def crash(users: int, faults: int, every: float, random_seed: int, as_json: bool) -> None:
    """The crash suite at any size: a run under random kill -9, SIGSTOP and SIGTERM must give
    the figures of the same run without them."""
    from .crash import format_report, run_crash

    _stop_on_sigterm()

    def show(f: Any) -> None:
        if not as_json:
            click.echo(f"{f.t:7.1f} s  {f.kind}", err=True)

    result = run_crash(users, faults=faults, every=every, random_seed=random_seed, on_fault=show)
    if as_json:
        emit_json(result.as_dict())
    else:
        click.echo(format_report(result))
    if not result.faults:
        raise InfraETLError("no fault was injected: the run ended before the first one was due "
                            "(raise --users or lower --every)")
    if not result.ok:
        raise InfraETLError("the run under faults does not match the run without them (see above)")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm() -> None:
    """SIGTERM (timeout(1), a cancelled CI job, kill) as Ctrl-C: the daemons a command started
    and its work directory go with it."""
    signal.signal(signal.SIGTERM, _interrupt)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        # As the dashboard's server binds: a port a previous demo left in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def main() -> None:
    """Entry point of ``infraetl-ctl``."""
    cli(auto_envvar_prefix="INFRAETL")


if __name__ == "__main__":
    main()
