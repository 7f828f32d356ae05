"""What the audit knows about one password, computed once and cached; fingerprints.

:func:`password_info` runs every per-password estimator (``entropy``,
``pwshape``, zxcvbn) once per distinct password in a bounded process-wide
LRU: API users share a few thousand common passwords, so a warm cache
turns the audit's cost into per-user substring tests. The cache lives in
memory only; nothing here is written anywhere.

:func:`fingerprint` is the only form in which a password (or a base word)
leaves the process: HMAC-SHA256 under a sub-key of the Fernet key,
truncated to 12 bytes. Without the key it cannot be reversed or even
checked against a guess. The consumer keeps that sub-key across key
rotations (``consumer.fingerprint_secret``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import sys
from functools import lru_cache
from hashlib import sha256
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from infraetl import entropy, pwshape
from infraetl.exceptions import KeyError_
from infraetl.personal import MIN_PHONE_RUN, NO_TOKEN

FP_INFO = b"infraetl password fingerprint v1"
FP_BYTES = 12
#: Entropy histogram: 10-bit bins, the last one is "200+".
HIST_STEP, HIST_BINS = 10, 21
#: Passwords longer than this are analysed but not cached (bounded memory).
CACHE_MAX_LEN = 256
#: Domain separation: a base word's fingerprint never equals a password's.
BASE_DOMAIN = "\x00base\x00"
_KEYED: dict[bytes, hmac.HMAC] = {}
T = TypeVar("T")


def fingerprint_key(fernet_key_bytes: bytes) -> bytes:
    """The fingerprint sub-key: HKDF-SHA256 (info :data:`FP_INFO`) of the raw Fernet key.

    Accepts the 44-character url-safe base64 key (as Fernet takes it) or
    its 32 raw bytes; both give the same sub-key.
    """
    raw = bytes(fernet_key_bytes)
    if len(raw) != 32:
        try:
            raw = base64.urlsafe_b64decode(raw.strip())
        except (binascii.Error, ValueError):
            raw = b""
    if len(raw) != 32:
        raise KeyError_("the Fernet key is malformed: expected 32 bytes, url-safe base64")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=FP_INFO).derive(raw)


def fingerprint(fp_key: bytes, text: str) -> bytes:
    """Keyed, irreversible fingerprint of a password: HMAC-SHA256, first 12 bytes."""
    keyed = _KEYED.get(fp_key)
    if keyed is None:
        if len(_KEYED) >= 8:
            _KEYED.clear()
        keyed = _KEYED[fp_key] = hmac.new(fp_key, digestmod=sha256)
    # Copying the keyed state skips hashing the key pads again (~30% faster).
    h = keyed.copy()
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()[:FP_BYTES]


class PasswordInfo:
    """Everything the audit needs that depends on the password alone."""

    __slots__ = (
        "agg", "base", "base_masked", "charset_milli", "classes", "deleeted", "guesses_milli",
        "hashcat", "keyed", "leet_form", "long_runs", "lower", "masked", "runs",
        "secure_score", "shannon_milli", "strong", "tail", "tail2", "weak", "zx_score",
    )

    def __init__(self, password: str) -> None:
        # Tens of thousands of these live in the cache: every derived string equal to one
        # already held is that object, and the small-domain ones (masks, the agg tuple) are
        # shared between passwords (see :func:`_shared`).
        pwl = password.lower()
        pwl = self.lower = password if pwl == password else pwl
        deleeted = pwshape.deleet(pwl)
        self.deleeted = pwl if deleeted == pwl else deleeted
        # "" when de-leeting changes nothing: no token is in "".
        self.leet_form = "" if self.deleeted is pwl else self.deleeted
        self.runs = pwshape.digit_runs(password)
        self.tail = self.runs[-1] if self.runs and password.endswith(self.runs[-1]) else ""
        self.tail2 = self.tail if len(self.tail) == 2 and len(password) > 2 else NO_TOKEN
        self.long_runs = " ".join(r for r in self.runs if len(r) >= MIN_PHONE_RUN)
        pools = entropy.pool_mask(password)
        bits = entropy.charset_bits(len(password), pools)
        self.strong = entropy.strong_of(pools, bits)
        self.weak = not self.strong
        self.classes = entropy.classes_of(pools)
        self.secure_score = len(password) + 3 * len(self.classes)
        # Sums in integer milli-bits merge exactly, in any order.
        self.charset_milli = round(bits * 1000)
        self.shannon_milli = round(entropy.shannon_entropy(password) * 1000)
        got = _PRECOMPUTED.pop(password, None)
        score, guesses = got if got is not None else entropy.zxcvbn_strength(password)
        self.zx_score = score
        self.guesses_milli = round(guesses * 1000)
        self.hashcat = _shared(pwshape.hashcat_mask(password))
        base = pwshape.base_word(password)
        self.base = pwl if base == pwl else base
        self.base_masked = _shared(pwshape.mask(base))
        self.masked = _shared(pwshape.mask(password)) if password else ""
        #: The small-domain figures, counted together (one dict update per password).
        self.agg = _shared((entropy.complexity(password), self.strong,
                            min(int(bits // HIST_STEP), HIST_BINS - 1), score,
                            sys.intern(pwshape.length_bucket(password)),
                            sys.intern(pwshape.charset_name(password)),
                            pwshape.trailing_digits(password)))
        #: (fp_key, fingerprint, base-word fingerprint) for the last key used; one
        #: tuple, so a thread switching keys never pairs a key with another's fp.
        self.keyed: tuple[bytes, bytes, bytes | None] = (b"", b"", None)

    def fingerprints(self, password: str, fp_key: bytes) -> tuple[bytes, bytes, bytes | None]:
        """(fp_key, fingerprint, base-word fingerprint or None), cached for the last key."""
        keyed = self.keyed
        if keyed[0] is not fp_key:
            base_fp = fingerprint(fp_key, BASE_DOMAIN + self.base) if self.base else None
            keyed = self.keyed = (fp_key, fingerprint(fp_key, password), base_fp)
        return keyed


#: zxcvbn results computed ahead by the consumer's helper process (``scorer``), taken once.
_PRECOMPUTED: dict[str, tuple[int, float]] = {}


#: zxcvbn results offered and not used yet, at most (past it, those not used go all at once).
PRECOMPUTED_CAP = 1 << 15


def add_strengths(scores: dict[str, tuple[int, float]]) -> None:
    """Offer zxcvbn results computed elsewhere (by the same function) for the batches to come.

    Each is taken once, when its password is first seen. They add to those offered before (a
    later batch's may come with an earlier one's: replacing them had that batch score every
    password again in-process). Those never taken (passwords cached already: the helper is
    asked about every distinct one) go all at once past :data:`PRECOMPUTED_CAP`: dropping the
    oldest one by one walked the dict's deleted slots each time, a few µs a user.
    """
    if len(_PRECOMPUTED) + len(scores) > PRECOMPUTED_CAP:
        _PRECOMPUTED.clear()
    _PRECOMPUTED.update(scores)


_SHARED: dict[Any, Any] = {}
#: Distinct small values shared by :func:`_shared` before the table starts over.
SHARED_CAP = 1 << 16


def _shared(value: T) -> T:
    """One object per distinct value (masks, agg tuples): a bounded ``sys.intern`` for any hashable."""
    got = _SHARED.get(value)
    if got is None:
        if len(_SHARED) >= SHARED_CAP:
            _SHARED.clear()
        got = _SHARED[value] = value
    return got


@lru_cache(maxsize=entropy.CACHE_SIZE)
def _cached_info(password: str) -> PasswordInfo:
    return PasswordInfo(password)


def password_info(password: str) -> PasswordInfo:
    """The :class:`PasswordInfo` of ``password``, from a bounded process-wide LRU."""
    if len(password) > CACHE_MAX_LEN:
        return PasswordInfo(password)
    return _cached_info(password)


def password_infos(passwords: list[str]) -> list[PasswordInfo]:
    """:func:`password_info` of each (the common case in one C-level ``map``)."""
    if passwords and max(map(len, passwords)) > CACHE_MAX_LEN:
        return list(map(password_info, passwords))
    return list(map(_cached_info, passwords))
