"""Synthetic Mexican people and their records at several institutions, with realistic registration noise.

Deterministic for a seed. Each :class:`Person` has a generated CURP (valid check digit) and NSS (valid
Luhn); :func:`noisy_record` makes what a registration desk might type: typos, swapped surnames, a missing
second surname, dropped accents, a birth date with two digits swapped, a missing or placeholder CURP.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

from ehr_core.identity.identifiers import CURP_PLACEHOLDER, CURP_SYSTEM, NSS_SYSTEM, curp_check_digit, nss_check_digit

__all__ = ["NOISE", "Person", "Record", "make_people", "noisy_record", "patient_resource"]

MALE = [
    "José",
    "Juan",
    "Luis",
    "Carlos",
    "Jesús",
    "Miguel",
    "Francisco",
    "Alejandro",
    "Pedro",
    "Antonio",
    "Manuel",
    "Jorge",
    "Ricardo",
    "Fernando",
    "Roberto",
    "Eduardo",
    "Sergio",
    "Raúl",
    "Javier",
    "Óscar",
    "Andrés",
    "Héctor",
    "Arturo",
    "Martín",
    "Rubén",
    "Ramón",
    "Ángel",
    "Efraín",
    "Joaquín",
    "Tomás",
]
FEMALE = [
    "María",
    "Guadalupe",
    "Juana",
    "Margarita",
    "Verónica",
    "Patricia",
    "Leticia",
    "Rosa",
    "Alejandra",
    "Gabriela",
    "Elizabeth",
    "Adriana",
    "Claudia",
    "Sofía",
    "Fernanda",
    "Daniela",
    "Lucía",
    "Ximena",
    "Itzel",
    "Citlali",
    "Andrea",
    "Mónica",
    "Silvia",
    "Araceli",
    "Yolanda",
    "Beatriz",
    "Irene",
    "Noemí",
    "Inés",
    "Belén",
]
SURNAMES = [
    "Hernández",
    "García",
    "Martínez",
    "López",
    "González",
    "Pérez",
    "Rodríguez",
    "Sánchez",
    "Ramírez",
    "Cruz",
    "Flores",
    "Gómez",
    "Morales",
    "Vázquez",
    "Reyes",
    "Jiménez",
    "Torres",
    "Díaz",
    "Gutiérrez",
    "Ruiz",
    "Mendoza",
    "Aguilar",
    "Ortiz",
    "Moreno",
    "Castillo",
    "Romero",
    "Álvarez",
    "Méndez",
    "Chávez",
    "Rivera",
    "Juárez",
    "Ramos",
    "Domínguez",
    "Herrera",
    "Medina",
    "Castro",
    "Vargas",
    "Guzmán",
    "Velázquez",
    "Muñoz",
    "Rojas",
    "Contreras",
    "Salazar",
    "Luna",
    "Ortega",
    "Santiago",
    "Guerrero",
    "Bautista",
    "Estrada",
    "Cortés",
    "Núñez",
    "Ibarra",
    "Peña",
    "Xolalpa",
    "Tzintzun",
    "Pech",
    "Canul",
    "Cauich",
    "Quiñones",
    "Zúñiga",
]
STATES = ["OC", "CS", "GR", "VZ", "PL", "MC", "DF", "JC", "YN", "MN", "HG", "NL", "SL", "TC", "QT", "ZS"]
#: The noise kinds :func:`noisy_record` can apply.
NOISE = ["typo", "swap-surnames", "drop-second-surname", "accents", "birth-digits", "no-curp"]


def _ascii(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


@dataclass(frozen=True)
class Person:
    key: int
    given: list[str]
    surname1: str
    surname2: str
    sex: str  # H or M
    birth_date: date
    state: str
    curp: str
    nss: str


@dataclass(frozen=True)
class Record:
    """One registration of a person at an institution (what its Patient resource says)."""

    person: int
    institution: str
    local_id: str
    given: list[str]
    surname1: str
    surname2: str
    sex: str
    birth_date: date
    state: str
    curp: str | None  # None: not registered; may be the placeholder
    nss: str | None = None
    noise: list[str] = field(default_factory=list)


def _first_vowel(word: str) -> str:
    for char in word[1:]:
        if char in "AEIOU":
            return char
    return "X"


def _first_consonant(word: str) -> str:
    for char in word[1:]:
        if char not in "AEIOU":
            return char
    return "X"


def make_curp(
    given: list[str], surname1: str, surname2: str, sex: str, born: date, state: str, rng: random.Random
) -> str:
    s1, s2 = _ascii(surname1).upper().replace("Ñ", "X"), _ascii(surname2).upper().replace("Ñ", "X")
    name = _ascii(given[1] if given[0] in ("José", "María") and len(given) > 1 else given[0]).upper()
    head = f"{s1[0]}{_first_vowel(s1)}{s2[0] if s2 else 'X'}{name[0]}"
    inner = f"{_first_consonant(s1)}{_first_consonant(s2) if s2 else 'X'}{_first_consonant(name)}"
    homoclave = str(rng.randrange(10)) if born.year < 2000 else rng.choice("ABCDEFGHIJ")
    first17 = f"{head}{born:%y%m%d}{sex}{state}{inner}{homoclave}"
    return first17 + str(curp_check_digit(first17))


def make_nss(born: date, rng: random.Random) -> str:
    first10 = f"{rng.randrange(1, 99):02d}{rng.randrange(100):02d}{born:%y}{rng.randrange(10000):04d}"
    return first10 + str(nss_check_digit(first10))


def make_people(count: int, seed: int, start: date = date(1940, 1, 1), end: date = date(2024, 12, 31)) -> list[Person]:
    """``count`` people; about one in eight shares surnames and state with the one before (siblings)."""
    rng = random.Random(seed)
    people: list[Person] = []
    span = (end - start).days
    used: set[str] = set()
    for key in range(count):
        sex = rng.choice("HM")
        names = MALE if sex == "H" else FEMALE
        given = [rng.choice(names)] + ([rng.choice(names)] if rng.random() < 0.35 else [])
        if people and rng.random() < 0.12:
            sibling = people[-1]
            surname1, surname2, state = sibling.surname1, sibling.surname2, sibling.state
            twin = rng.random() < 0.15
            born = sibling.birth_date if twin else sibling.birth_date + timedelta(days=rng.randrange(300, 3000))
            born = min(born, end)
        else:
            surname1, surname2 = rng.choice(SURNAMES), rng.choice(SURNAMES)
            state = rng.choice(STATES)
            born = start + timedelta(days=rng.randrange(span))
        curp = make_curp(given, surname1, surname2, sex, born, state, rng)
        while curp in used:
            curp = make_curp(given, surname1, surname2, sex, born, state, rng)
        used.add(curp)
        people.append(Person(key, given, surname1, surname2, sex, born, state, curp, make_nss(born, rng)))
    return people


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:  # substitution with a neighbour-ish letter
        return word[:i] + rng.choice("aeiounrslt") + word[i + 1 :]
    if kind == 1:  # deletion
        return word[:i] + word[i + 1 :]
    return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]  # transposition


def _swap_digits(born: date, rng: random.Random) -> date:
    for _ in range(20):
        text = born.isoformat()
        choice = rng.randrange(3)
        if choice == 0:  # day and month swapped
            candidate = f"{text[:4]}-{text[8:10]}-{text[5:7]}"
        elif choice == 1:  # the two digits of the day
            candidate = f"{text[:8]}{text[9]}{text[8]}"
        else:  # the last two digits of the year
            candidate = f"{text[:2]}{text[3]}{text[2]}{text[4:]}"
        try:
            swapped = date.fromisoformat(candidate)
        except ValueError:
            continue
        if swapped != born:
            return swapped
    return born


def noisy_record(
    person: Person, institution: str, local_id: str, rng: random.Random, kinds: list[str], curp_rate: float = 1.0
) -> Record:
    record = Record(
        person.key,
        institution,
        local_id,
        list(person.given),
        person.surname1,
        person.surname2,
        person.sex,
        person.birth_date,
        person.state,
        person.curp if rng.random() < curp_rate else None,
        person.nss if institution == "IMSS" else None,
        list(kinds),
    )
    for kind in kinds:
        if kind == "typo":
            if rng.random() < 0.5:
                record = replace(record, given=[_typo(record.given[0], rng), *record.given[1:]])
            else:
                record = replace(record, surname1=_typo(record.surname1, rng))
        elif kind == "swap-surnames":
            record = replace(record, surname1=record.surname2, surname2=record.surname1)
        elif kind == "drop-second-surname":
            record = replace(record, surname2="")
        elif kind == "accents":
            record = replace(
                record,
                given=[_ascii(g) for g in record.given],
                surname1=_ascii(record.surname1),
                surname2=_ascii(record.surname2),
            )
        elif kind == "birth-digits":
            record = replace(record, birth_date=_swap_digits(record.birth_date, rng))
        elif kind == "no-curp":
            record = replace(record, curp=None)
        elif kind == "placeholder-curp":
            record = replace(record, curp=CURP_PLACEHOLDER)
    return record


INSTITUTION_SYSTEMS = {
    "IMSS": "urn:ehr-core:sid:imss:expediente",
    "ISSSTE": "urn:ehr-core:sid:issste:expediente",
    "IMSS-BIENESTAR": "urn:ehr-core:sid:imss-bienestar:expediente",
}


def patient_resource(record: Record, resource_id: str | None = None) -> dict[str, Any]:
    identifiers: list[dict[str, Any]] = []
    if record.curp:
        identifiers.append({"use": "official", "system": CURP_SYSTEM, "value": record.curp})
    if record.nss:
        identifiers.append({"system": NSS_SYSTEM, "value": record.nss})
    identifiers.append({"use": "usual", "system": INSTITUTION_SYSTEMS[record.institution], "value": record.local_id})
    family = " ".join(s for s in (record.surname1, record.surname2) if s)
    resource: dict[str, Any] = {"resourceType": "Patient"}
    if resource_id:
        resource["id"] = resource_id
    resource.update(
        {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                    "valueAddress": {"state": record.state, "country": "MX"},
                }
            ],
            "identifier": identifiers,
            "name": [{"use": "official", "family": family, "given": record.given}],
            "gender": "male" if record.sex == "H" else "female",
            "birthDate": record.birth_date.isoformat(),
        }
    )
    return resource
