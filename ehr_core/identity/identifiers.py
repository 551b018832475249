"""Mexican identifiers: CURP, NSS, CLUES, RFC (DOMAIN.md "Identifiers").

A system validates these keys; it never generates one for a real person (NOM-024). Each ``parse_*`` raises
:class:`InvalidIdentifier` naming what is wrong; each ``is_valid_*`` answers yes or no.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

__all__ = [
    "CLUES_SYSTEM",
    "CURP_PLACEHOLDER",
    "CURP_SYSTEM",
    "NSS_SYSTEM",
    "RFC_SYSTEM",
    "STATES",
    "Curp",
    "InvalidIdentifier",
    "curp_check_digit",
    "is_curp_placeholder",
    "is_valid_clues",
    "is_valid_curp",
    "is_valid_nss",
    "is_valid_rfc",
    "nss_check_digit",
    "parse_clues",
    "parse_curp",
    "parse_nss",
    "parse_rfc",
    "rfc_check_digit",
]

CURP_SYSTEM = "urn:oid:2.16.840.1.113883.4.629"
RFC_SYSTEM = "urn:oid:2.16.840.1.113883.4.630"
CLUES_SYSTEM = "urn:oid:2.16.840.1.113883.4.631"
#: NSS has no registered OID (DESIGN.md): the project's own URI.
NSS_SYSTEM = "urn:ehr-core:sid:imss-nss"

#: The placeholder for an unknown CURP: accepted, never linked on.
CURP_PLACEHOLDER = "XXXX999999XXXXXX99"

#: States of birth as written in the CURP (and the first two characters of a CLUES); NE = born abroad.
STATES: dict[str, str] = {
    "AS": "Aguascalientes",
    "BC": "Baja California",
    "BS": "Baja California Sur",
    "CC": "Campeche",
    "CL": "Coahuila",
    "CM": "Colima",
    "CS": "Chiapas",
    "CH": "Chihuahua",
    "DF": "Ciudad de México",
    "DG": "Durango",
    "GT": "Guanajuato",
    "GR": "Guerrero",
    "HG": "Hidalgo",
    "JC": "Jalisco",
    "MC": "Estado de México",
    "MN": "Michoacán",
    "MS": "Morelos",
    "NT": "Nayarit",
    "NL": "Nuevo León",
    "OC": "Oaxaca",
    "PL": "Puebla",
    "QT": "Querétaro",
    "QR": "Quintana Roo",
    "SP": "San Luis Potosí",
    "SL": "Sinaloa",
    "SR": "Sonora",
    "TC": "Tabasco",
    "TS": "Tamaulipas",
    "TL": "Tlaxcala",
    "VZ": "Veracruz",
    "YN": "Yucatán",
    "ZS": "Zacatecas",
}
_CURP_STATES = frozenset(STATES) | {"NE"}

_CURP_ALPHABET = "0123456789ABCDEFGHIJKLMNÑOPQRSTUVWXYZ"
_RFC_ALPHABET = "0123456789ABCDEFGHIJKLMN&OPQRSTUVWXYZ Ñ"

_CURP_SHAPE = re.compile(r"^[A-ZÑ]{4}\d{6}[HMX][A-Z]{2}[A-ZÑ]{3}[0-9A-Z]\d$")
_NSS_SHAPE = re.compile(r"^\d{11}$")
_CLUES_SHAPE = re.compile(r"^([A-Z]{2})([A-Z]{3})(\d{6})$")
_RFC_SHAPE = re.compile(r"^([A-ZÑ&]{3,4})(\d{6})([A-Z0-9]{2})([0-9A])$")


class InvalidIdentifier(ValueError):
    """The value is not a well-formed identifier of its kind; the message says why."""


@dataclass(frozen=True)
class Curp:
    value: str
    birth_date: date
    sex: str  # H, M or X
    state: str  # a key of STATES, or NE

    @property
    def born_abroad(self) -> bool:
        return self.state == "NE"


def curp_check_digit(first17: str) -> int:
    """Σ value(cᵢ)·(19-i) over the first 17 characters; digit = (10 - S mod 10) mod 10."""
    total = sum(_CURP_ALPHABET.index(char) * (18 - i) for i, char in enumerate(first17[:17]))
    return (10 - total % 10) % 10


def is_curp_placeholder(value: str) -> bool:
    return value.strip().upper() == CURP_PLACEHOLDER


def parse_curp(value: str) -> Curp:
    """A valid CURP (format, state, real birth date, check digit); the placeholder is *not* valid here."""
    if not isinstance(value, str):
        raise InvalidIdentifier("a CURP is a string")
    if value == CURP_PLACEHOLDER:
        raise InvalidIdentifier("the placeholder XXXX999999XXXXXX99 stands for an unknown CURP")
    if len(value) != 18:
        raise InvalidIdentifier(f"a CURP has 18 characters, this one has {len(value)}")
    if not _CURP_SHAPE.match(value):
        raise InvalidIdentifier("not in the CURP format (4 letters, YYMMDD, sex H/M/X, state, 3 letters, 2 more)")
    state = value[11:13]
    if state not in _CURP_STATES:
        raise InvalidIdentifier(f"unknown state of birth {state!r}")
    # The homoclave tells the century: a digit for births before 2000, a letter from 2000.
    century = 1900 if value[16].isdigit() else 2000
    try:
        born = date(century + int(value[4:6]), int(value[6:8]), int(value[8:10]))
    except ValueError:
        raise InvalidIdentifier(f"birth date {value[4:10]} (YYMMDD) is not a real date") from None
    expected = curp_check_digit(value)
    if int(value[17]) != expected:
        raise InvalidIdentifier(f"check digit is {value[17]}, expected {expected}")
    return Curp(value, born, value[10], state)


def is_valid_curp(value: str) -> bool:
    try:
        parse_curp(value)
    except InvalidIdentifier:
        return False
    return True


def nss_check_digit(first10: str) -> int:
    """Luhn over the first 10 digits: weights 1,2,1,2…, products ≥ 10 minus 9."""
    total = 0
    for i, char in enumerate(first10[:10]):
        product = int(char) * (2 if i % 2 else 1)
        total += product - 9 if product >= 10 else product
    return (10 - total % 10) % 10


def parse_nss(value: str) -> str:
    if not isinstance(value, str) or not _NSS_SHAPE.match(value):
        raise InvalidIdentifier("an NSS is 11 digits")
    expected = nss_check_digit(value)
    if int(value[10]) != expected:
        raise InvalidIdentifier(f"check digit is {value[10]}, expected {expected}")
    return value


def is_valid_nss(value: str) -> bool:
    try:
        parse_nss(value)
    except InvalidIdentifier:
        return False
    return True


def parse_clues(value: str) -> tuple[str, str, str]:
    """(state, institution, sequence) of a CLUES: 2 letters (CURP state codes), 3 letters, 6 digits."""
    match = _CLUES_SHAPE.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidIdentifier("a CLUES is 11 characters: state (2 letters), institution (3 letters), 6 digits")
    if match.group(1) not in STATES:
        raise InvalidIdentifier(f"unknown state {match.group(1)!r}")
    return match.group(1), match.group(2), match.group(3)


def is_valid_clues(value: str) -> bool:
    try:
        parse_clues(value)
    except InvalidIdentifier:
        return False
    return True


def rfc_check_digit(first: str) -> str:
    """Mod 11 over the RFC without its check digit, left-padded with spaces to 12 characters."""
    padded = first.rjust(12)[-12:]
    total = sum(_RFC_ALPHABET.index(char) * (13 - i) for i, char in enumerate(padded))
    digit = (11 - total % 11) % 11
    return "A" if digit == 10 else str(digit)


def parse_rfc(value: str) -> str:
    """An RFC of a person (13 characters) or a company (12): letters, YYMMDD, homoclave, check digit."""
    match = _RFC_SHAPE.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidIdentifier("an RFC is 3-4 letters, YYMMDD, a 2-character homoclave and a check digit")
    digits = match.group(2)
    try:
        # Either century: the RFC does not say which.
        date(2000 + int(digits[:2]), int(digits[2:4]), int(digits[4:6]))
    except ValueError:
        try:
            date(1900 + int(digits[:2]), int(digits[2:4]), int(digits[4:6]))
        except ValueError:
            raise InvalidIdentifier(f"date {digits} (YYMMDD) is not a real date") from None
    expected = rfc_check_digit(value[:-1])
    if value[-1] != expected:
        raise InvalidIdentifier(f"check digit is {value[-1]}, expected {expected}")
    return value


def is_valid_rfc(value: str) -> bool:
    try:
        parse_rfc(value)
    except InvalidIdentifier:
        return False
    return True
