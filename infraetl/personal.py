"""Personal information in a password: the original three checks and ours.

The original counted a user when the lowercased password contains the
lowercased first or last name, the lowercased username, or the birth year
(``dob.date[:4]``). :func:`original_matches` keeps those definitions with
one deviation: an empty name, username or birth year matches nothing (in
Python ``"" in s`` is True, so the original counted every user with an
empty name).

:func:`find_personal` adds the kinds of :data:`KINDS`. Each user field is
lowercased, and a token shorter than :data:`MIN_TOKEN` characters is
ignored (``"li"`` is in too many passwords to mean anything):

- ``first_name``, ``last_name``: the name, or the name without spaces,
  apostrophes and hyphens (``O'Brien`` → ``obrien``), is in the password.
- ``username``: the username is in the password.
- ``birth_year``: the four digits of the birth year are (as the original).
- ``email_local``: a part of the e-mail's local part (split on ``.``,
  ``_``, ``-``) is in the password.
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
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from infraetl.pwshape import deleet, digit_runs

#: Extended kinds of personal information, in report order (bit i = KINDS[i]).
KINDS: tuple[str, ...] = (
    "first_name", "last_name", "username", "birth_year", "email_local", "city",
    "phone_digits", "birth_date", "name_reversed", "leet",
)
MIN_TOKEN = 3
#: A run of at least this many digits is compared with the phone numbers.
MIN_PHONE_RUN = 4

(FIRST, LAST, USERNAME, BIRTH_YEAR, EMAIL, CITY, PHONE, BIRTH_DATE, REVERSED,
 LEET) = (1 << i for i in range(len(KINDS)))
_NOT_DIGIT = re.compile(r"[^0-9]+")
_EMAIL_SEP = re.compile(r"[._\-+]+")


def compact(lowered: str) -> str:
    """Drop the spaces, apostrophes and hyphens people leave out of a typed name."""
    if lowered.isalnum():
        return lowered
    return lowered.replace(" ", "").replace("'", "").replace("-", "").replace("\u2019", "")


def _year(dob: str) -> str:
    """The birth year of an ISO date, or "" when it does not start with 4 digits."""
    year = dob[:4]
    return year if len(year) == 4 and year.isdigit() else ""


def original_matches(
    password: str, first: str, last: str, username: str, dob: str
) -> tuple[bool, bool, bool]:
    """The original (name, username, birth year) in password; empty fields match nothing."""
    pwl = password.lower()
    fl, ll, ul = first.lower(), last.lower(), username.lower()
    name = bool(fl and fl in pwl) or bool(ll and ll in pwl)
    user = bool(ul and ul in pwl)
    year = _year(dob)
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
        year = _year(dob)
        if year and year in pwl:
            found |= BIRTH_YEAR
        if len(tail) == 2 and len(pwl) > 2 and tail == dob[2:4] and year:
            found |= BIRTH_DATE
        long_runs = [r for r in runs if len(r) >= MIN_PHONE_RUN]
        if long_runs:
            mm, dd = dob[5:7], dob[8:10]
            if (len(mm) == 2 and len(dd) == 2 and (mm + dd).isdigit()
                    and any(dd + mm in r or mm + dd in r for r in long_runs)):
                found |= BIRTH_DATE
            digits = _NOT_DIGIT.sub("", phone) + " " + _NOT_DIGIT.sub("", cell)
            if any(r in digits for r in long_runs):
                found |= PHONE
    at = email.find("@")
    if at > 0:
        for part in _EMAIL_SEP.split(email[:at].lower()):
            if len(part) >= MIN_TOKEN and part in pwl:
                found |= EMAIL
                break
    cl = city.lower()
    if len(cl) >= MIN_TOKEN and (cl in pwl or compact(cl) in pwl):
        found |= CITY
    if len(fc) >= MIN_TOKEN:
        rf = fc[::-1]
        if rf != fc and rf in pwl:
            found |= REVERSED
    if len(lc) >= MIN_TOKEN and not found & REVERSED:
        rl = lc[::-1]
        if rl != lc and rl in pwl:
            found |= REVERSED
    if deleeted != pwl:
        ud = deleet(ul)
        if (
            (len(fc) >= MIN_TOKEN and fc in deleeted and fc not in pwl)
            or (len(lc) >= MIN_TOKEN and lc in deleeted and lc not in pwl)
            or (len(ud) >= MIN_TOKEN and ud in deleeted and ul not in pwl)
        ):
            found |= LEET
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
