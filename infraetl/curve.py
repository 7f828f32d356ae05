"""Optional ZeroMQ CURVE transport security (off unless key files are given).

Fernet already seals every message end to end; CURVE adds what Fernet
cannot: peers that are not on the operator's list cannot even connect, so
an unlisted host cannot deliver a single frame (ZAP refuses the handshake),
and traffic metadata is encrypted. Key pairs are the ZeroMQ certificate
files ``infraetl-ctl keygen --curve DIR`` writes (``NAME.key`` public,
``NAME.key_secret`` secret); the allow-list is a directory of public
``.key`` files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .exceptions import ConfigError

logger = logging.getLogger(__name__)

_authenticators: dict[int, ThreadAuthenticator] = {}


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the CURVE key file {path}: {e}") from None
    if secret and not secret_key:
        raise ConfigError(f"{path} holds no secret key; pass the .key_secret file")
    return public, secret_key


def apply_server(sock: zmq.Socket, secret: Path | None, allow: Path | None, ctx: zmq.Context) -> None:
    """Make ``sock`` a CURVE server that admits only the public keys in ``allow``."""
    if secret is None:
        return
    if allow is None or not Path(allow).is_dir():
        raise ConfigError("CURVE needs --curve-allow DIR, a directory of the peers' public .key files")
    public, secret_key = _load(Path(secret), secret=True)
    auth = _authenticators.get(id(ctx))
    if auth is None:
        auth = ThreadAuthenticator(ctx, log=logging.getLogger("infraetl.zap"))
        auth.start()
        auth.configure_curve(domain="*", location=str(allow))
        _authenticators[id(ctx)] = auth
    sock.curve_secretkey = secret_key
    sock.curve_publickey = public
    sock.curve_server = True
    sock.zap_domain = b"infraetl"


def apply_client(sock: zmq.Socket, secret: Path | None, server_key: Path | None) -> None:
    """Make ``sock`` a CURVE client of the server whose public key file is ``server_key``."""
    if secret is None:
        return
    if server_key is None:
        raise ConfigError("CURVE needs --curve-server-key FILE, the consumer's or producer's public .key")
    public, secret_key = _load(Path(secret), secret=True)
    server_public, _ = _load(Path(server_key), secret=False)
    sock.curve_secretkey = secret_key
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


def stop_authenticators() -> None:
    """Stop ZAP threads (at daemon exit)."""
    for auth in _authenticators.values():
        auth.stop()
    _authenticators.clear()


def create_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``directory`` (secret mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def describe(*paths: Any) -> str:
    """'on' or 'off' for logs."""
    return "on" if any(paths) else "off"
