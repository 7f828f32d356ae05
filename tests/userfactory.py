"""API-shaped random users for tests and benchmarks: plain ``random`` and hypothesis.

``make_users(n, seed)`` is fast and realistic (per-nationality names in their
scripts: Persian with U+200C, Ukrainian Cyrillic, Serbian Latin, diacritics);
``users_strategy()`` is the hypothesis version, whose statistically relevant
values (ages, dates, lengths, categories) hypothesis draws and shrinks itself.
Both give the nested shape of RandomUser API v1.4 ``results`` (without the
hashes and pictures, which the producer drops anyway).
"""

from __future__ import annotations

import json
import pathlib
import random
import uuid
from typing import Any

from infraetl import schema

DATA = pathlib.Path(__file__).parent / "data"

#: nat -> (country, first names, last names, cities, states, streets, postcode as int?, id name)
_NATS: dict[str, tuple[str, list[str], list[str], list[str], list[str], list[str], bool, str]] = {
    "AU": ("Australia", ["Jack", "Chloe", "Liam"], ["Smith", "O'Brien", "Nguyen"],
           ["Sydney", "Hobart"], ["Victoria", "Queensland"], ["Church St", "King Street"], True, "TFN"),
    "BR": ("Brazil", ["João", "Luana", "Cauã"], ["Araújo", "Gonçalves", "da Conceição"],
           ["São Luís", "Maringá"], ["Paraná", "Goiás"], ["Rua Três", "Rua São Jorge"], True, "CPF"),
    "CH": ("Switzerland", ["Léon", "Mia"], ["Müller", "Berger"], ["Zürich", "Genève"], ["Vaud", "Graubünden"],
           ["Rue de l'Église", "Kirchweg"], True, "AVS"),
    "DE": ("Germany", ["Gebhard", "Jürgen", "Käthe"], ["Heidrich", "Groß", "Schäfer"], ["Köln", "Düsseldorf"],
           ["Thüringen", "Bayern"], ["Schulstraße", "Gartenweg"], True, "SVNR"),
    "DK": ("Denmark", ["Søren", "Åse"], ["Jørgensen", "Kjær"], ["Århus", "Ølstykke"], ["Sjælland"],
           ["Østervej"], True, "CPR"),
    "ES": ("Spain", ["José María", "Begoña"], ["Núñez", "Peña-Ibáñez"], ["A Coruña", "Cádiz"],
           ["Castilla y León"], ["Calle de Alcalá"], True, "DNI"),
    "FI": ("Finland", ["Väinö", "Aino"], ["Mäkelä", "Heikkinen"], ["Hämeenlinna", "Jyväskylä"], ["Uusimaa"],
           ["Hämeenkatu"], True, "HETU"),
    "FR": ("France", ["Chloé", "Jean-Luc", "Maëlle"], ["Lefèvre", "D'Arc", "Roussel"], ["Besançon", "Nîmes"],
           ["Île-de-France", "Hérault"], ["Rue de l'Abbé-Grégoire"], True, "INSEE"),
    "GB": ("United Kingdom", ["Frederick", "Zoë"], ["Burke", "Smith–Jones"], ["Bristol", "Stoke-on-Trent"],
           ["Lothian", "Cumbria"], ["Hazel Square", "Queen's Road"], False, "NINO"),
    "IE": ("Ireland", ["Seán", "Aoife"], ["Ó Súilleabháin", "O'Neill"], ["Dún Laoghaire"], ["Leinster"],
           ["Grafton Street"], True, "PPS"),
    "IN": ("India", ["Aarav", "Diya"], ["Nair", "Shetty"], ["Nagpur", "Kochi"], ["Kerala"], ["Nehru Rd"],
           True, "UIDAI"),
    "IR": ("Iran", ["نازنين", "مهدي", "پرنیا"], ["کریمی", "علی\u200cزاده", "موسوی"], ["بندر احسان", "تهران"],
           ["کردستان", "خراسان\u200cرضوی"], ["زارع دره", "شهید\u200cبهشتی"], False, ""),
    "MX": ("Mexico", ["Azucena", "Ángel"], ["Villaseñor", "Cisneros"], ["Tlaquepaque"], ["Nuevo León"],
           ["Peatonal Sur Ávila"], True, "NSS"),
    "NL": ("Netherlands", ["Daan", "Eline"], ["van 't Hof", "de Vries"], ["'s-Hertogenbosch", "Delft"],
           ["Noord-Holland"], ["Kerkstraat"], False, "BSN"),
    "NO": ("Norway", ["Bjørn", "Åsmund"], ["Haugland", "Østby"], ["Tromsø", "Bodø"], ["Nordland"], ["Bøgata"],
           True, "FN"),
    "NZ": ("New Zealand", ["Edward", "Aroha"], ["Lambert", "Te Whata"], ["Kawawhanga", "Whanganui"],
           ["Auckland"], ["MacKay-Searle Broadway"], True, ""),
    "RS": ("Serbia", ["Đorđe", "Vukašin", "Милица"], ["Petrović", "Jovanović", "Живковић"], ["Niš", "Čačak"],
           ["Zlatibor"], ["Kneza Miloša"], True, "SID"),
    "TR": ("Turkey", ["Işıl", "Çağrı"], ["Öztürk", "Karaca"], ["İzmir", "Şanlıurfa"], ["Muğla"],
           ["Atatürk Sk"], True, ""),
    "UA": ("Ukraine", ["Ярослав", "Софія", "Їжак"], ["Шевченко", "Ковальчук"], ["Київ", "Львів"],
           ["Житомирська"], ["Хрещатик"], False, ""),
    "US": ("United States", ["Brandon", "Ava"], ["Johnson", "DeLuca"], ["San Antonio", "Coeur d'Alene"],
           ["New York"], ["Pecan Acres Ln"], True, "SSN"),
    "CA": ("Canada", ["Émile", "Olivia"], ["Tremblay", "Côté"], ["Québec", "Trois-Rivières"], ["Ontario"],
           ["Rue Principale"], False, "SIN"),
}
NATS: tuple[str, ...] = tuple(_NATS)
#: RandomUser's time zones (offset, description), a representative subset.
TIMEZONES: tuple[tuple[str, str], ...] = (
    ("-12:00", "Eniwetok, Kwajalein"), ("-10:00", "Hawaii"), ("-8:00", "Pacific Time (US & Canada)"),
    ("-7:00", "Mountain Time (US & Canada)"), ("-5:00", "Eastern Time (US & Canada), Bogota, Lima"),
    ("-3:30", "Newfoundland"), ("-3:00", "Brazil, Buenos Aires, Georgetown"),
    ("0:00", "Western Europe Time, London, Lisbon, Casablanca"),
    ("+1:00", "Brussels, Copenhagen, Madrid, Paris"),
    ("+3:30", "Tehran"), ("+5:30", "Bombay, Calcutta, Madras, New Delhi"), ("+5:45", "Kathmandu"),
    ("+6:00", "Almaty, Dhaka, Colombo"), ("+7:00", "Bangkok, Hanoi, Jakarta"),
    ("+9:00", "Tokyo, Seoul, Osaka, Sapporo, Yakutsk"), ("+14:00", "Line Islands"),
)
PASSWORDS: tuple[str, ...] = ("soccer", "secret", "trustno1", "letmein", "qwerty123", "dragon", "1234",
                              "sunshine", "monkey", "shadow", "Tr0ub4dor&3x!", "passw0rd", "a", "hello world")
_ADJ = ("lazy", "yellow", "brown", "silver", "happy", "tiny", "crazy", "purple")
_ANIMAL = ("elephant", "meerkat", "rabbit", "swan", "lion", "frog", "bird", "cat")


def sample_users() -> list[dict[str, Any]]:
    """The four real API users of ``tests/data/randomuser-sample.json``."""
    return json.loads((DATA / "randomuser-sample.json").read_text(encoding="utf-8"))["results"]


def _ascii(s: str) -> str:
    out = "".join(c for c in s.lower() if c.isascii() and (c.isalnum() or c == " "))
    return out.replace(" ", "") or "user"


def build_user(*, nat: str, gender: str, first: str, last: str, city: str, state: str, street: str,
               number: int, postcode: str | int, lat: str, lon: str, tz: tuple[str, str], email: str,
               uid: str, username: str, password: str, dob_year: int, age: int, reg_year: int,
               reg_age: int, id_name: str, id_value: str | None, country: str) -> dict[str, Any]:
    """One API-shaped user from its parts."""
    return {
        "gender": gender,
        "name": {"title": "Mr" if gender == "male" else "Ms", "first": first, "last": last},
        "location": {
            "street": {"number": number, "name": street}, "city": city, "state": state,
            "country": country, "postcode": postcode,
            "coordinates": {"latitude": lat, "longitude": lon},
            "timezone": {"offset": tz[0], "description": tz[1]},
        },
        "email": email,
        "login": {"uuid": uid, "username": username, "password": password},
        "dob": {"date": f"{dob_year:04d}-06-15T04:41:49.630Z", "age": age},
        "registered": {"date": f"{reg_year:04d}-12-18T08:57:58.528Z", "age": reg_age},
        "phone": "(272) 790-0888", "cell": "(489) 330-2385",
        "id": {"name": id_name, "value": id_value},
        "nat": nat,
    }


def make_user(rng: random.Random) -> dict[str, Any]:
    """One realistic random user."""
    nat = rng.choice(NATS)
    country, firsts, lasts, cities, states, streets, int_pc, id_name = _NATS[nat]
    first, last = rng.choice(firsts), rng.choice(lasts)
    age = rng.randint(18, 80)
    reg_age = min(rng.randint(1, 22), age - 1)  # registered after birth
    tz = rng.choice(TIMEZONES)
    pw = rng.choice(PASSWORDS) if rng.random() < 0.8 else "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(3, 16)))
    return build_user(
        nat=nat, gender=rng.choice(("male", "female")), first=first, last=last,
        city=rng.choice(cities), state=rng.choice(states), street=rng.choice(streets),
        number=rng.randint(1, 9999),
        postcode=rng.randint(1000, 99999) if int_pc else f"{rng.choice('ABCEGH')}{rng.randint(1, 9)}J 4GN",
        lat=f"{rng.uniform(-90, 90):.4f}", lon=f"{rng.uniform(-180, 180):.4f}", tz=tz,
        email=f"{_ascii(first)}.{_ascii(last)}@example.com",
        uid=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        username=f"{rng.choice(_ADJ)}{rng.choice(_ANIMAL)}{rng.randint(100, 999)}", password=pw,
        dob_year=2025 - age, age=age, reg_year=2025 - reg_age, reg_age=reg_age,
        id_name=id_name, id_value=None if not id_name else f"{rng.randint(10**7, 10**8 - 1)}",
        country=country,
    )


def make_users(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` realistic random users, the same for the same seed."""
    rng = random.Random(seed)
    return [make_user(rng) for _ in range(n)]


def make_columns(n: int, seed: int = 0) -> schema.Columns:
    """``n`` random users as a columnar batch."""
    return schema.to_columns(make_users(n, seed))


def users_strategy(min_size: int = 0, max_size: int = 40) -> Any:
    """Hypothesis strategy: lists of users whose figure-relevant values hypothesis draws."""
    from hypothesis import strategies as st

    text = st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "S")), min_size=1, max_size=12)

    @st.composite
    def user(draw: Any) -> dict[str, Any]:
        age = draw(st.integers(1, 150))
        reg_age = draw(st.integers(0, min(40, age - 1)))
        nat = draw(st.sampled_from(NATS))
        country, firsts, lasts, cities, states, streets, _, id_name = _NATS[nat]
        first = draw(st.sampled_from(firsts) | text)
        return build_user(
            nat=nat, gender=draw(st.sampled_from(("male", "female"))), first=first,
            last=draw(st.sampled_from(lasts)), city=draw(st.sampled_from(cities) | text),
            state=draw(st.sampled_from(states)), street=draw(st.sampled_from(streets)),
            number=draw(st.integers(0, 99999)), postcode=draw(st.integers(0, 99999) | st.just("E4J 4GN")),
            lat=f"{draw(st.integers(-900000, 900000)) / 1e4:.4f}",
            lon=f"{draw(st.integers(-1800000, 1800000)) / 1e4:.4f}",
            tz=draw(st.sampled_from(TIMEZONES)),
            email=draw(st.sampled_from(("a", "bo", "x.y"))) + "@"
            + draw(st.sampled_from(("example.com", "mail.example", "ex.org"))),
            uid=str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)), version=4)),
            username=draw(st.text("abcdefghij0123456789", min_size=1, max_size=30)),
            password=draw(st.sampled_from(PASSWORDS) | st.text("abc123!Z ", max_size=24)),
            # Ages and dates that agree (as of 2025), registered after birth; the validator
            # quarantines the others (tests/test_validate.py).
            dob_year=2025 - age, age=age, reg_year=2025 - reg_age, reg_age=reg_age,
            id_name=id_name, id_value=None if not id_name else "123", country=country,
        )

    return st.lists(user(), min_size=min_size, max_size=max_size)

