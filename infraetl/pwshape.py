"""The shape of a password, Pipal-style: masks, lengths, charsets, digits, base word.

Also the display mask (:func:`mask`) used wherever a password-derived
string is shown or stored: first and last character and the length only.
Nothing here is reversible except :func:`base_word` and :func:`deleet`,
whose results the audit only ever keeps as fingerprints and masks.
"""

from __future__ import annotations

import re
import string

#: Passwords this short are shown fully starred (first + last would be half of it).
MASK_MIN_REVEAL = 5
#: Stars shown at most; longer passwords are shown as this many (and the length).
MASK_MAX_STARS = 30
#: Hashcat masks of longer passwords are all lumped as :data:`LONG_MASK`.
HASHCAT_MAX_LEN = 24
LONG_MASK = f"(over {HASHCAT_MAX_LEN} characters)"
#: Length buckets are exact up to here, then ``">N"``.
MAX_LENGTH_BUCKET = 32
#: Base words shorter than this are not counted (Pipal's "ab", "x" are noise).
BASE_MIN_LEN = 3

#: Common leet substitutions, undone before name and base-word checks.
LEET = str.maketrans({
    "4": "a", "@": "a", "8": "b", "3": "e", "6": "g", "9": "g", "1": "i",
    "!": "i", "|": "l", "0": "o", "5": "s", "$": "s", "7": "t", "+": "t", "2": "z",
})
_HASHCAT = {c: "?l" for c in string.ascii_lowercase}
_HASHCAT.update({c: "?u" for c in string.ascii_uppercase})
_HASHCAT.update({c: "?d" for c in string.digits})
_HASHCAT.update({c: "?s" for c in string.punctuation + " "})
# ASCII control characters are not hashcat classes either.
_HASHCAT_TABLE = str.maketrans({chr(i): _HASHCAT.get(chr(i), "?b") for i in range(128)})
_LOWER = frozenset(string.ascii_lowercase)
_UPPER = frozenset(string.ascii_uppercase)
_DIGITS = frozenset(string.digits)
_DIGIT_RUN = re.compile(r"[0-9]+")
_NOT_LETTERS = "".join(chr(i) for i in range(128) if chr(i) not in string.ascii_letters)


def mask(password: str) -> str:
    """Display form: ``"secret"`` → ``"s****t"``; ≤ 4 chars all stars; ``""`` → ``"(empty)"``.

    The stars keep the length up to :data:`MASK_MAX_STARS`; a longer password shows that many
    and an ellipsis, ``"Z****…q"`` (one of 245 characters looked like one of 32: a review).

    Idempotent on non-empty output (``mask(mask(p)) == mask(p)``), so
    masked labels can be merged with revealed ones by masking again.
    """
    n = len(password)
    if n == 0:
        return "(empty)"
    if n < MASK_MIN_REVEAL:
        return "*" * n
    if n - 2 > MASK_MAX_STARS:
        return f"{password[0]}{'*' * MASK_MAX_STARS}…{password[-1]}"
    return f"{password[0]}{'*' * (n - 2)}{password[-1]}"


def hashcat_mask(password: str) -> str:
    """Hashcat mask (``?l?l?d``); ``?b`` stands for a non-ASCII character."""
    if len(password) > HASHCAT_MAX_LEN:
        return LONG_MASK
    if password.isascii():
        return password.translate(_HASHCAT_TABLE)
    get = _HASHCAT.get
    return "".join([get(c, "?b") for c in password])


def length_bucket(password: str) -> str:
    """Length as a bucket label: ``"0"``..``"32"``, then ``">32"``."""
    n = len(password)
    return str(n) if n <= MAX_LENGTH_BUCKET else f">{MAX_LENGTH_BUCKET}"


def charset_name(password: str) -> str:
    """Pipal's charset name (``loweralphanum``, ``mixedalphaspecialnum``…); ``empty``.

    Classes are exclusive here (Pipal counts overlapping regexes); anything
    not an ASCII letter or digit is "special".
    """
    if not password:
        return "empty"
    chars = set(password)
    lower = not chars.isdisjoint(_LOWER)
    upper = not chars.isdisjoint(_UPPER)
    digit = not chars.isdisjoint(_DIGITS)
    special = not (password.isascii() and password.isalnum())
    letters = "mixedalpha" if lower and upper else "loweralpha" if lower else (
        "upperalpha" if upper else "")
    if letters:
        return letters + ("special" if special else "") + ("num" if digit else "")
    if special:
        return "specialnum" if digit else "special"
    return "numeric"


def trailing_digits(password: str) -> str:
    """Pattern of the trailing digit run: none, 1, 2, 3, 4, 4 year-like, 5+, all digits."""
    if not password:
        return "empty"
    stripped = password.rstrip(string.digits)
    k = len(password) - len(stripped)
    if not stripped:
        return "all digits"
    if k == 4:
        tail = password[-4:]
        return "4 year-like" if tail[:2] in ("19", "20") else "4"
    return ("none", "1", "2", "3")[k] if k < 4 else "5+"


def digit_runs(password: str) -> tuple[str, ...]:
    """The maximal runs of ASCII digits, in order (``"ab12c345"`` → ``("12", "345")``)."""
    return tuple(_DIGIT_RUN.findall(password))


def deleet(lowered: str) -> str:
    """Undo common leet substitutions of a lowercased string (``p@ssw0rd`` → ``password``)."""
    return lowered.translate(LEET)


def base_word(password: str) -> str:
    """Pipal's base word: lowercased, leading/trailing non-letters cut, de-leeted; "" if < 3.

    Digits and symbols are cut *before* de-leeting, or ``p@ss1`` would
    become ``passi``.
    """
    word = password.lower().strip(_NOT_LETTERS)
    word = deleet(word)
    return word if len(word) >= BASE_MIN_LEN else ""
