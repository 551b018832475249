"""What the load sends: small, realistic Patients, one distinct person per create, and the writer's headers.

Every create is a different person (own CURP, NSS, name, birth date), with valid check digits so the
server's identifier checks run and pass. Identical Patients would be wrong here: the master patient
index links records of the same person, so N copies of one person make each create and read do work in
proportion to N. The bodies all have the same shape and nearly the same size (~850 bytes), and
:func:`sample_stored_event` turns the first into the exact stored event the server appends, so the
baselines insert events of the same size.

Synthetic identities only: names come from short lists, numbers from a counter.
"""

from __future__ import annotations

import itertools
import tempfile
import threading
import unicodedata
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson

__all__ = ["FAMILIES", "TOKEN_CLAIMS", "Credentials", "PatientFactory", "sample_stored_event", "synthetic_patient"]

CURP_SYSTEM = "urn:oid:2.16.840.1.113883.4.629"
NSS_SYSTEM = "urn:ehr-core:sid:imss-nss"
_CURP_ALPHABET = "0123456789ABCDEFGHIJKLMNÑOPQRSTUVWXYZ"

_FAMILY = ["García", "Hernández", "López", "Martínez", "González", "Pérez", "Rodríguez", "Sánchez", "Ramírez",
           "Cruz", "Flores", "Gómez", "Morales", "Vázquez", "Reyes", "Jiménez", "Torres", "Díaz", "Gutiérrez",
           "Ruiz"]  # fmt: skip
#: The first surnames of the synthetic persons (``name.family`` is "first second"): the search workload's terms.
FAMILIES = tuple(_FAMILY)
_GIVEN_F = ["María", "Guadalupe", "Juana", "Margarita", "Verónica", "Leticia", "Rosa", "Fernanda", "Alejandra",
            "Patricia"]  # fmt: skip
_GIVEN_M = ["José", "Juan", "Miguel", "Francisco", "Jesús", "Antonio", "Alejandro", "Pedro", "Manuel",
            "Ricardo"]  # fmt: skip
_STATES = [("DF", "Ciudad de México", "CDMX"), ("JC", "Guadalajara", "JAL"), ("NL", "Monterrey", "NL"),
           ("PL", "Puebla", "PUE"), ("YN", "Mérida", "YUC")]  # fmt: skip
_EPOCH = date(1940, 1, 1)
_DAYS = 21_900  # birth dates 1940-1999 (a digit homoclave); 37 is coprime with it, so i -> date is one-to-one


def _plain(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text.upper()) if c.isalpha() and c.isascii())


def _first_inner(word: str, vowels: bool) -> str:
    for char in word[1:]:
        if (char in "AEIOU") == vowels:
            return char
    return "X"


def curp_check_digit(first17: str) -> int:
    total = sum(_CURP_ALPHABET.index(char) * (18 - i) for i, char in enumerate(first17[:17]))
    return (10 - total % 10) % 10


def nss_check_digit(first10: str) -> int:
    total = 0
    for i, char in enumerate(first10[:10]):
        product = int(char) * (2 if i % 2 else 1)
        total += product - 9 if product >= 10 else product
    return (10 - total % 10) % 10


def synthetic_patient(i: int) -> dict[str, Any]:
    """The ``i``-th synthetic person: distinct CURP and NSS for every ``i`` below 219,000."""
    female = i % 2 == 0
    family, mother = _FAMILY[i % 20], _FAMILY[(i // 20 + 7) % 20]
    given = (_GIVEN_F if female else _GIVEN_M)[(i // 400) % 10]
    born = _EPOCH + timedelta(days=(i * 37) % _DAYS)
    state_code, city, state = _STATES[(i // 7) % len(_STATES)]
    p, m, g = _plain(family), _plain(mother), _plain(given)
    first17 = (
        f"{p[0]}{_first_inner(p, True)}{m[0]}{g[0]}{born:%y%m%d}{'M' if female else 'H'}{state_code}"
        f"{_first_inner(p, False)}{_first_inner(m, False)}{_first_inner(g, False)}{(i // _DAYS) % 10}"
    )
    nss10 = f"{(i // 10_000) % 100:02d}{(born.year + 18) % 100:02d}{born:%y}{i % 10_000:04d}"
    return {
        "resourceType": "Patient",
        "identifier": [
            {"use": "official", "system": CURP_SYSTEM, "value": first17 + str(curp_check_digit(first17))},
            {"system": NSS_SYSTEM, "value": nss10 + str(nss_check_digit(nss10))},
        ],
        "active": True,
        "name": [{"use": "official", "family": f"{family} {mother}", "given": [given]}],
        "telecom": [
            {"system": "phone", "value": f"+52 55 {i % 10_000:04d} {(i * 7) % 10_000:04d}", "use": "mobile"},
            {"system": "email", "value": f"{p.lower()}.{g.lower()}.{i}@example.mx"},
        ],
        "gender": "female" if female else "male",
        "birthDate": born.isoformat(),
        "address": [
            {
                "use": "home",
                "line": [f"Av. Insurgentes Sur {1 + i % 4000}", f"Int. {1 + i % 20}"],
                "city": city,
                "state": state,
                "postalCode": f"{3100 + i % 900:05d}",
                "country": "MX",
            }
        ],
        "maritalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]
        },
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es-MX"}]}}],
    }


class PatientFactory:
    """Serialised synthetic Patients, a new person each call (thread-safe; one factory per server run)."""

    def __init__(self, start: int = 0) -> None:
        self._counter = itertools.count(start)
        self._lock = threading.Lock()

    def __call__(self) -> bytes:
        with self._lock:
            i = next(self._counter)
        return orjson.dumps(synthetic_patient(i))


_WRITER = {
    "X-EHR-Institution": "IMSS",
    "X-EHR-Unit": "DFIMS000123",
    "X-EHR-User": "bench-clinician-0001",
    "X-EHR-Role": "physician",
    "X-EHR-Purpose": "TREAT",
}

#: The same writer as claims of a bearer token (``ehr token`` options).
TOKEN_CLAIMS = {
    "institution": "IMSS",
    "unit": "DFIMS000123",
    "user": "bench-clinician-0001",
    "role": "physician",
    "purpose": "TREAT",
    "scope": "user/*.cruds",
}


@dataclass(frozen=True)
class Credentials:
    """How requests say who sends them: a bearer token (the default, as in production), or, with
    authentication disabled for development, the ``X-EHR-*`` headers."""

    token: str | None

    def _who(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else dict(_WRITER)

    def create(self) -> dict[str, str]:
        """Headers of one create (a fresh request id each time, as a real client sends)."""
        return {
            "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+json",
            **self._who(),
            "X-Request-ID": uuid4().hex,
        }

    def read(self) -> dict[str, str]:
        return {"Accept": "application/fhir+json", **self._who()}


def sample_stored_event() -> tuple[str, bytes, int]:
    """(topic, state, body bytes) of the event a create of the first synthetic Patient appends.

    Built by the project's own code (``prepare_create`` and the application's mapper), not imitated.
    """
    from ehr_core.application import RecordApplication
    from ehr_core.context import WriteContext
    from ehr_core.settings import Settings

    context = WriteContext(
        institution=_WRITER["X-EHR-Institution"],
        unit=_WRITER["X-EHR-Unit"],
        user=_WRITER["X-EHR-User"],
        role=_WRITER["X-EHR-Role"],
        purpose=_WRITER["X-EHR-Purpose"],
        request_id=uuid4().hex,
        address="127.0.0.1",
        interaction="create",
    )
    body = PatientFactory()()
    with tempfile.TemporaryDirectory(prefix="ehr-bench-sample-") as directory:
        application = RecordApplication(Settings(data_dir=Path(directory)))
        try:
            pending = application.prepare_create(orjson.loads(body), context, "Patient")
            assert pending.stream is not None
            event = pending.stream.collect_events()[0]
            stored = application.mapper.to_stored_event(event)
        finally:
            application.close()
    return stored.topic, bytes(stored.state), len(body)
