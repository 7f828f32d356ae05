"""Settings of each daemon and the Fernet key lookup.

Defaults live here and only here. Settings come from defaults < CLI options,
where every CLI option also reads ``INFRAETL_<OPTION>`` from the environment
(click's ``auto_envvar_prefix``), so systemd's ``EnvironmentFile=`` configures
a daemon without a wrapper. The environment is read only at the edge: the
CLI builds one frozen dataclass and passes it to the daemon.

Keys are looked up in this order (the first that exists wins):

1. ``$CREDENTIALS_DIRECTORY/etl-key`` (systemd ``LoadCredential=``)
2. the file named by ``ETL_ENCRYPTION_KEY_FILE``
3. the variable ``ETL_ENCRYPTION_KEY`` (the original project's way)

Several keys, comma-separated or one per line, mean rotation: the first
seals, all open.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .exceptions import KeyError_

if TYPE_CHECKING:
    from .wire import Sealer

KEY_FIX = "run `infraetl-ctl keygen > FILE` and point ETL_ENCRYPTION_KEY_FILE at FILE (mode 0600)"

# Defaults (DESIGN.md "Sockets"): the consumer binds, producers connect.
DATA_BIND = "tcp://*:5555"
ACK_BIND = "tcp://*:5556"
CONTROL_BIND = "tcp://*:5557"
HTTP_BIND = "0.0.0.0:8000"
#: Dashboard clients the per-client connection cap does not apply to (a reverse proxy there).
HTTP_TRUSTED = "127.0.0.1,::1"
DATA_CONNECT = "tcp://127.0.0.1:5555"
ACK_CONNECT = "tcp://127.0.0.1:5556"
PRODUCER = "tcp://127.0.0.1:5557"
API_URL = "https://randomuser.me/api/1.4/"
TOKEN_TTL = 3600.0          # seconds a sealed frame stays acceptable (replay window)
MAX_FRAME = 16 * 1024 * 1024  # bytes; a 500-user batch is ~150 KB
BATCH_SIZE = 500
#: Consumer processes that validate and aggregate data batches (``batchwork``); off by default:
#: they pay off on a consumer host of its own, and cost CPU where the producer shares the cores.
BATCH_WORKERS = 0
RESEND_AFTER = 5.0          # seconds without ACK before a batch is sent again
WINDOW = 64                 # unACKed batches in flight per producer
RUN_DEADLINE = 600.0        # seconds a run may spend fetching before it fails
#: What a start-run may name as its source besides ``file:PATH``, and its longest seed (the ctl
#: and the producer check both: a request must fit the producer's 64 KB control frames).
SOURCES = ("randomuser", "synthetic")
MAX_SEED = 256


def default_state_dir(role: str, env: Mapping[str, str] | None = None) -> Path:
    """``$STATE_DIRECTORY`` (systemd) or ``${XDG_STATE_HOME:-~/.local/state}/infraetl/<role>``."""
    env = os.environ if env is None else env
    if env.get("STATE_DIRECTORY"):
        # systemd may pass several colon-separated paths; the first is ours.
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "infraetl" / role


@dataclass(frozen=True)
class ConsumerSettings:
    """Everything the consumer daemon needs."""

    state_dir: Path
    keys: tuple[bytes, ...] = field(repr=False)
    data_bind: str = DATA_BIND
    ack_bind: str = ACK_BIND
    http_bind: str = HTTP_BIND
    public_url: str | None = None
    http_trusted: str = HTTP_TRUSTED
    token_ttl: float = TOKEN_TTL
    max_frame: int = MAX_FRAME
    reveal_passwords: bool = False
    curve_secret: Path | None = None
    curve_allow: Path | None = None
    zxcvbn_workers: int = 1
    batch_workers: int = BATCH_WORKERS


@dataclass(frozen=True)
class ProducerSettings:
    """Everything the producer daemon needs."""

    state_dir: Path
    keys: tuple[bytes, ...] = field(repr=False)
    data_connect: str = DATA_CONNECT
    ack_connect: str = ACK_CONNECT
    control_bind: str = CONTROL_BIND
    api_url: str = API_URL
    producer_id: str = ""
    token_ttl: float = TOKEN_TTL
    max_frame: int = MAX_FRAME
    batch_size: int = BATCH_SIZE
    resend_after: float = RESEND_AFTER
    window: int = WINDOW
    run_deadline: float = RUN_DEADLINE
    curve_secret: Path | None = None
    curve_server_key: Path | None = None
    curve_allow: Path | None = None


def split_bind(bind: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 in brackets allowed) for the HTTP server."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        from .exceptions import ConfigError

        raise ConfigError(f"bad HTTP address {bind!r}: expected HOST:PORT with a port of 0-65535, "
                          "e.g. 0.0.0.0:8000")
    return host.strip("[]") or "0.0.0.0", int(port)


# --- keys -----------------------------------------------------------------

def parse_keys(text: str, origin: str) -> tuple[bytes, ...]:
    """Parse one or more Fernet keys (comma- or newline-separated) from ``origin``."""
    parts = [p.strip() for p in text.replace(",", "\n").splitlines()]
    parts = [p for p in parts if p and not p.startswith("#")]
    if not parts:
        raise KeyError_(f"{origin} holds no key; {KEY_FIX}")
    keys = []
    for i, part in enumerate(parts, 1):
        try:
            raw = base64.urlsafe_b64decode(part.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raw = b""
        if len(part) != 44 or len(raw) != 32:
            # Never echo the key material: name only where it came from.
            raise KeyError_(
                f"key {i} in {origin} is not a Fernet key (44 url-safe base64 characters); {KEY_FIX}"
            )
        keys.append(part.encode("ascii"))
    return tuple(keys)


#: Anything shaped like a Fernet key: a file name holding one is never repeated in a message.
_KEY_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}=")


def _read_key_file(path: Path, origin: str) -> tuple[bytes, ...]:
    if _KEY_SHAPE.search(str(path)):
        # The key itself where its file's name belongs: saying which file is missing would
        # print the key (into the journal, under systemd).
        raise KeyError_(f"{origin} holds a key, not the name of a file; put the key in a file "
                        f"only its owner can read and name that file instead; {KEY_FIX}")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyError_(f"{origin} names {path}, which does not exist; {KEY_FIX}") from None
    except OSError as e:
        raise KeyError_(f"cannot read the key file {path} ({origin}): {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyError_(
            f"key file {path} ({origin}) is readable by group or others; run `chmod 600 {path}`"
        )
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KeyError_(f"cannot read the key file {path} ({origin}): {e}") from None
    return parse_keys(text, f"{path} ({origin})")


def load_keys(env: Mapping[str, str] | None = None) -> tuple[bytes, ...]:
    """Find the Fernet key(s) in the documented order; raise ``KeyError_`` with the fix."""
    env = os.environ if env is None else env
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / "etl-key").exists():
        return _read_key_file(Path(cred_dir) / "etl-key", "systemd credential etl-key")
    if env.get("ETL_ENCRYPTION_KEY_FILE"):
        return _read_key_file(Path(env["ETL_ENCRYPTION_KEY_FILE"]), "ETL_ENCRYPTION_KEY_FILE")
    if env.get("ETL_ENCRYPTION_KEY"):
        return parse_keys(env["ETL_ENCRYPTION_KEY"], "ETL_ENCRYPTION_KEY")
    raise KeyError_(
        "no encryption key: set ETL_ENCRYPTION_KEY_FILE (or ETL_ENCRYPTION_KEY, or the systemd "
        f"credential etl-key); {KEY_FIX}"
    )


def new_key() -> str:
    """Return a fresh Fernet key as text."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


def reload_sealer(current: Sealer, *, ttl: float, max_size: int) -> Sealer:
    """Re-read the key files (SIGHUP); keep ``current`` and log why if they are unusable."""
    import logging

    from .wire import Sealer

    log = logging.getLogger("infraetl.keys")
    try:
        keys = load_keys()
    except KeyError_ as e:
        log.error("SIGHUP: keeping the old keys: %s", e)
        return current
    log.info("SIGHUP: re-read %d key(s)", len(keys))
    return Sealer(keys, ttl=ttl, max_size=max_size)


def trusted_addresses(value: str) -> frozenset[str]:
    """The addresses of ``--http-trusted`` as clients show up (an IPv4 one in both forms an
    IPv6 socket or an IPv4 one gives it); ValueError names a bad one."""
    import ipaddress

    out: set[str] = set()
    for part in filter(None, (p.strip() for p in value.split(","))):
        try:
            ip = ipaddress.ip_address(part)
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address") from None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # "::ffff:127.0.0.1", as a dual-stack socket names an IPv4 client
        out.add(str(ip))
        if ip.version == 4:
            out.add(f"::ffff:{ip}")
    return frozenset(out)
