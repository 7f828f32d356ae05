"""The password estimators: the original's definitions, Shannon, zxcvbn, Pipal shape."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infraetl import entropy, pwshape


@pytest.mark.parametrize(("password", "size"), [
    ("abc", 26),
    ("ABC", 26),
    ("123", 10),
    ("!?", 32),
    ("a b", 27),
    ("aB1!", 94),
    ("aB1! ", 95),
    ("", 0),
    ("üé", 26),  # lower case by str.islower, as in the original (was 0: ASCII pools only)
    ("ПАРОЛЬпароль1!", 94),
    ("\u0663\u0664", 10),  # Arabic-Indic digits are digits to str.isdigit
    ("a\u00a0b", 27),  # a no-break space is a space to str.isspace
    ("漢字", 0),  # in no pool
])
def test_charset_size_sums_the_pools_present(password: str, size: int) -> None:
    assert entropy.charset_size(password) == size


def test_charset_entropy_is_length_times_log2_of_pool() -> None:
    assert entropy.charset_entropy("abc") == pytest.approx(3 * math.log2(26))
    assert entropy.charset_entropy("aB1!xyz") == pytest.approx(7 * math.log2(94))
    assert entropy.charset_entropy("") == 0.0
    assert entropy.charset_entropy("漢") == 0.0  # R == 0: the original's 0.0


def test_the_charset_rules_are_the_originals_on_any_text() -> None:
    # The docs say the original's definitions are kept exactly; they were ASCII-only here, so
    # "Пароль123!" was weak where the original calls it strong (a review).
    import random

    from infraetl.bench_original import _entropy, _kinds

    rng = random.Random(8)
    alphabet = "aZ9!  \t\u00a0üÉПп\u0663²漢😀_-~"
    for _ in range(3000):
        pw = "".join(rng.choices(alphabet, k=rng.randint(0, 12)))
        assert entropy.charset_entropy(pw) == pytest.approx(_entropy(pw)), pw
        assert entropy.class_count(entropy.pool_mask(pw)) == _kinds(pw), pw
    assert entropy.is_strong("Пароль123!") and entropy.is_strong("ЯрославКиїв1")


@pytest.mark.parametrize(("password", "expected"), [
    ("abc", "lowercase_only"),
    ("123", "numbers_only"),
    ("\u0663\u0664\u0665", "numbers_only"),  # Python's \d is Unicode, as in the original
    ("abc123", "letters_and_numbers"),
    ("Abc", "letters_and_numbers"),  # [a-z]+ is lowercase only
    ("abc_1", "letters_and_numbers"),  # "_" is \w, so not a symbol
    ("a b", "includes_symbols"),
    ("p@ss", "includes_symbols"),
    ("", "empty"),  # our deviation: the original fell through to letters_and_numbers
])
def test_complexity_classes_follow_the_original_regexes(password: str, expected: str) -> None:
    assert entropy.complexity(password) == expected


@pytest.mark.parametrize(("password", "strong"), [
    ("Abcdef1!", True),  # 8 × log2(94) = 52.4 bits, 4 classes
    ("Abcdefg12", True),  # 9 × log2(62) = 53.6 bits, 3 classes
    ("Abcdef12", False),  # 8 × log2(62) = 47.6 bits: under 50
    ("abcdefghijklmnopq", False),  # 79.9 bits but one class
    ("abcdefgh12345!!!", True),  # lower, digit, punctuation
    ("Abc1!", False),
    ("", False),
])
def test_strong_needs_50_bits_and_three_classes(password: str, strong: bool) -> None:
    assert entropy.is_strong(password) is strong


def test_secure_score_is_length_plus_three_per_class() -> None:
    assert entropy.secure_score("Abc1!") == 5 + 4 * 3
    assert entropy.secure_score("abc") == 3 + 3
    assert entropy.secure_score("a b") == 3 + 3  # the space counts in R, not as a class
    assert entropy.classes("a b") == ("lower",)
    assert entropy.secure_score("") == 0


def test_shannon_entropy_in_bits() -> None:
    assert entropy.shannon_entropy("") == 0.0
    assert entropy.shannon_entropy("aaaa") == 0.0
    assert entropy.shannon_entropy("abcd") == pytest.approx(8.0)
    assert entropy.shannon_entropy("aabb") == pytest.approx(4.0)


def test_zxcvbn_scores_and_empty_password() -> None:
    assert entropy.zxcvbn_strength("") == (0, 0.0)
    assert entropy.zxcvbn_strength("password")[0] == 0
    assert entropy.zxcvbn_strength("Xk9#mQ2$vL7!pR4&")[0] == 4
    plain = entropy.zxcvbn_strength("edwardlambert1")
    told = entropy.zxcvbn_strength("edwardlambert1", ["edward", "lambert"])
    assert told[1] <= plain[1]


def test_zxcvbn_is_capped_on_long_passwords() -> None:
    t = time.perf_counter()
    score, guesses = entropy.zxcvbn_strength("correcthorse" * 50)
    assert time.perf_counter() - t < 0.5
    assert 0 <= score <= 4 and guesses > 0
    # A prefix that already scores 4 decides for the whole.
    assert entropy.zxcvbn_strength("Xk9#mQ2$vL7!" + "a" * 100)[0] == 4


def _full_strength(password: str) -> tuple[int, float]:
    """The reference: zxcvbn on the first ZXCVBN_CAP characters, guesses capped, one call."""
    import zxcvbn_rs_py

    r = zxcvbn_rs_py.zxcvbn(password[:entropy.ZXCVBN_CAP])
    return int(r.score), min(float(r.guesses_log10), entropy.GUESSES_CAP_LOG10)


def _synthetic_passwords(users: int) -> list[str]:
    from infraetl.sources import RunPlan, accept_all
    from infraetl.sources.synthetic import SyntheticSource

    plan = RunPlan(users=users, seed="zxcvbn-paths", batch_size=users)
    return list(dict.fromkeys(u["login"]["password"] for b in SyntheticSource().batches(plan, accept_all)
                              for u in b.users))


def test_zxcvbn_strength_is_the_same_whichever_prefix_decides() -> None:
    # The shortcut (an 11-character first look for random-looking passwords) must give what
    # one call on the whole capped password gives: long passwords of every shape, those the
    # first look decides and those it cannot, and the synthetic source's own (words with
    # years, names, random strong ones).
    passwords = ["correcthorsebatterystaple", "Xk9#mQ2$vL7!pR4&", "aaaaaaaaaaaaaaaaaaa",
                 "Password1234567", "P@ssw0rd!2024xyz", "1234567890123456", "ab12CD34ef56GH78",
                 "Summer2024!Summer2024!", "qwertyuiopasdfgh", "Tr0ub4dor&3x!", "nathanwilliams1998",
                 "Xk9#mQ2$vL7!" + "a" * 100, "edwardlambert1", "password", "x", "12345678"]
    passwords += [p for p in _synthetic_passwords(3000) if len(p) > entropy.ZXCVBN_PREFIX]
    assert len(passwords) > 200
    decided_by_prefix = 0
    for p in passwords:
        assert entropy.zxcvbn_strength(p) == _full_strength(p), p
        decided_by_prefix += len(p) > entropy.ZXCVBN_PREFIX and entropy.class_count(
            entropy.pool_mask(p[:entropy.ZXCVBN_PREFIX])) >= 3 and _full_strength(p)[0] == 4
    assert decided_by_prefix > 50  # the shortcut was really taken, and agreed


def test_zxcvbn_strength_makes_one_call_where_one_suffices(monkeypatch: pytest.MonkeyPatch) -> None:
    import zxcvbn_rs_py

    calls: list[str] = []
    real = zxcvbn_rs_py.zxcvbn

    def counted(password: str, **kw: object) -> object:
        calls.append(password)
        return real(password, **kw)

    monkeypatch.setattr(entropy.zxcvbn_rs_py, "zxcvbn", counted)
    assert entropy.zxcvbn_strength("Xk9#mQ2$vL7!pR4&") == (4, entropy.GUESSES_CAP_LOG10)
    assert calls == ["Xk9#mQ2$vL7!pR4&"[:entropy.ZXCVBN_PREFIX]]  # the random-looking prefix scored 4
    calls.clear()
    entropy.zxcvbn_strength("nathanwilliams1998")
    assert calls == ["nathanwilliams1998"]  # words: straight to the whole password
    calls.clear()
    assert entropy.zxcvbn_strength("password")[1] < entropy.GUESSES_CAP_LOG10
    assert calls == ["password"]


def test_password_info_is_computed_once_per_password_and_shares_small_values() -> None:
    from infraetl import pwinfo

    first = pwinfo.password_info("Unique-For-This-Test-1")
    hits = pwinfo._cached_info.cache_info().hits
    assert pwinfo.password_info("Unique-For-This-Test-1") is first
    assert pwinfo._cached_info.cache_info().hits == hits + 1
    assert (first.zx_score, first.guesses_milli / 1000) == pytest.approx(
        entropy.zxcvbn_strength("Unique-For-This-Test-1"), abs=1e-3)
    # Bounded memory: equal derived values are one object, not one per cached password.
    other = pwinfo.password_info("Uniquely-Odd-Passwrd-1")
    assert first.masked == other.masked and first.masked is other.masked
    assert first.agg == other.agg and first.agg is other.agg
    plain = pwinfo.password_info("already lowercase")
    assert plain.lower is plain.deleeted and plain.leet_form == ""


@pytest.mark.parametrize(("password", "masked"), [
    ("secret", "s****t"),
    ("soccer", "s****r"),
    ("abcde", "a***e"),
    ("abcd", "****"),
    ("ab", "**"),
    ("", "(empty)"),
    ("x" * 100, "x" + "*" * 30 + "…x"),  # longer than the stars say: an ellipsis (a review)
])
def test_mask(password: str, masked: str) -> None:
    assert pwshape.mask(password) == masked


@given(st.text(alphabet=st.characters(blacklist_characters="*"), min_size=3, max_size=60))
def test_mask_never_contains_a_password_of_three_or_more_characters(password: str) -> None:
    masked = pwshape.mask(password)
    assert password not in masked
    assert pwshape.mask(masked) == masked  # idempotent: masked labels merge with revealed ones


@pytest.mark.parametrize(("password", "mask"), [
    ("abc12", "?l?l?l?d?d"),
    ("Ab!", "?u?l?s"),
    ("a b", "?l?s?l"),
    ("é1", "?b?d"),
    ("x" * 25, pwshape.LONG_MASK),
])
def test_hashcat_mask(password: str, mask: str) -> None:
    assert pwshape.hashcat_mask(password) == mask


@pytest.mark.parametrize(("password", "name"), [
    ("abc", "loweralpha"), ("ABC", "upperalpha"), ("aBc", "mixedalpha"), ("123", "numeric"),
    ("!!", "special"), ("1!", "specialnum"), ("abc1", "loweralphanum"),
    ("Abc1!", "mixedalphaspecialnum"), ("abc!", "loweralphaspecial"), ("", "empty"),
])
def test_pipal_charset_names(password: str, name: str) -> None:
    assert pwshape.charset_name(password) == name


@pytest.mark.parametrize(("password", "pattern"), [
    ("soccer", "none"), ("soccer1", "1"), ("soccer12", "2"), ("soccer123", "3"),
    ("soccer1961", "4 year-like"), ("soccer2024", "4 year-like"), ("soccer1234", "4"),
    ("soccer12345", "5+"), ("123456", "all digits"), ("", "empty"),
])
def test_trailing_digit_patterns(password: str, pattern: str) -> None:
    assert pwshape.trailing_digits(password) == pattern


@pytest.mark.parametrize(("password", "base"), [
    ("P@ssw0rd123", "password"),
    ("123soccer!", "soccer"),
    ("Dragon", "dragon"),
    ("ab1", ""),  # shorter than 3
    ("123456", ""),
])
def test_base_word_is_lowercased_stripped_then_deleeted(password: str, base: str) -> None:
    assert pwshape.base_word(password) == base


def test_digit_runs_and_length_buckets() -> None:
    assert pwshape.digit_runs("ab12c345") == ("12", "345")
    assert pwshape.digit_runs("1961") == ("1961",)
    assert pwshape.digit_runs("abc") == ()
    assert pwshape.length_bucket("abc") == "3"
    assert pwshape.length_bucket("x" * 40) == ">32"
