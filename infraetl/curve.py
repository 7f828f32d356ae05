"""Optional ZeroMQ CURVE transport security (off unless key files are given).

Fernet already seals every message end to end; CURVE adds what Fernet
cannot: peers that are not on the operator's list cannot even connect, so
an unlisted host cannot deliver a single frame (the ZAP handler refuses the
handshake before any message exists), and traffic metadata is encrypted.

Key pairs are ZeroMQ certificate files that ``infraetl-ctl keygen --curve
DIR --name NAME`` writes (``NAME.key`` public, ``NAME.key_secret`` secret,
mode 0600); the allow-list is a directory of public ``.key`` files. The
allow-list is re-read when the directory changes, so admitting a new peer
needs no restart on this side; but libzmq never retries a connection whose
handshake was refused, so a peer refused before must itself be restarted.
Removing a key refuses the peer's next connection; restart this daemon to
cut a session that is already up.

The ZAP handler (RFC 27) is a small thread of our own rather than pyzmq's
``ThreadAuthenticator``: it ends by itself when the context terminates, so a
daemon's ``ctx.term()`` never waits for it, and it logs refusals.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from .daemon import RateLimitedLog
from .exceptions import ConfigError

logger = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"infraetl"

_handlers: dict[int, ZapHandler] = {}
_lock = threading.Lock()


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
        mode = path.stat().st_mode
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the CURVE key file {path}: {e}") from None
    if secret and not secret_key:
        raise ConfigError(f"{path} holds no secret key; pass the .key_secret file")
    if secret and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"CURVE secret key file {path} is readable by group or others; run `chmod 600 {path}`")
    return public, secret_key


def load_allowed(directory: Path) -> set[bytes]:
    """The public keys (Z85) of every ``*.key`` file in ``directory``."""
    keys: set[bytes] = set()
    for path in sorted(Path(directory).glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(str(path))
        except (OSError, ValueError) as e:
            logger.warning("ignoring %s in the CURVE allow-list: %s", path, e)
            continue
        if public:
            keys.add(public)
    return keys


class ZapHandler(threading.Thread):
    """Answers libzmq's ZAP requests for one context: CURVE keys in ``allow`` pass."""

    def __init__(self, ctx: zmq.Context, allow: Path) -> None:
        super().__init__(name="infraetl-zap", daemon=True)
        self.ctx = ctx
        self.allow = Path(allow)
        self.keys: set[bytes] = set()
        self.denied = 0
        self._stamp: tuple[int, int] | None = None
        self._stop_flag = threading.Event()
        self._bound = threading.Event()
        self._error: Exception | None = None
        # One warning a minute for all refused keys together, with a count of the others: a
        # line (and a dict entry) for every new key let anyone fill the journal and the
        # daemon's memory by connecting with fresh keys (a review: 180 a second).
        self._warn = RateLimitedLog(logger)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the allow-list if the directory changed since the last look."""
        try:
            st = self.allow.stat()
        except OSError as e:
            # Once a minute at most: it is looked at on every handshake (a peer retrying flooded
            # the journal; a review).
            self._warn.warning("unreadable", "CURVE allow-list %s unreadable (%s): admitting nobody", self.allow, e)
            self.keys, self._stamp = set(), None
            return
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp == self._stamp:
            return
        self.keys, self._stamp = load_allowed(self.allow), stamp
        if self.keys:
            logger.info("CURVE: %d public key(s) admitted from %s", len(self.keys), self.allow)
        else:
            logger.warning("CURVE: no public .key files in %s: no peer can connect", self.allow)

    def start_and_wait(self) -> None:
        """Start the thread; return once it answers ZAP (before any socket can accept)."""
        self.start()
        self._bound.wait(5)
        if self._error is not None or not self._bound.is_set():
            raise ConfigError(f"cannot start the CURVE authenticator: {self._error or 'timeout'}")

    def stop(self) -> None:
        """Ask the thread to end and wait for it."""
        self._stop_flag.set()
        if self.is_alive():
            self.join(2)

    def run(self) -> None:
        try:
            sock = self.ctx.socket(zmq.REP)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            self._error = e
            self._bound.set()
            return
        self._bound.set()
        try:
            while not self._stop_flag.is_set():
                if not sock.poll(250):
                    continue
                request = sock.recv_multipart()
                try:
                    reply = self.answer(request)
                except Exception:  # never die: no handler would mean no check at all
                    logger.exception("CURVE: refusing a peer after an error in the authenticator")
                    reply = [b"1.0", request[1] if len(request) > 1 else b"", b"500", b"error", b"", b""]
                sock.send_multipart(reply)
        except zmq.ZMQError as e:
            # ETERM: the daemon is shutting down (let ctx.term() finish); ENOTSOCK:
            # ctx.destroy() closed our socket. Anything else is worth a line.
            if e.errno not in (zmq.ETERM, zmq.ENOTSOCK):
                logger.error("CURVE authenticator stopped: %s", e)
        finally:
            sock.close(linger=0)

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The ZAP reply (RFC 27) to one request."""
        if len(request) < 6 or request[0] != b"1.0":
            return [b"1.0", request[1] if len(request) > 1 else b"", b"500", b"bad request", b"", b""]
        request_id, address, mechanism = request[1], request[3], request[5]
        credentials = request[6:]
        if mechanism == b"CURVE" and len(credentials) == 1:
            public = z85.encode(credentials[0])
            self.refresh()
            if public in self.keys:
                logger.debug("CURVE peer %s admitted", address.decode(errors="replace"))
                return [b"1.0", request_id, b"200", b"OK", public, b""]
            self.denied += 1
            self._warn.warning("refused", "CURVE: refused peer %s: public key %s is not in %s",
                               address.decode(errors="replace"), public.decode(), self.allow)
            return [b"1.0", request_id, b"400", b"public key not admitted", b"", b""]
        self.denied += 1
        return [b"1.0", request_id, b"400", b"CURVE required", b"", b""]


def apply_server(sock: zmq.Socket, secret: Path | None, allow: Path | None, ctx: zmq.Context) -> None:
    """Make ``sock`` a CURVE server that admits only the public keys in ``allow``.

    A no-op without ``secret``. Call it before ``bind``: the authenticator
    must answer before the first peer connects.
    """
    if secret is None:
        return
    if allow is None or not Path(allow).is_dir():
        raise ConfigError("CURVE needs --curve-allow DIR, a directory of the peers' public .key files")
    public, secret_key = _load(Path(secret), secret=True)
    with _lock:
        for key in [k for k, h in _handlers.items() if h.ident is not None and not h.is_alive()]:
            del _handlers[key]  # its context was terminated
        handler = _handlers.get(id(ctx))
        if handler is None:
            handler = ZapHandler(ctx, Path(allow))
            handler.start_and_wait()
            _handlers[id(ctx)] = handler
        elif handler.allow != Path(allow):
            raise ConfigError(f"one allow-list per process: {handler.allow} is already in use, not {allow}")
    sock.curve_secretkey = secret_key
    sock.curve_publickey = public
    sock.curve_server = True
    sock.zap_domain = ZAP_DOMAIN
    # Fail closed: without an answering ZAP handler libzmq would admit any key.
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


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


def denied() -> int:
    """How many handshakes the authenticators of this process refused."""
    return sum(h.denied for h in _handlers.values())


def stop_authenticators() -> None:
    """Stop the ZAP threads (at daemon exit; ``ctx.term()`` also ends them)."""
    with _lock:
        for handler in _handlers.values():
            handler.stop()
        _handlers.clear()


_SECRET_NOTE = "#   ZeroMQ CURVE **Secret** Certificate\n#   DO NOT PROVIDE THIS FILE TO OTHER USERS.\n"
_PUBLIC_NOTE = ("#   ZeroMQ CURVE Public Certificate\n"
                "#   Exchange securely, or use a secure mechanism to verify the contents\n")


def _certificate(note: str, public: bytes, secret: bytes | None) -> str:
    lines = [f"#   infraetl-ctl keygen --curve, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", note.rstrip(), "",
             "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def create_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``directory`` (secret created 0600).

    Refuses to overwrite an existing pair: a secret key in use is not
    something to lose to a repeated command.
    """
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ConfigError(f"--name {name!r} is not a file name (no '/', not empty)")
    directory = Path(directory)
    public_path, secret_path = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public_path, secret_path):
        if path.exists():
            raise ConfigError(f"{path} exists; remove it first or choose another --name")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        public, secret = zmq.curve_keypair()
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_certificate(_SECRET_NOTE, public, secret))
        fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(_certificate(_PUBLIC_NOTE, public, None))
    except OSError as e:
        raise ConfigError(f"cannot write the key pair into {directory}: {e.strerror or e}") from None
    return public_path, secret_path
