"""Fernet tokens, byte for byte, with a SIMD base64.

A Fernet token (https://github.com/fernet/spec) is the url-safe base64 of
``0x80 || timestamp (8 bytes, big-endian) || IV (16) || AES-128-CBC ciphertext
(PKCS7) || HMAC-SHA256 of everything before it``. This module makes and
opens exactly those tokens with the same primitives ``cryptography.fernet``
uses (its AES, CBC, PKCS7 and HMAC), and the same checks in the same order.
The difference is the base64. The standard library's decoder takes ~1 ms
for a 500-user batch's ~210 KB token (measured: 0.97 ms of Fernet's 1.6 ms
``decrypt``); ``pybase64`` takes 0.024 ms, and encoding drops from 0.38 to
0.015 ms. It decodes more strictly than ``cryptography``, which also takes a
token with characters outside the alphabet (skipped), standard-alphabet ``+/``
or anything after the padding (ignored): those are refused here
(``InvalidToken``), never produced by a sealer, and Python itself warns that it
will refuse some of them. Like ``cryptography``, it takes a last character whose
unused low bits are set (``MB==`` for ``MA==``): the bytes are the same, the
HMAC checks them, and nothing here tells copies of a frame apart by their last
character (a review found the docstring claimed "canonical"). ``tests/test_wire.py``
holds the two implementations to each other: tokens open both ways, and we
refuse what ``cryptography`` refuses plus only the encodings named above.
"""

from __future__ import annotations

import binascii
import os

import pybase64
from cryptography.exceptions import InvalidSignature
from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hmac import HMAC

__all__ = ["FernetKey", "InvalidToken"]

_PKCS7 = padding.PKCS7(128)
_SHA256 = hashes.SHA256()
_VERSION = 0x80
_HEAD = 9           # version + timestamp
_IV = 16
_MAC = 32


class FernetKey:
    """One Fernet key: seal and open tokens (see the module doc)."""

    def __init__(self, key: bytes | str) -> None:
        try:
            raw = pybase64.urlsafe_b64decode(key)
        except (binascii.Error, ValueError, TypeError) as e:
            raise ValueError("Fernet key must be 32 url-safe base64-encoded bytes.") from e
        if len(raw) != 32:
            raise ValueError("Fernet key must be 32 url-safe base64-encoded bytes.")
        self._signing = raw[:16]
        self._aes = algorithms.AES(raw[16:])

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        """The token of ``data`` sealed at ``current_time`` (seconds since the epoch)."""
        iv = os.urandom(_IV)
        padder = _PKCS7.padder()
        padded = padder.update(data) + padder.finalize()
        encryptor = Cipher(self._aes, modes.CBC(iv)).encryptor()
        parts = (bytes((_VERSION,)) + current_time.to_bytes(8, "big") + iv
                 + encryptor.update(padded) + encryptor.finalize())
        mac = HMAC(self._signing, _SHA256)
        mac.update(parts)
        return pybase64.urlsafe_b64encode(parts + mac.finalize())

    def decrypt(self, token: bytes) -> tuple[int, bytes]:
        """(timestamp, plaintext) of an authentic token; ``InvalidToken`` for anything else.

        The caller judges the timestamp (it is covered by the HMAC checked here).
        """
        if not isinstance(token, bytes):
            raise TypeError("token must be bytes")
        if b"+" in token or b"/" in token:  # the standard alphabet: pybase64 would still take it
            raise InvalidToken
        try:
            data = pybase64.b64decode(token, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise InvalidToken from None
        if len(data) < _HEAD or data[0] != _VERSION:
            raise InvalidToken
        view = memoryview(data)
        mac = HMAC(self._signing, _SHA256)
        mac.update(view[:-_MAC])
        try:
            mac.verify(data[-_MAC:])
        except InvalidSignature:
            raise InvalidToken from None
        decryptor = Cipher(self._aes, modes.CBC(data[_HEAD:_HEAD + _IV])).decryptor()
        padded = decryptor.update(view[_HEAD + _IV:-_MAC])
        try:
            padded += decryptor.finalize()
            unpadder = _PKCS7.unpadder()
            plain = unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            raise InvalidToken from None
        return int.from_bytes(data[1:_HEAD], "big"), plain
