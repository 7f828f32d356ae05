"""Offline, seeded users in exactly the RandomUser API v1.4 shape.

Faker is slow (tens of microseconds a call), so it is used once per process
and nationality to sample *pools* of names, streets, cities and phone
numbers with a fixed seed. Users are then composed from the pools with
random numbers drawn a chunk at a time (one row of 32-bit numbers per user,
see ``_COLUMNS``, from numpy's legacy ``RandomState``, whose stream numpy
keeps frozen). User i of a stream is the same however the stream is cut
into chunks, and the same seed, nationalities and stream give the same
users in any process (for one Faker version, which fixes the pools).

Quirks of the real API are reproduced on purpose, because they are valid
data the pipeline must keep: ``id.value`` is None for IR, NZ, TR and UA; the
postcode is an int or a str by nationality; Persian surnames carry U+200C;
a few names end in a space; some Serbian street names mix in a Cyrillic
``Ј``; ages are computed against :data:`REFERENCE_DATE`, not today.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from importlib import resources
from itertools import product
from random import Random
from typing import Any

import numpy as np

from ..exceptions import ConfigError, SourceError
from ..schema import NATIONALITIES
from . import Batch, Checker, RunPlan, User, accept_all
from .replay import (
    Collector,
    checked_plan,
    examine_limit,
    normalise_nat,
    raise_if_stopped,
)

logger = logging.getLogger(__name__)

#: Ages are relative to this instant (UTC), so users do not age between runs.
REFERENCE_DATE = (2026, 1, 15)

#: Share of passwords by kind (the rest are common words).
P_EMPTY, P_STRONG, P_PERSONAL = 0.005, 0.05, 0.10

LOCALES: dict[str, str | None] = {
    "AU": "en_AU", "BR": "pt_BR", "CA": "en_CA", "CH": "de_CH", "DE": "de_DE", "DK": "da_DK",
    "ES": "es_ES", "FI": "fi_FI", "FR": "fr_FR", "GB": "en_GB", "IE": "en_IE", "IN": "en_IN",
    "IR": "fa_IR", "MX": "es_MX", "NL": "nl_NL", "NO": "no_NO", "NZ": "en_NZ", "RS": None,
    "TR": "tr_TR", "UA": "uk_UA", "US": "en_US",
}
COUNTRIES: dict[str, str] = {
    "AU": "Australia", "BR": "Brazil", "CA": "Canada", "CH": "Switzerland", "DE": "Germany",
    "DK": "Denmark", "ES": "Spain", "FI": "Finland", "FR": "France", "GB": "United Kingdom",
    "IE": "Ireland", "IN": "India", "IR": "Iran", "MX": "Mexico", "NL": "Netherlands",
    "NO": "Norway", "NZ": "New Zealand", "RS": "Serbia", "TR": "Turkey", "UA": "Ukraine",
    "US": "United States",
}
#: (id.name, id.value pattern: # digit, ? capital letter); None value = the API's null.
ID_FORMATS: dict[str, tuple[str, str | None]] = {
    "AU": ("TFN", "#########"), "BR": ("CPF", "###.###.###-##"), "CA": ("SIN", "#########"),
    "CH": ("AVS", "756.####.####.##"), "DE": ("SVNR", "## ###### ? ###"), "DK": ("CPR", "######-####"),
    "ES": ("DNI", "########-?"), "FI": ("HETU", "######-###?"), "FR": ("INSEE", "############# ##"),
    "GB": ("NINO", "?? ## ## ## ?"), "IE": ("PPS", "#######?"), "IN": ("UIDAI", "############"),
    "IR": ("", None), "MX": ("NSS", "## ## ## #### #"), "NL": ("BSN", "########"),
    "NO": ("FN", "###########"), "NZ": ("", None), "RS": ("SID", "#########"),
    "TR": ("", None), "UA": ("", None), "US": ("SSN", "###-##-####"),
}
#: Nationalities whose postcode the API gives as a number, with its digit count.
INT_POSTCODE_DIGITS: dict[str, int] = {
    "AU": 4, "BR": 5, "CH": 4, "DE": 5, "DK": 4, "ES": 5, "FI": 5, "FR": 5, "IN": 6,
    "MX": 5, "NO": 4, "NZ": 4, "RS": 5, "TR": 5, "UA": 5, "US": 5,
}
#: Faker method for the API's ``location.state`` where the first found is wrong.
STATE_METHODS: dict[str, tuple[str, ...]] = {
    "ES": ("autonomous_community",), "FR": ("department_name",), "GB": ("county",),
}
_STATE_FALLBACK = ("state", "administrative_unit", "region", "county", "province")
TIMEZONES: tuple[tuple[str, str], ...] = (
    ("-12:00", "Eniwetok, Kwajalein"), ("-11:00", "Midway Island, Samoa"), ("-10:00", "Hawaii"),
    ("-9:00", "Alaska"), ("-8:00", "Pacific Time (US & Canada)"),
    ("-7:00", "Mountain Time (US & Canada)"), ("-6:00", "Central Time (US & Canada), Mexico City"),
    ("-5:00", "Eastern Time (US & Canada), Bogota, Lima"),
    ("-4:00", "Atlantic Time (Canada), Caracas, La Paz"), ("-3:30", "Newfoundland"),
    ("-3:00", "Brazil, Buenos Aires, Georgetown"), ("-2:00", "Mid-Atlantic"),
    ("-1:00", "Azores, Cape Verde Islands"), ("0:00", "Western Europe Time, London, Lisbon, Casablanca"),
    ("+1:00", "Brussels, Copenhagen, Madrid, Paris"), ("+2:00", "Kaliningrad, South Africa"),
    ("+3:00", "Baghdad, Riyadh, Moscow, St. Petersburg"), ("+3:30", "Tehran"),
    ("+4:00", "Abu Dhabi, Muscat, Baku, Tbilisi"), ("+4:30", "Kabul"),
    ("+5:00", "Ekaterinburg, Islamabad, Karachi, Tashkent"),
    ("+5:30", "Bombay, Calcutta, Madras, New Delhi"), ("+5:45", "Kathmandu"),
    ("+6:00", "Almaty, Dhaka, Colombo"), ("+7:00", "Bangkok, Hanoi, Jakarta"),
    ("+8:00", "Beijing, Perth, Singapore, Hong Kong"),
    ("+9:00", "Tokyo, Seoul, Osaka, Sapporo, Yakutsk"), ("+9:30", "Adelaide, Darwin"),
    ("+10:00", "Eastern Australia, Guam, Vladivostok"),
    ("+11:00", "Magadan, Solomon Islands, New Caledonia"),
    ("+12:00", "Auckland, Wellington, Fiji, Kamchatka"),
)
_POOL_SIZE = 150
_ZWNJ = "\u200c"
_LOWER, _UPPER, _DIGITS = "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789"
_SYMBOLS = "!@#$%^&*()-_=+[]{};:,.?/~"
_ALNUM = _LOWER + _UPPER + _DIGITS
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_TRANSLIT = {
    # Ukrainian / Russian / Serbian Cyrillic
    "а": "a", "б": "b", "в": "v", "г": "h", "ґ": "g", "д": "d", "е": "e", "є": "ye", "ж": "zh",
    "з": "z", "и": "y", "і": "i", "ї": "yi", "й": "y", "к": "k", "л": "l", "м": "m", "н": "n",
    "о": "o", "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts",
    "ч": "ch", "ш": "sh", "щ": "shch", "ь": "", "ю": "yu", "я": "ya", "ы": "y", "э": "e",
    "ё": "e", "ъ": "", "ј": "j", "'": "", "’": "",
    # Persian, consonant-heavy like the API's own e-mail addresses
    "آ": "a", "ا": "", "أ": "a", "إ": "e", "ب": "b", "پ": "p", "ت": "t", "ث": "th", "ج": "j",
    "چ": "ch", "ح": "h", "خ": "kh", "د": "d", "ذ": "dh", "ر": "r", "ز": "z", "ژ": "zh", "س": "s",
    "ش": "sh", "ص": "s", "ض": "d", "ط": "t", "ظ": "z", "ع": "", "غ": "gh", "ف": "f", "ق": "q",
    "ک": "kh", "ك": "k", "گ": "g", "ل": "l", "م": "m", "ن": "n", "و": "v", "ه": "h", "ی": "y",
    "ي": "y", "ئ": "y", "ء": "", "ة": "h", "ؤ": "v", _ZWNJ: "",
    # Letters NFKD does not fold
    "ß": "ss", "ø": "o", "æ": "ae", "đ": "d", "ı": "i", "ł": "l", "œ": "oe", "þ": "th",
}


def stable_seed(*parts: object) -> int:
    """A 64-bit integer from ``parts`` that is the same in every process (unlike ``hash()``)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def ascii_fold(text: str) -> str:
    """Lower-case Latin transliteration of a name, as the API builds e-mail addresses."""
    out = []
    for ch in unicodedata.normalize("NFKD", text.strip().lower()):
        if ch in _TRANSLIT:
            out.append(_TRANSLIT[ch])
        elif "a" <= ch <= "z" or "0" <= ch <= "9" or ch == "-":
            out.append(ch)
    return "".join(out)


def _pattern(spec: str) -> Callable[[int, int], str]:
    """Compile an id/phone pattern (# digit, ? capital letter) into ``fill(digits, letters)``."""
    # The filler takes two random integers and peels one run of '#' or '?'
    # off each: this runs for every user, so no per-character draws.
    template: list[str] = []
    runs: list[tuple[bool, int]] = []
    i = 0
    while i < len(spec):
        ch = spec[i]
        j = i
        while j < len(spec) and spec[j] == ch and ch in "#?":
            j += 1
        if j > i:
            runs.append((ch == "#", j - i))
            template.append(f"%0{j - i}d" if ch == "#" else "%s")
            i = j
        else:
            template.append(ch.replace("%", "%%"))
            i += 1
    fmt = "".join(template)
    steps = tuple((is_digit, 10 ** n if is_digit else 26 ** n,
                   None if is_digit else tuple("".join(t) for t in product(_UPPER, repeat=n)))
                  for is_digit, n in runs)

    def fill(digits: int, letters: int) -> str:
        parts: list[int | str] = []
        for is_digit, size, table in steps:
            if is_digit:
                digits, value = divmod(digits, size)
                parts.append(value)
            else:
                letters, value = divmod(letters, size)
                parts.append(table[value])  # type: ignore[index]
        return fmt % tuple(parts)

    return fill


_ID_FILLERS = {nat: (name, _pattern(p) if p else None) for nat, (name, p) in ID_FORMATS.items()}


@dataclass(frozen=True)
class Pools:
    """Pre-sampled values of one nationality, :data:`_POOL_SIZE` each; names are ``(text, ascii)``."""

    first_male: tuple[tuple[str, str], ...]
    first_female: tuple[tuple[str, str], ...]
    last: tuple[tuple[str, str], ...]
    streets: tuple[str, ...]
    cities: tuple[str, ...]
    states: tuple[str, ...]
    postcodes: tuple[str, ...]
    phones: tuple[str, ...]
    cells: tuple[str, ...]


_pools: dict[str, Pools] = {}
_pools_lock = threading.Lock()
_words: dict[str, Any] = {}


def _data(name: str) -> str:
    return resources.files("infraetl").joinpath("data", name).read_text(encoding="utf-8")


def words() -> dict[str, Any]:
    """The shipped word lists: ``passwords``, ``username_adjectives``, ``username_animals``, overrides."""
    if not _words:
        data = json.loads(_data("pools.json"))
        lines = (ln.strip() for ln in _data("passwords.txt").splitlines())
        data["passwords"] = tuple(dict.fromkeys(ln for ln in lines if ln and not ln.startswith("#")))
        _words.update(data)
    return _words


def pools(nat: str) -> Pools:
    """The pools of one nationality, sampled once per process with a fixed seed."""
    found = _pools.get(nat)
    if found is None:
        with _pools_lock:
            found = _pools.get(nat)
            if found is None:
                found = _pools[nat] = _build_pools(nat)
    return found


def _uniq(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v and v.strip()))


def _build_pools(nat: str) -> Pools:
    started = time.perf_counter()
    rng = Random(stable_seed("pools", nat))
    over = words().get(nat, {})
    locale = LOCALES[nat]
    if locale is None:  # Faker has no Serbian locale: the shipped lists stand in
        male, female, last = over["first_male"], over["first_female"], over["last"]
        streets, cities, states = over["streets"], over["cities"], over["states"]
        phones = [_pattern(rng.choice(over["phone_formats"]))(rng.getrandbits(64), 0)
                  for _ in range(_POOL_SIZE)]
        cells = [_pattern(rng.choice(over["cell_formats"]))(rng.getrandbits(64), 0)
                 for _ in range(_POOL_SIZE)]
        postcodes: list[str] = []
    else:
        from faker import Faker

        fake = Faker(locale)
        fake.seed_instance(stable_seed("faker", nat))
        n = _POOL_SIZE
        male = _uniq([fake.first_name_male() for _ in range(n)])
        female = _uniq([fake.first_name_female() for _ in range(n)])
        last = _uniq([fake.last_name() for _ in range(n)])
        streets = over.get("streets") or _uniq([fake.street_name() for _ in range(n)])
        cities = over.get("cities") or over.get("states") or _uniq([fake.city() for _ in range(n)])
        states = over.get("states") or _uniq([_state(fake, nat) for _ in range(n // 2)]) or cities
        postcodes = [] if nat in INT_POSTCODE_DIGITS else _uniq([fake.postcode() for _ in range(n)])
        phones = [fake.phone_number() for _ in range(n)]
        cells = [fake.phone_number() for _ in range(n)]
    if nat == "IR":
        last = _persian_compounds(last, male, rng)
    if nat == "RS":
        # The API spells some Serbian street names with a Cyrillic Ј in Latin text.
        streets = [s.replace("J", "\u0408") if "J" in s and rng.random() < 0.5 else s for s in streets]

    def named(names: Sequence[str]) -> tuple[tuple[str, str], ...]:
        # A few API names carry a trailing space; the e-mail is built from the trimmed name.
        return _fixed([(x + " " if rng.random() < 0.02 else x, ascii_fold(x) or "user") for x in names])

    built = Pools(named(male), named(female), named(last), _fixed(streets), _fixed(cities),
                  _fixed(states), _fixed(postcodes), _fixed(phones), _fixed(cells))
    logger.debug("sampled pools for %s in %.0f ms", nat, (time.perf_counter() - started) * 1000)
    return built


def _fixed(values: Sequence[Any]) -> tuple[Any, ...]:
    """Exactly :data:`_POOL_SIZE` entries spread evenly over ``values`` (empty stays empty)."""
    # Equal-sized pools let one vectorised draw pick for every nationality.
    if not values:
        return ()
    return tuple(values[i * len(values) // _POOL_SIZE] for i in range(_POOL_SIZE))


def _state(fake: Any, nat: str) -> str:
    for method in STATE_METHODS.get(nat, ()) + _STATE_FALLBACK:
        if hasattr(fake, method):
            return str(getattr(fake, method)())
    return str(fake.city())


def _persian_compounds(last: list[str], first: list[str], rng: Random) -> list[str]:
    """Join Persian compound surnames with U+200C, as Persian spelling does."""
    out = [s.replace(" پور", _ZWNJ + "پور").replace(" زاده", _ZWNJ + "زاده") for s in last]
    for name in first[: len(first) // 6]:
        out.append(name + _ZWNJ + rng.choice(("زاده", "پور", "نژاد")))
    return out


#: The random draws of one user (32-bit unsigned each), in stream order.
_COLUMNS = (
    "nat", "male", "first", "last", "title", "postcode", "tz",
    "dob_day", "dob_min", "dob_sec", "dob_ms", "reg_day", "reg_min", "reg_sec", "reg_ms",
    "uuid_0", "uuid_1", "uuid_2", "uuid_3", "username", "number", "pw_kind", "pw_word", "pw_how",
    "salt_a", "salt_b", "street_no", "street", "city", "state", "lat", "lon", "phone", "cell",
    "id_digits", "id_digits_2", "id_letters", "picture",
)
_UUID = _COLUMNS.index("uuid_0")
_T_EMPTY = int(P_EMPTY * 2**32)
_T_STRONG = int((P_EMPTY + P_STRONG) * 2**32)
_T_PERSONAL = int((P_EMPTY + P_STRONG + P_PERSONAL) * 2**32)
_DEGREE = 1 / 2**32


class UserGenerator:
    """A deterministic stream of API-shaped users for one seed, nationalities and stream."""

    def __init__(self, seed: str, nat: Sequence[str] = (), *, stream: object = "") -> None:
        self.nat = normalise_nat(nat) or NATIONALITIES
        digest = hashlib.sha256(f"users\x1f{seed}\x1f{','.join(self.nat)}\x1f{stream}".encode()).digest()
        self._rs = np.random.RandomState(np.frombuffer(digest, dtype=np.uint32))
        self._pools = [pools(n) for n in self.nat]
        w = words()
        self._passwords: tuple[str, ...] = w["passwords"]
        self._usernames = tuple(a + b for a in w["username_adjectives"] for b in w["username_animals"])
        self._dob = _days("dob")
        self._registered = _days("registered")
        # Draws scaled to an index in [0, n); the others stay raw 32-bit numbers.
        self._scales: dict[str, int] = {
            "nat": len(self.nat), "male": 2, "first": _POOL_SIZE, "last": _POOL_SIZE, "title": 6,
            "tz": len(TIMEZONES), "dob_day": len(self._dob), "dob_min": 1440, "dob_sec": 60, "dob_ms": 1000,
            "reg_day": len(self._registered), "reg_min": 1440, "reg_sec": 60, "reg_ms": 1000,
            "username": len(self._usernames), "number": 900, "salt_a": 3844 * 3844, "salt_b": 3844 * 3844,
            "street_no": 9999, "street": _POOL_SIZE, "city": _POOL_SIZE, "state": _POOL_SIZE,
            "phone": _POOL_SIZE, "cell": _POOL_SIZE, "picture": 100,
        }

    def users(self, count: int) -> list[User]:
        """The next ``count`` users of the stream."""
        if count <= 0:
            return []
        # One row per user, so user i is the same however the stream is chunked.
        draws = self._rs.randint(0, 2**32, size=(count, len(_COLUMNS)), dtype=np.uint32)
        hexes = np.ascontiguousarray(draws[:, _UUID:_UUID + 4]).tobytes().hex()
        wide = draws.T.astype(np.uint64)
        columns: list[list[int]] = []
        for j, name in enumerate(_COLUMNS):
            if not name.startswith("uuid"):
                scale = self._scales.get(name)
                col = wide[j] if scale is None else (wide[j] * np.uint64(scale)) >> np.uint64(32)
                columns.append(col.tolist())
        return [self._user(row, hexes) for row in zip(*columns, range(count), strict=True)]

    def _user(self, row: tuple[Any, ...], hexes: str) -> User:
        # The same order as _COLUMNS (without the uuid draws), then the user's index in the chunk.
        (nat_i, male, first_i, last_i, title_i, pc, tz_i,
         dob_day, dob_min, dob_sec, dob_ms, reg_day, reg_min, reg_sec, reg_ms,
         name_i, number, pw_kind, pw_word, pw_how,
         salt_a, salt_b, street_no, street_i, city_i, state_i, lat, lon, phone_i, cell_i,
         id_digits, id_digits_2, id_letters, picture, i) = row
        nat = self.nat[nat_i]
        p = self._pools[nat_i]
        first, first_ascii = (p.first_male if male else p.first_female)[first_i]
        last, last_ascii = p.last[last_i]
        if nat == "CH":
            title = "Monsieur" if male else ("Madame", "Mademoiselle")[title_i & 1]
        else:
            title = "Mr" if male else ("Mrs", "Ms", "Miss")[title_i % 3]
        digits = INT_POSTCODE_DIGITS.get(nat)
        if digits:
            low = 10 ** (digits - 1)
            postcode: int | str = low + ((pc * 9 * low) >> 32)
        else:
            postcode = p.postcodes[(pc * _POOL_SIZE) >> 32]
        offset, tz_description = TIMEZONES[tz_i]
        dob_date, dob_age, year = self._dob[dob_day]
        reg_date, reg_age, _ = self._registered[reg_day]
        if reg_date <= dob_date:
            # Registered before birth (a 21-year-old and an account of 22): the mirrored day, a
            # recent one, keeps the draws (and every other user) as they were.
            reg_date, reg_age, _ = self._registered[-1 - reg_day]
        h = hexes[32 * i: 32 * i + 32]
        username = f"{self._usernames[name_i]}{100 + number}"
        if pw_kind >= _T_PERSONAL:
            password = self._passwords[(pw_word * len(self._passwords)) >> 32]
        else:
            password = self._password(pw_kind, pw_word, pw_how, first_ascii, last_ascii, username, year)
        pairs = _ALNUM_PAIRS
        salt = pairs[salt_a // 3844] + pairs[salt_a % 3844] + pairs[salt_b // 3844] + pairs[salt_b % 3844]
        salted = (password + salt).encode()
        id_name, id_fill = _ID_FILLERS[nat]
        pic = _PICTURES[picture if male else 100 + picture]
        hm, sec, ms = _HOURS_MINUTES, _SECONDS, _MILLIS
        return {
            "gender": "male" if male else "female",
            "name": {"title": title, "first": first, "last": last},
            "location": {
                "street": {"number": 1 + street_no, "name": p.streets[street_i]},
                "city": p.cities[city_i],
                "state": p.states[state_i],
                "country": COUNTRIES[nat],
                "postcode": postcode,
                "coordinates": {"latitude": f"{lat * _DEGREE * 180 - 90:.4f}",
                                "longitude": f"{lon * _DEGREE * 360 - 180:.4f}"},
                "timezone": {"offset": offset, "description": tz_description},
            },
            "email": f"{first_ascii}.{last_ascii}@example.com",
            "login": {
                "uuid": f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}",
                "username": username,
                "password": password,
                "salt": salt,
                "md5": hashlib.md5(salted).hexdigest(),
                "sha1": hashlib.sha1(salted).hexdigest(),
                "sha256": hashlib.sha256(salted).hexdigest(),
            },
            "dob": {"date": dob_date + hm[dob_min] + sec[dob_sec] + ms[dob_ms], "age": dob_age},
            "registered": {"date": reg_date + hm[reg_min] + sec[reg_sec] + ms[reg_ms], "age": reg_age},
            "phone": p.phones[phone_i],
            "cell": p.cells[cell_i],
            "id": {"name": id_name,
                   "value": id_fill(id_digits << 32 | id_digits_2, id_letters) if id_fill else None},
            "picture": {"large": pic[0], "medium": pic[1], "thumbnail": pic[2]},
            "nat": nat,
        }

    def _password(self, kind: int, word: int, how: int,
                  first: str, last: str, username: str, year: int) -> str:
        """The rarer passwords: empty, strong random, or built from the user's own details."""
        if kind < _T_EMPTY:
            return ""
        if kind < _T_STRONG:
            return _strong(word << 32 | how)
        common = self._passwords[(word * len(self._passwords)) >> 32]
        return (f"{first}{year}", f"{last}{year % 100:02d}", username, first.capitalize() + "123",
                first + last, f"{common}{year}")[how % 6]


def _strong(seed: int) -> str:
    """A random 12–20 character password drawing on 3 or 4 character classes."""
    # Bytes of a hash, not a seeded Random: seeding a Mersenne Twister per
    # password cost more than composing the rest of the user.
    b = hashlib.sha512(seed.to_bytes(8, "big")).digest()
    classes = [_LOWER, _UPPER, _DIGITS, _SYMBOLS]
    if b[0] < 102:  # 40 %: three classes
        del classes[b[1] % 4]
    alphabet = "".join(classes)
    length = 12 + b[2] % 9
    chars = [alphabet[x % len(alphabet)] for x in b[8:8 + length]]
    # One character of each class at distinct places, so every class really occurs.
    for k, cls in enumerate(classes):
        chars[(b[3 + k] % 3) + 3 * k] = cls[b[40 + k] % len(cls)]
    return "".join(chars)


def _day_table(oldest: int, youngest: int) -> tuple[tuple[str, int, int], ...]:
    """``(ISO date, age at REFERENCE_DATE, year)`` for every day of ages ``youngest..oldest``."""
    ref = date(*REFERENCE_DATE)
    first = ref.replace(year=ref.year - oldest - 1).toordinal() + 1
    last = ref.replace(year=ref.year - youngest).toordinal()
    out = []
    for ordinal in range(first, last + 1):
        d = date.fromordinal(ordinal)
        out.append((d.isoformat(), ref.year - d.year - ((d.month, d.day) > (ref.month, ref.day)), d.year))
    return tuple(out)


# Pieces of an ISO date-time: joining four strings is cheaper than formatting numbers.
_HOURS_MINUTES = tuple(f"T{m // 60:02d}:{m % 60:02d}:" for m in range(1440))
_SECONDS = tuple(f"{s:02d}." for s in range(60))
_MILLIS = tuple(f"{ms:03d}Z" for ms in range(1000))
_PICTURES = tuple(
    tuple(f"https://randomuser.me/api/portraits/{size}{who}/{n}.jpg" for size in ("", "med/", "thumb/"))
    for who in ("men", "women") for n in range(100)
)
_ALNUM_PAIRS = tuple(a + b for a in _ALNUM for b in _ALNUM)
_tables: dict[str, tuple[tuple[str, int, int], ...]] = {}


def _days(kind: str) -> tuple[tuple[str, int, int], ...]:
    if kind not in _tables:
        # Ages 21..77 for the birth date; 0..22 years since registration.
        _tables["dob"] = _day_table(77, 21)
        _tables["registered"] = _day_table(22, 0)
    return _tables[kind]


class SyntheticSource:
    """Offline users: seeded, deterministic, in the API's exact shape."""

    name = "synthetic"

    def __init__(self, *, chunk_size: int = 1000, **options: Any) -> None:
        if options:
            raise ConfigError(f"unknown option(s) for the synthetic source: {', '.join(sorted(options))}")
        self.chunk_size = max(1, int(chunk_size))

    def batches(self, plan: RunPlan, check: Checker = accept_all) -> Iterator[Batch]:
        """Yield batches of generated users until ``plan.users`` passed ``check``."""
        plan = checked_plan(plan)
        if plan.users == 0:
            return
        collector = Collector(plan, check)
        generator = UserGenerator(plan.seed, plan.nat)
        limit = examine_limit(plan.users)
        while not collector.done:
            raise_if_stopped(plan, "synthetic source", collector)
            if collector.examined >= limit:
                top = ", ".join(f"{k} {v}" for k, v in collector.dropped.most_common(3))
                raise SourceError(f"synthetic source: only {collector.accepted:,} of {plan.users:,} users "
                                  f"passed the checks in {collector.examined} records ({top})")
            for batch in collector.add(generator.users(min(self.chunk_size, collector.missing))):
                raise_if_stopped(plan, "synthetic source", collector)
                yield batch
