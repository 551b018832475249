"""A Bulk Data export in the shape of the SMART sample bulk data, generated (no third-party data copied).

The SMART sample exports (Synthea output through a Bulk Data server) are one NDJSON file per type. Their
Encounters name their practitioner, location and organization by conditional reference:
``Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|…``, ``Location?identifier=https://github.com/
synthetichealth/synthea|…``, ``Organization?identifier=…``, and their patient by ``Patient/{id}``. Files are
named by type, so in name order the Encounters come first and each Location comes before the Organization
that manages it: an importer that loads files as listed meets references to what is not loaded yet.

Run as a script to write a sample: ``python -m tests.support.bulk_sample DIRECTORY [ENCOUNTERS]``.
"""

from __future__ import annotations

import json
import random
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NPI", "SYNTHEA", "BulkSample", "write_bulk_sample"]

NPI = "http://hl7.org/fhir/sid/us-npi"
SYNTHEA = "https://github.com/synthetichealth/synthea"
ORGANIZATION_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"

_FAMILIES = ["García", "Hernández", "López", "Martínez", "González", "Pérez", "Rodríguez", "Sánchez", "Ramírez"]
_GIVEN = ["María", "José", "Juan", "Guadalupe", "Francisco", "Ana", "Luis", "Rosa", "Carlos", "Elena"]
_TYPES = [
    ("185349003", "Encounter for check up (procedure)"),
    ("162673000", "General examination of patient (procedure)"),
    ("410620009", "Well child visit (procedure)"),
    ("185345009", "Encounter for symptom (procedure)"),
]


@dataclass
class BulkSample:
    """What was written, for a test to check the import against."""

    directory: Path
    lines: int = 0
    #: Practitioner id -> ids of the Encounters naming it as participant.
    encounters_of: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: Conditional references written (every one must resolve).
    conditional_references: int = 0


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _name(rng: random.Random, prefix: str | None = None) -> dict[str, Any]:
    name: dict[str, Any] = {"use": "official", "family": rng.choice(_FAMILIES), "given": [rng.choice(_GIVEN)]}
    if prefix:
        name["prefix"] = [prefix]
    return name


def _display(name: dict[str, Any]) -> str:
    return " ".join([*name.get("prefix", []), *name["given"], name["family"]])


def _write(path: Path, resources: list[dict[str, Any]]) -> int:
    with path.open("w", encoding="utf-8") as out:
        for resource in resources:
            out.write(json.dumps(resource, ensure_ascii=False, separators=(",", ":")) + "\n")
    return len(resources)


def write_bulk_sample(
    directory: Path, encounters: int = 300, seed: int = 2019, unknown_npi: str | None = None
) -> BulkSample:
    """Write Organization, Location, Practitioner, Patient and Encounter NDJSON into ``directory``.

    ``unknown_npi``: also one Encounter (the last line) whose participant names an NPI no Practitioner has.
    """
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    sample = BulkSample(directory)

    organizations = []
    for number in range(8):
        organizations.append(
            {
                "resourceType": "Organization",
                "id": _uuid(rng),
                "identifier": [{"system": SYNTHEA, "value": _uuid(rng)}],
                "active": True,
                "type": [_concept(ORGANIZATION_TYPE, "prov", "Healthcare Provider")],
                "name": f"CLINICA SAN RAFAEL {number + 1}",
                "address": [{"line": [f"{100 + number} Calle Juárez"], "city": "Puebla", "country": "MX"}],
            }
        )
    locations = []
    for organization in organizations:
        org_id = organization["identifier"][0]["value"]
        locations.append(
            {
                "resourceType": "Location",
                "id": _uuid(rng),
                "identifier": [{"system": SYNTHEA, "value": _uuid(rng)}],
                "status": "active",
                "name": organization["name"],
                "managingOrganization": {
                    "reference": f"Organization?identifier={SYNTHEA}|{org_id}",
                    "display": organization["name"],
                },
            }
        )
        sample.conditional_references += 1
    practitioners = []
    for number in range(24):
        name = _name(rng, "Dr.")
        practitioners.append(
            {
                "resourceType": "Practitioner",
                "id": _uuid(rng),
                "identifier": [{"system": NPI, "value": str(9999990000 + 17 * number)}],
                "active": True,
                "name": [name],
                "gender": rng.choice(["male", "female"]),
            }
        )
    patients = []
    for _ in range(max(1, encounters // 5)):
        name = _name(rng)
        patients.append(
            {
                "resourceType": "Patient",
                "id": _uuid(rng),
                "identifier": [{"system": SYNTHEA, "value": _uuid(rng)}],
                "name": [name],
                "gender": rng.choice(["male", "female"]),
                "birthDate": f"{rng.randint(1940, 2015)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            }
        )
    visits = []
    for _ in range(encounters):
        patient, practitioner = rng.choice(patients), rng.choice(practitioners)
        site = rng.randrange(len(organizations))
        organization, location = organizations[site], locations[site]
        code, text = rng.choice(_TYPES)
        day = f"20{rng.randint(10, 19)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        period = {"start": f"{day}T09:00:00-06:00", "end": f"{day}T09:30:00-06:00"}
        npi = practitioner["identifier"][0]["value"]
        encounter = {
            "resourceType": "Encounter",
            "id": _uuid(rng),
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [_concept("http://snomed.info/sct", code, text)],
            "subject": {"reference": f"Patient/{patient['id']}", "display": _display(patient["name"][0])},
            "participant": [
                {
                    "type": [_concept(PARTICIPATION, "PPRF", "primary performer")],
                    "period": period,
                    "individual": {
                        "reference": f"Practitioner?identifier={NPI}|{npi}",
                        "display": _display(practitioner["name"][0]),
                    },
                }
            ],
            "period": period,
            "location": [
                {
                    "location": {
                        "reference": f"Location?identifier={SYNTHEA}|{location['identifier'][0]['value']}",
                        "display": location["name"],
                    }
                }
            ],
            "serviceProvider": {
                "reference": f"Organization?identifier={SYNTHEA}|{organization['identifier'][0]['value']}",
                "display": organization["name"],
            },
        }
        visits.append(encounter)
        sample.encounters_of[practitioner["id"]].append(encounter["id"])
        sample.conditional_references += 3
    if unknown_npi is not None:
        orphan = json.loads(json.dumps(visits[0]))
        orphan["id"] = _uuid(rng)
        orphan["participant"][0]["individual"] = {"reference": f"Practitioner?identifier={NPI}|{unknown_npi}"}
        visits.append(orphan)
    sample.lines += _write(directory / "Organization.ndjson", organizations)
    sample.lines += _write(directory / "Location.ndjson", locations)
    sample.lines += _write(directory / "Practitioner.ndjson", practitioners)
    sample.lines += _write(directory / "Patient.ndjson", patients)
    sample.lines += _write(directory / "Encounter.ndjson", visits)
    return sample


if __name__ == "__main__":
    written = write_bulk_sample(Path(sys.argv[1]), *(int(arg) for arg in sys.argv[2:3]))
    print(f"{written.lines} lines, {written.conditional_references} conditional references in {written.directory}")
