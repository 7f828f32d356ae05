"""Personal information in a password: the original three checks and ours.

The original counted a user when the lowercased password contains the
lowercased first or last name, the lowercased username, or the birth year
(``dob.date[:4]``). :func:`original_matches` keeps those definitions with
one deviation: an empty name or username, or a ``dob.date`` that does not
start with four ASCII digits, matches nothing (in Python ``"" in s`` is
True, so the original counted every user with an empty name).

:func:`find_personal` adds the kinds of :data:`KINDS`. Each user field is
lowercased, and a token shorter than :data:`MIN_TOKEN` characters is
ignored (``"li"`` is in too many passwords to mean anything):

- ``first_name``, ``last_name``: the name, or the name without spaces,
  apostrophes and hyphens (``O'Brien`` → ``obrien``), is in the password.
- ``username``: the username is in the password.
- ``birth_year``: the four digits of the birth year are (as the original).
- ``email_local``: a part of the e-mail's local part (split on ``.``,
  ``_``, ``-``, ``+``) is in the password.
- ``city``: the city, or the city without spaces and hyphens, is.
- ``phone_digits``: a run of at least 4 digits of the password occurs in
  the digits of ``phone`` or ``cell``.
- ``birth_date``: ``ddmm`` or ``mmdd`` of the birth date is in a digit run
  of the password, or the password ends in exactly two digits (after a
  non-digit) that are the birth year's ``yy``.
- ``name_reversed``: a (compacted) name reversed is in the password, unless
  the name is a palindrome.
- ``leet``: the de-leeted password (``p@ssw0rd`` → ``password``) contains
  a name or the de-leeted username that the plain password does not.

:func:`suspects` is the fast path: whole-column scans that pick the users
for whom the exact per-user checks can find anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from itertools import chain, compress, count, repeat
from operator import add, and_, contains, eq, itemgetter, le, not_
from typing import Any

from infraetl.pwshape import LEET, deleet, digit_runs

#: Extended kinds of personal information, in report order (bit i = KINDS[i]).
KINDS: tuple[str, ...] = (
    "first_name", "last_name", "username", "birth_year", "email_local", "city",
    "phone_digits", "birth_date", "name_reversed", "leet",
)
MIN_TOKEN = 3
#: A run of at least this many digits is compared with the phone numbers.
MIN_PHONE_RUN = 4
#: Stands for "no token": in no password (validation refuses control characters).
NO_TOKEN = "\x00"

(FIRST, LAST, USERNAME, BIRTH_YEAR, EMAIL, CITY, PHONE, BIRTH_DATE, REVERSED,
 LEET_FOUND) = (1 << i for i in range(len(KINDS)))
_EMAIL_SEP = re.compile(r"[._\-+]+")
_EMAIL_SEPS = str.maketrans("_-+", "...")
_NOT_DIGIT_BYTES = bytes(b for b in range(256) if not 48 <= b <= 57)


# What people leave out of a name or a city they type into a password; the zero-width
# (non-)joiners too: a Persian name's ZWNJ is rarely typed.
_ZERO_WIDTH = "\u200c\u200d"
_NAME_DROPS = str.maketrans("", "", " '-\u2019" + _ZERO_WIDTH)
_CITY_DROPS = str.maketrans("", "", " -" + _ZERO_WIDTH)


def compact(lowered: str) -> str:
    """A name as typed into a password: no spaces, apostrophes, hyphens or zero-width joiners."""
    return lowered if lowered.isalnum() else lowered.translate(_NAME_DROPS)


def compact_city(lowered: str) -> str:
    """A city as typed into a password: no spaces, hyphens or zero-width (non-)joiners."""
    return lowered.translate(_CITY_DROPS)


def phone_digits(phone: str) -> bytes:
    """The ASCII digits of a phone number, as bytes (fast to search)."""
    return phone.encode("utf-8", "surrogatepass").translate(None, _NOT_DIGIT_BYTES)


def birth_year(dob: str) -> str:
    """The birth year of an ISO date, or "" when it does not start with 4 ASCII digits."""
    year = dob[:4]
    return year if len(year) == 4 and year.isascii() and year.isdigit() else ""


def original_matches(
    password: str, first: str, last: str, username: str, dob: str
) -> tuple[bool, bool, bool]:
    """The original (name, username, birth year) in password; empty fields match nothing."""
    pwl = password.lower()
    fl, ll, ul = first.lower(), last.lower(), username.lower()
    name = bool(fl and fl in pwl) or bool(ll and ll in pwl)
    user = bool(ul and ul in pwl)
    year = birth_year(dob)
    return name, user, bool(year and year in password)


def find_personal(
    pwl: str, deleeted: str, runs: tuple[str, ...], tail: str,
    first: str, last: str, username: str, dob: str, email: str, city: str,
    phone: str, cell: str,
) -> int:
    """Bit set of :data:`KINDS` found, given the password's cached derived forms.

    ``pwl`` is the lowercased password, ``deleeted`` its de-leeted form,
    ``runs`` its digit runs and ``tail`` its trailing digit run.
    """
    if len(pwl) < MIN_TOKEN:
        return 0
    found = 0
    fl = first.lower()
    fc = compact(fl)
    if (len(fl) >= MIN_TOKEN and fl in pwl) or (len(fc) >= MIN_TOKEN and fc in pwl):
        found |= FIRST
    ll = last.lower()
    lc = compact(ll)
    if (len(ll) >= MIN_TOKEN and ll in pwl) or (len(lc) >= MIN_TOKEN and lc in pwl):
        found |= LAST
    ul = username.lower()
    if len(ul) >= MIN_TOKEN and ul in pwl:
        found |= USERNAME
    if runs:
        year = birth_year(dob)
        if year and year in pwl:
            found |= BIRTH_YEAR
        if year and len(tail) == 2 and len(pwl) > 2 and tail == dob[2:4]:
            found |= BIRTH_DATE
        long_runs = [r for r in runs if len(r) >= MIN_PHONE_RUN]
        if long_runs:
            mm, dd = dob[5:7], dob[8:10]
            if (len(mm) == 2 and len(dd) == 2 and (mm + dd).isdigit()
                    and any(dd + mm in r or mm + dd in r for r in long_runs)):
                found |= BIRTH_DATE
            digits = phone_digits(phone) + b" " + phone_digits(cell)
            if any(r.encode() in digits for r in long_runs):
                found |= PHONE
    at = email.find("@")
    if at > 0:
        for part in _EMAIL_SEP.split(email[:at].lower()):
            if len(part) >= MIN_TOKEN and part in pwl:
                found |= EMAIL
                break
    cl = city.lower()
    if len(cl) >= MIN_TOKEN and (cl in pwl or compact_city(cl) in pwl):
        found |= CITY
    for name in (fc, lc):
        rev = name[::-1]
        if len(name) >= MIN_TOKEN and rev != name and rev in pwl:
            found |= REVERSED
    if deleeted != pwl:
        ud = deleet(ul)
        if (
            (len(fc) >= MIN_TOKEN and fc in deleeted and fc not in pwl)
            or (len(lc) >= MIN_TOKEN and lc in deleeted and lc not in pwl)
            or (len(ud) >= MIN_TOKEN and ud in deleeted and ul not in pwl)
        ):
            found |= LEET_FOUND
    return found


def personal_info(password: str, user: Mapping[str, Any]) -> list[str]:
    """Kinds of personal information in ``password`` for a flat ``{path: value}`` user."""
    pwl = password.lower()
    runs = digit_runs(password)
    tail = runs[-1] if runs and password.endswith(runs[-1]) else ""
    found = find_personal(
        pwl, deleet(pwl), runs, tail,
        *(str(user.get(p) or "") for p in (
            "name.first", "name.last", "login.username", "dob.date", "email",
            "location.city", "phone", "cell")),
    )
    return [k for i, k in enumerate(KINDS) if found >> i & 1]


def _hits(flags: Iterable[Any]) -> set[int]:
    return set(compress(count(), flags))


def _tokens(values: list[str]) -> list[str]:
    """Lowercased, "" replaced by :data:`NO_TOKEN` (``"" in s`` is always True)."""
    lowered = list(map(str.lower, values))
    return [v or NO_TOKEN for v in lowered] if "" in lowered else lowered


def _email_hits(pwls: list[str], emails: list[str]) -> set[int]:
    """Users with a part (:data:`MIN_TOKEN`+ characters) of their e-mail's local part in ``pwls``.

    The exact ``email_local`` test, over whole columns: separators become
    ``.``, so ``split(".")`` gives :data:`_EMAIL_SEP`'s parts plus empty
    ones, which are too short to count.
    """
    locals_ = map(str.lower, map(itemgetter(0), map(str.partition, emails, repeat("@"))))
    parts = list(map(str.split, map(str.translate, locals_, repeat(_EMAIL_SEPS)), repeat(".")))
    flat = list(chain.from_iterable(parts))
    owner = list(chain.from_iterable(map(repeat, count(), map(len, parts))))
    return {owner[j] for j in compress(count(), map(contains, map(pwls.__getitem__, owner), flat))
            if len(flat[j]) >= MIN_TOKEN}


def suspects(
    pws: list[str], pwls: list[str], tail2s: list[str], long_runs: list[str],
    leet_forms: list[str], firsts: list[str], lasts: list[str], usernames: list[str],
    dobs: list[str], emails: list[str], cities: list[str], phones: list[str],
    cells: list[str],
) -> set[int]:
    """Indexes of the users for whom :func:`original_matches` or :func:`find_personal` may hit.

    A superset, computed with C-level ``map`` over whole columns (~50 ns a
    user a test) so that the exact checks run for a few users only. Per
    user, from the password's cached forms: ``tail2s`` its trailing two
    digits (else NO_TOKEN), ``long_runs`` its digit runs of 4+ joined by
    spaces ("" if none), ``leet_forms`` its de-leeted form ("" if the same).
    A name that :func:`compact` changes is tested in both forms; the
    e-mail's parts are tested exactly.
    """
    fl, ll, ul = _tokens(firsts), _tokens(lasts), _tokens(usernames)
    look = _hits(map(contains, pwls, fl))
    look |= _hits(map(contains, pwls, ll))
    look |= _hits(map(contains, pwls, ul))
    look |= _hits(map(contains, pwls, map(itemgetter(slice(None, None, -1)), fl)))
    look |= _hits(map(contains, pwls, map(itemgetter(slice(None, None, -1)), ll)))
    look |= _hits(map(eq, tail2s, map(itemgetter(slice(2, 4)), dobs)))
    for names in (fl, ll):
        if not all(map(str.isalnum, names)):
            # Few users: the compacted name (O'Brien -> obrien), plain, reversed, de-leeted.
            for i in compress(count(), map(not_, map(str.isalnum, names))):
                c = compact(names[i])
                if c in pwls[i] or c[::-1] in pwls[i] or c in leet_forms[i]:
                    look.add(i)
    # An e-mail first.last@ has the names for parts (tested above) when the names hold no
    # separator of their own ("jean-luc.picard@" has "luc" for a part); only the others
    # are split (a third of the users: transliterated or shortened names).
    expected = map(add, map(add, fl, repeat(".")), map(add, ll, repeat("@")))
    plain = map(and_, map(str.startswith, emails, expected), map(and_, map(str.isalnum, fl), map(str.isalnum, ll)))
    odd = list(compress(count(), map(not_, plain)))
    if odd:
        sub = _email_hits([pwls[i] for i in odd], [emails[i] for i in odd])
        look.update(odd[j] for j in sub)
    cl = _tokens(cities)
    look |= _hits(map(contains, pwls, cl))
    for i in compress(count(), map(not_, map(str.isalnum, cl))):
        if compact_city(cl[i]) in pwls[i]:
            look.add(i)
    digit_users = list(compress(count(), long_runs))
    if digit_users:
        # Year, ddmm, mmdd and phone numbers can only be in a run of 4+ digits.
        runs = [long_runs[i] for i in digit_users]
        d = [dobs[i] for i in digit_users]
        dd = list(map(itemgetter(slice(8, 10)), d))
        mm = list(map(itemgetter(slice(5, 7)), d))
        sub = _hits(map(contains, runs, map(itemgetter(slice(0, 4)), d)))
        sub |= _hits(map(contains, runs, map(add, dd, mm)))
        sub |= _hits(map(contains, runs, map(add, mm, dd)))
        sub |= _hits(map(contains, runs, repeat(" ")))  # several runs: look closer
        # Both numbers' digits run together: a few more matches, one call fewer.
        numbers = [phones[i] + cells[i] for i in digit_users]
        sub |= _hits(map(contains, map(phone_digits, numbers), map(str.encode, runs)))
        look.update(digit_users[j] for j in sub)
    if any(leet_forms):
        look |= _hits(map(contains, leet_forms, fl))
        look |= _hits(map(contains, leet_forms, ll))
        # De-leeting costs ~200 ns: only for usernames short enough to fit.
        for i in compress(count(), map(le, map(len, ul), map(len, leet_forms))):
            if ul[i].translate(LEET) in leet_forms[i]:
                look.add(i)
    return look
