"""Password strength estimators: the original charset entropy, Shannon, zxcvbn.

The charset estimator, the complexity classes, the "strong" rule and the
"most secure" score are the original project's definitions, kept exactly so
that its numbers and ours can be compared (the few deviations are named in
each docstring). zxcvbn (``zxcvbn-rs-py``, ~14x faster than the Python
port, and it does not crash on ``""``) adds a guess-based score 0–4.

zxcvbn is the expensive part (50–200 µs a call, growing faster than linearly
with length), so the audit runs it once per distinct password (in
``pwinfo``'s bounded process-wide cache), without user inputs, on at most
:data:`ZXCVBN_CAP` characters, with its guesses capped at the score-4
threshold. The audit lowers the score itself when it finds personal
information (see ``audit``), instead of calling zxcvbn per user with user
inputs, which would cost ~170 µs for every user.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable

import zxcvbn_rs_py

#: Character pools of the original charset estimator and their sizes. A pool is present when a
#: character passes the original's own test: ``str.islower``, ``isupper``, ``isdigit`` (Unicode:
#: a Cyrillic lower-case letter is lower case, an Arabic-Indic digit a digit), membership of
#: ``string.punctuation``, ``str.isspace``. The sets are those tests on ASCII, for the fast path.
POOLS: tuple[tuple[str, frozenset[str], int], ...] = (
    ("lower", frozenset(string.ascii_lowercase), 26),
    ("upper", frozenset(string.ascii_uppercase), 26),
    ("digit", frozenset(string.digits), 10),
    ("punctuation", frozenset(string.punctuation), 32),
    ("space", frozenset(c for c in map(chr, range(128)) if c.isspace()), 1),
)
_POOL_TESTS = (str.islower, str.isupper, str.isdigit, string.punctuation.__contains__, str.isspace)
#: The four classes of the "strong" rule and of the "most secure" score.
CLASSES: tuple[str, ...] = ("lower", "upper", "digit", "punctuation")
#: Original complexity classes, plus ``empty`` (our deviation, see complexity()).
COMPLEXITY: tuple[str, ...] = (
    "lowercase_only", "numbers_only", "letters_and_numbers", "includes_symbols", "empty",
)
STRONG_BITS = 50.0
STRONG_CLASSES = 3
#: Longest prefix zxcvbn sees; beyond it the cost explodes (~1.4 ms at 32).
ZXCVBN_CAP = 32
#: First look: a random prefix this long already scores 4 (~1e11 guesses);
#: measured cheapest of 10–16 on random 8–16 character passwords.
ZXCVBN_PREFIX = 11
#: log10 of zxcvbn's score-4 threshold; guesses beyond it count as this.
GUESSES_CAP_LOG10 = 10.0
#: Distinct passwords the audit caches (``pwinfo``; ~0.6 KB each: ~10 MB full). Common
#: passwords recur far more often than 16k distinct others pass, so they stay cached.
CACHE_SIZE = 1 << 14

_LOWER_ONLY = re.compile(r"[a-z]+")
_NUMBERS_ONLY = re.compile(r"\d+")
_SYMBOL = re.compile(r"[^\w]")
_POOL_BITS = {name: 1 << i for i, (name, _, _) in enumerate(POOLS)}
_CLASS_MASK = sum(_POOL_BITS[c] for c in CLASSES)
_SIZE_BY_MASK = tuple(
    sum(size for i, (_, _, size) in enumerate(POOLS) if m >> i & 1) for m in range(1 << len(POOLS))
)
_POOL_SETS = tuple((_POOL_BITS[name], chars) for name, chars, _ in POOLS)
_CLASSES_BY_MASK = tuple(
    tuple(c for c in CLASSES if m & _POOL_BITS[c]) for m in range(1 << len(POOLS))
)


def pool_mask(password: str) -> int:
    """Bit set of the :data:`POOLS` present in ``password`` (bit i = POOLS[i])."""
    chars = set(password)
    mask = 0
    if password.isascii():
        for bit, pool in _POOL_SETS:
            if not chars.isdisjoint(pool):
                mask |= bit
        return mask
    for i, test in enumerate(_POOL_TESTS):
        if any(map(test, chars)):
            mask |= 1 << i
    return mask


def classes_of(mask: int) -> tuple[str, ...]:
    """The classes of :data:`CLASSES` in a :func:`pool_mask`, in that order."""
    return _CLASSES_BY_MASK[mask]


def classes(password: str) -> tuple[str, ...]:
    """The classes of :data:`CLASSES` present in ``password``, in that order."""
    return _CLASSES_BY_MASK[pool_mask(password)]


def class_count(mask: int) -> int:
    """How many of the four classes a :func:`pool_mask` holds."""
    return (mask & _CLASS_MASK).bit_count()


def charset_size(password: str) -> int:
    """R of the original estimator: 26 + 26 + 10 + 32 + 1 for the pools present."""
    return _SIZE_BY_MASK[pool_mask(password)]


def charset_bits(length: int, mask: int) -> float:
    """L·log2(R) for a length and a :func:`pool_mask`; 0.0 when R is 0."""
    size = _SIZE_BY_MASK[mask]
    return length * math.log2(size) if size else 0.0


def charset_entropy(password: str) -> float:
    """Original estimate L·log2(R); 0.0 when R is 0 (no character in any pool).

    Characters in none of the five pools (a CJK ideograph, an emoji) add nothing to R, and
    R == 0 gives 0.0, as in the original.
    """
    return charset_bits(len(password), pool_mask(password))


def shannon_entropy(password: str) -> float:
    """Shannon entropy of the password's own characters, in bits (per char × length)."""
    n = len(password)
    if n == 0:
        return 0.0
    # n·H = n·log2(n) − Σ k·log2(k) over the character counts k.
    counts = list(map(password.count, set(password)))
    return max(0.0, n * math.log2(n) - sum(k * math.log2(k) for k in counts))


def complexity(password: str) -> str:
    """Original class: lowercase_only, numbers_only, includes_symbols, letters_and_numbers.

    Deviation: ``""`` is ``empty`` (the original regexes do not match it,
    so it fell through to letters_and_numbers). ``\\d`` and ``\\w`` keep
    Python's Unicode meaning, as in the original.
    """
    if not password:
        return "empty"
    if _LOWER_ONLY.fullmatch(password):
        return "lowercase_only"
    if _NUMBERS_ONLY.fullmatch(password):
        return "numbers_only"
    if _SYMBOL.search(password):
        return "includes_symbols"
    return "letters_and_numbers"


def strong_of(mask: int, bits: float) -> bool:
    """The "strong" rule for a :func:`pool_mask` and charset bits."""
    return class_count(mask) >= STRONG_CLASSES and bits >= STRONG_BITS


def is_strong(password: str) -> bool:
    """Original rule: charset entropy ≥ 50 bits and at least 3 of the 4 classes."""
    mask = pool_mask(password)
    return strong_of(mask, charset_bits(len(password), mask))


def secure_score(password: str) -> int:
    """Original "most secure" score: length + 3 per class present."""
    return len(password) + 3 * class_count(pool_mask(password))


def zxcvbn_strength(password: str, user_inputs: Iterable[str] = ()) -> tuple[int, float]:
    """zxcvbn's score 0–4 and log10 of its guesses, capped at :data:`GUESSES_CAP_LOG10`, of the
    first :data:`ZXCVBN_CAP` characters.

    The cap is the score-4 threshold (1e10 guesses): past it zxcvbn's figure says only "at
    least this", so every score-4 password counts 10 in the mean. That makes the result the
    same whichever prefix proved the score 4, which lets a password longer than
    :data:`ZXCVBN_PREFIX` take the cheaper path:

    - whose first ZXCVBN_PREFIX characters hold 3 or 4 classes (random-looking: such a prefix
      usually scores 4 by itself), that prefix is scored first, and a 4 is the answer (in
      zxcvbn's model more characters never mean fewer guesses);
    - otherwise (words and digits: the prefix rarely scores 4) the ZXCVBN_CAP characters are
      scored at once, saving the call that would fail.

    ``""`` is (0, 0.0) without calling zxcvbn.
    """
    if not password:
        return 0, 0.0
    inputs = [u for u in user_inputs if u]
    if len(password) > ZXCVBN_PREFIX:
        prefix = password[:ZXCVBN_PREFIX]
        if class_count(pool_mask(prefix)) >= 3:
            r = zxcvbn_rs_py.zxcvbn(prefix, user_inputs=inputs)
            if int(r.score) == 4:
                return 4, GUESSES_CAP_LOG10
    r = zxcvbn_rs_py.zxcvbn(password[:ZXCVBN_CAP], user_inputs=inputs)
    return int(r.score), min(float(r.guesses_log10), GUESSES_CAP_LOG10)
