"""What the matcher compares: a Patient record reduced to folded names, birth date, sex, state and CURP."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from ehr_core.identity.identifiers import CURP_PLACEHOLDER, CURP_SYSTEM, STATES, InvalidIdentifier, parse_curp

__all__ = ["Features", "fold", "patient_features"]

FATHERS_FAMILY = "http://hl7.org/fhir/StructureDefinition/humanname-fathers-family"
MOTHERS_FAMILY = "http://hl7.org/fhir/StructureDefinition/humanname-mothers-family"
BIRTH_PLACE = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"

# Particles of compound surnames ("de la Cruz"), ignored when comparing.
_PARTICLES = frozenset({"DE", "DEL", "LA", "LAS", "LOS", "Y", "MC", "VAN", "VON"})
_NOT_LETTER = re.compile(r"[^A-Z ]+")
_SEX = {"male": "H", "female": "M", "other": "X"}


def fold(text: str) -> str:
    """Upper case, accents and Ñ folded, particles and punctuation dropped: ``Peña de la O`` → ``PENA O``."""
    decomposed = unicodedata.normalize("NFKD", text.upper())
    letters = "".join(char for char in decomposed if not unicodedata.combining(char))
    words = _NOT_LETTER.sub(" ", letters).split()
    return " ".join(word for word in words if word not in _PARTICLES)


# State names folded like the value they are looked up with ("Ciudad de México" → "CIUDAD MEXICO").
_STATE_NAMES = {fold(name): code for code, name in STATES.items()}


@dataclass(frozen=True)
class Features:
    given: str = ""
    surname1: str = ""
    surname2: str = ""
    birth_date: str = ""  # YYYY-MM-DD, "" when unknown
    sex: str = ""  # H, M, X or ""
    state: str = ""  # CURP state code or ""
    #: A valid CURP, else "".
    curp: str = ""
    #: "valid", "placeholder", "invalid" or "absent".
    curp_status: str = "absent"
    identifiers: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Features:
        values = dict(data)
        values["identifiers"] = [tuple(pair) for pair in values.get("identifiers", [])]
        return cls(**values)

    def to_json(self) -> str:
        """The features as the index stores them (``from_json`` reads them back)."""
        return orjson.dumps(self).decode()  # a dataclass, written as ``as_dict`` would be, in native code

    @staticmethod
    def from_json(text: str | bytes) -> Features:
        """The features stored as ``text``: parsed once per distinct text in this process.

        Every Patient written is compared with the records sharing a blocking key (a common surname and
        given name, a birth date), so the same few records' features are read back for one create after
        another; parsing them each time was a fifth of the index's work per create."""
        return _parsed(text if isinstance(text, str) else text.decode())


@lru_cache(maxsize=2048)  # ~1.4 KiB each with its text: under 3 MiB for the records most often compared
def _parsed(text: str) -> Features:
    return Features.from_dict(orjson.loads(text))


def _state(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    upper = value.strip().upper()
    if upper in STATES or upper == "NE":
        return upper
    return _STATE_NAMES.get(fold(value), "")


def _name(resource: dict[str, Any]) -> tuple[str, str, str]:
    names = [n for n in resource.get("name") or [] if isinstance(n, dict)]
    if not names:
        return "", "", ""
    chosen = next((n for n in names if n.get("use") == "official"), names[0])
    given = fold(" ".join(g for g in chosen.get("given") or [] if isinstance(g, str)))
    fathers = mothers = ""
    for extension in (chosen.get("_family") or {}).get("extension") or []:
        if extension.get("url") == FATHERS_FAMILY:
            fathers = fold(str(extension.get("valueString", "")))
        elif extension.get("url") == MOTHERS_FAMILY:
            mothers = fold(str(extension.get("valueString", "")))
    if not fathers:
        words = fold(str(chosen.get("family") or "")).split()
        fathers = words[0] if words else ""
        mothers = mothers or " ".join(words[1:])
    return given, fathers, mothers


def patient_features(resource: dict[str, Any]) -> Features:
    given, surname1, surname2 = _name(resource)
    birth = resource.get("birthDate")
    birth_date = birth[:10] if isinstance(birth, str) and len(birth) >= 10 else ""
    sex = _SEX.get(str(resource.get("gender")), "")
    state = ""
    for extension in resource.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == BIRTH_PLACE:
            state = _state((extension.get("valueAddress") or {}).get("state"))
    curp, status = "", "absent"
    identifiers: list[tuple[str, str]] = []
    for identifier in resource.get("identifier") or []:
        if not isinstance(identifier, dict):
            continue
        system, value = identifier.get("system"), identifier.get("value")
        if not isinstance(system, str) or not isinstance(value, str):
            continue
        identifiers.append((system, value))
        if system != CURP_SYSTEM or status == "valid":
            continue
        if value == CURP_PLACEHOLDER:
            status = "placeholder"
            continue
        try:
            parsed = parse_curp(value)
        except InvalidIdentifier:
            status = "invalid"
            continue
        curp, status = parsed.value, "valid"
        state = state or parsed.state
        sex = sex or parsed.sex
    return Features(given, surname1, surname2, birth_date, sex, state, curp, status, identifiers)
