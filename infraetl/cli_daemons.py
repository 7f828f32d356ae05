"""Command lines of the two daemons: parse options, load the key, build settings, serve.

Every option also reads ``INFRAETL_<OPTION>`` (e.g. ``INFRAETL_DATA_BIND``),
so systemd's ``EnvironmentFile=`` configures a daemon without a wrapper.
Exit status: 0 after a clean stop, 1 on a runtime error, 2 on a usage or
key error (with one sentence saying what to fix).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import config
from .exceptions import InfraETLError, KeyError_

logger = logging.getLogger(__name__)


def env_option(*decls: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option whose environment variable is ``INFRAETL_<NAME>``, shown in --help."""
    name = decls[0].split("/")[0].lstrip("-").replace("-", "_").upper()
    kw.setdefault("envvar", f"INFRAETL_{name}")
    kw.setdefault("show_envvar", True)
    kw.setdefault("show_default", True)
    return click.option(*decls, **kw)


def _load_keys_or_exit() -> tuple[bytes, ...]:
    try:
        return config.load_keys()
    except KeyError_ as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)


def _serve(make: Callable[[], Any]) -> None:
    from .daemon import Signals

    # Before the daemon opens its state (a store upgrade may take a while): a SIGTERM or Ctrl-C
    # meanwhile is a clean stop once it is up, not a traceback (a review).
    early = Signals()
    early.install()
    try:
        daemon = make()
        daemon.signals = early
        code = daemon.serve()
    except InfraETLError as e:
        logger.error("%s", e)
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    sys.exit(code)


def _checked_by(check: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, str], str]:
    """A callback that runs ``check`` on the value at parsing time: what it refuses is a usage
    error (exit 2, not restarted by systemd), not a failure when the daemon first uses it."""

    def callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
        try:
            check(value)
        except (ValueError, InfraETLError) as e:
            raise click.BadParameter(str(e)) from None
        return value

    return callback


_trusted = _checked_by(config.trusted_addresses)
_http_bind = _checked_by(config.split_bind)


def _api_url(value: str) -> None:
    from .sources.randomuser import check_api_url

    check_api_url(value)


def short_text(limit: int, *, may_be_empty: bool = True) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback refusing text past ``limit`` characters, or with control characters: such a
    value would only fail later (an ACK or request over its socket's size cap is dropped
    unseen), or put junk into a log line."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return value
        text = str(value)
        if not text and not may_be_empty:
            raise click.BadParameter("must not be empty")
        if len(text) > limit:
            raise click.BadParameter(f"at most {limit:,} characters (got {len(text):,})")
        if not text.isprintable():
            raise click.BadParameter("must not hold control characters")
        return value

    return check


def _state_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    # Taken as text: click's Path("") is ".", and the daemon wrote into its working directory.
    if value is not None and not value.strip():
        raise click.BadParameter("must name a directory (empty would mean the working directory)")
    return None if value is None else Path(value)


class Seconds(click.FloatRange):
    """A number of seconds within bounds, and a number: click's ranges let NaN through, and a
    NaN timeout never fires (a NaN token TTL would turn the replay window off)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return rv


STATE_HELP = "State directory (default: $STATE_DIRECTORY, else ${XDG_STATE_HOME:-~/.local/state}/infraetl/ROLE)."
PATH = click.Path(path_type=Path)
CONTEXT = {"help_option_names": ["-h", "--help"]}
state_dir_option = env_option("--state-dir", type=str, default=None, help=STATE_HELP, show_default=False,
                              callback=_state_dir)
token_ttl_option = env_option("--token-ttl", type=Seconds(1, 10_000_000), default=config.TOKEN_TTL,
                              help="Seconds a sealed frame stays acceptable.")
max_frame_option = env_option("--max-frame", type=click.IntRange(1 << 16, 1 << 31), default=config.MAX_FRAME,
                              help="Largest frame, in bytes.")
curve_secret_option = env_option("--curve-secret", type=PATH, default=None,
                                 help="CURVE: this host's .key_secret file (turns CURVE on).")
log_level_option = env_option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
                              help="Log level.")


def _run(role: str, settings_cls: Any, daemon_cls: Any, state_dir: Path | None, log_level: str,
         opts: dict[str, Any]) -> None:
    """Set up logging, load the key, build the settings and serve ``daemon_cls``."""
    from .daemon import MALLOC, setup_logging

    half = [f"--{name.replace('_', '-')}" for name in ("curve_allow", "curve_server_key") if opts.get(name)]
    if half and not opts.get("curve_secret"):
        # CURVE stays off without this host's secret: the ports would take any peer, unnoticed.
        raise click.UsageError(f"{' and '.join(half)} need(s) --curve-secret: without it CURVE is off")
    if opts.get("curve_secret"):
        needs = {"consumer": [("curve_allow", "--curve-allow DIR, a directory of the producers' public .key files")],
                 "producer": [("curve_allow", "--curve-allow DIR, a directory of the ctl hosts' public .key files"),
                              ("curve_server_key", "--curve-server-key FILE, the consumer's public .key")]}[role]
        missing = [what for name, what in needs if not opts.get(name)]
        if missing:
            raise click.UsageError(f"--curve-secret needs {' and '.join(missing)}: without it no peer could "
                                   "connect")
    for name in ("curve_secret", "curve_allow", "curve_server_key"):
        path = opts.get(name)
        if path is not None and not Path(path).exists():
            raise click.UsageError(f"--{name.replace('_', '-')} {path}: no such file or directory")
    if opts.get("curve_allow") and not Path(opts["curve_allow"]).is_dir():
        raise click.UsageError(f"--curve-allow {opts['curve_allow']}: not a directory")
    MALLOC.tune()
    setup_logging(log_level)
    keys = _load_keys_or_exit()
    settings = settings_cls(state_dir=state_dir or config.default_state_dir(role), keys=keys, **opts)
    _serve(lambda: daemon_cls(settings))


@click.command(context_settings=CONTEXT)
@state_dir_option
@env_option("--data-bind", default=config.DATA_BIND, help="ZeroMQ PULL endpoint for data batches.")
@env_option("--ack-bind", default=config.ACK_BIND, help="ZeroMQ PUB endpoint for ACKs.")
@env_option("--http-bind", default=config.HTTP_BIND, callback=_http_bind,
            help="HOST:PORT of the dashboard (port 0: any free port).")
@env_option("--public-url", default=None, callback=short_text(2048),
            help="Dashboard URL to report to operators (default: from --http-bind).")
@env_option("--http-trusted", default=config.HTTP_TRUSTED, callback=_trusted,
            help="Comma-separated client addresses the dashboard's per-client connection cap (an eighth of "
                 "its connections) does not apply to: a reverse proxy's, whose clients all come from it.")
@token_ttl_option
@max_frame_option
@env_option("--reveal-passwords/--no-reveal-passwords", default=False,
            help="DANGER: show top passwords in plaintext on the dashboard and API, and keep every tallied "
                 "password in plaintext in the state database while on (off: masked; a start without it "
                 "masks what it stored).")
@curve_secret_option
@env_option("--curve-allow", type=PATH, default=None, help="CURVE: directory of public .key files of admitted peers.")
@env_option("--zxcvbn-workers", type=click.IntRange(0, 1), default=1,
            help="1: a helper process scores passwords with zxcvbn ahead of the audit; 0: the daemon itself does.")
@env_option("--batch-workers", type=click.IntRange(0, 16), default=config.BATCH_WORKERS,
            help="Helper processes that validate and aggregate data batches in parallel, one a core is "
                 "best (0: the daemon's main thread does it, with the zxcvbn helper ahead of it).")
@log_level_option
def consumer_cli(state_dir: Path | None, log_level: str, **opts: Any) -> None:
    """Run the infraetl consumer in the foreground (systemd supervises it)."""
    from .consumer import Consumer

    _run("consumer", config.ConsumerSettings, Consumer, state_dir, log_level, opts)


@click.command(context_settings=CONTEXT)
@state_dir_option
@env_option("--data-connect", default=config.DATA_CONNECT, help="Consumer's data (PULL) endpoint.")
@env_option("--ack-connect", default=config.ACK_CONNECT, help="Consumer's ACK (PUB) endpoint.")
@env_option("--control-bind", default=config.CONTROL_BIND, help="ZeroMQ ROUTER endpoint for infraetl-ctl.")
@env_option("--api-url", default=config.API_URL, callback=_checked_by(_api_url),
            help="RandomUser API base URL (http:// or https://; credentials in it are never shown).")
@env_option("--producer-id", default="", help="This producer's id (ACK topic); default: the host name.",
            show_default=False, callback=short_text(255))
@token_ttl_option
@max_frame_option
@env_option("--batch-size", type=click.IntRange(1, 5000), default=config.BATCH_SIZE, help="Users per batch.")
@env_option("--resend-after", type=Seconds(0.05, 3600), default=config.RESEND_AFTER,
            help="Seconds without an ACK before a batch is sent again.")
@env_option("--window", type=click.IntRange(1, 100000), default=config.WINDOW,
            help="UnACKed batches in flight (and at most 128 MB of them).")
@env_option("--run-deadline", type=Seconds(1, 10_000_000), default=config.RUN_DEADLINE,
            help="Seconds a run may take to fetch its users before it fails.")
@curve_secret_option
@env_option("--curve-server-key", type=PATH, default=None, help="CURVE: the consumer's public .key file.")
@env_option("--curve-allow", type=PATH, default=None,
            help="CURVE: directory of public .key files of admitted ctl clients.")
@log_level_option
def producer_cli(state_dir: Path | None, log_level: str, **opts: Any) -> None:
    """Run the infraetl producer in the foreground (systemd supervises it)."""
    from .producer import Producer

    _run("producer", config.ProducerSettings, Producer, state_dir, log_level, opts)
