"""The HTTP workloads beyond create and read, the same for ehr-core and for a peer FHIR R4 server.

- search: ``GET [base]/Patient?family=X&_count=20`` (R4 §3.1.1.5.5 string search: starts with, case and
  accents aside), X one of the synthetic persons' first surnames (each matches a twentieth of them);
- transaction: ``POST [base]`` of a consultation-sized transaction Bundle (R4 §3.1.0.11) of
  :data:`CONSULTATION_RESOURCES` resources for one already stored Patient: an Encounter, the Conditions
  diagnosed, the Observations taken and the MedicationRequests written, each pointing at the Encounter by
  its ``urn:uuid`` fullUrl (R4 §3.1.0.11.2: the server assigns ids and rewrites the references);
- everything: ``GET [base]/Patient/{id}/$everything`` over the Patients a transaction wrote to.

Only standard FHIR R4 is sent (no ``X-EHR-*`` header is needed with a bearer token), so any server answers.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import orjson

from bench.loadgen import Load, Reply, Session
from bench.payload import FAMILIES, Credentials
from bench.stats import Measurement

__all__ = [
    "CONSULTATION_RESOURCES",
    "clinical_figures",
    "consultation",
    "everything_load",
    "search_load",
    "transaction_load",
]

UCUM = "http://unitsofmeasure.org"
_CONDITIONS = (
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("I10", "Essential (primary) hypertension"),
    ("E78.5", "Hyperlipidaemia, unspecified"),
)
_OBSERVATIONS = (
    ("8480-6", "Systolic blood pressure", 128, "mm[Hg]"),
    ("8462-4", "Diastolic blood pressure", 82, "mm[Hg]"),
    ("29463-7", "Body weight", 78.5, "kg"),
    ("8302-2", "Body height", 168, "cm"),
    ("8867-4", "Heart rate", 72, "/min"),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", 7.1, "%"),
)
_MEDICATIONS = (
    ("860975", "metformin hydrochloride 500 MG Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("617312", "atorvastatin 20 MG Oral Tablet"),
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("310965", "ibuprofen 200 MG Oral Tablet"),
)
#: Resources in one consultation: the Encounter, its Conditions, Observations and MedicationRequests.
CONSULTATION_RESOURCES = 1 + len(_CONDITIONS) + len(_OBSERVATIONS) + len(_MEDICATIONS)


def _entry(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"fullUrl": full_url or f"urn:uuid:{uuid.uuid4()}", "resource": resource}
    entry["request"] = {"method": "POST", "url": resource["resourceType"]}
    return entry


def consultation(patient_id: str, when: str = "2026-12-01T10:00:00-06:00") -> bytes:
    """A transaction Bundle of one consultation of ``Patient/patient_id``."""
    subject = {"reference": f"Patient/{patient_id}"}
    encounter_url = f"urn:uuid:{uuid.uuid4()}"
    encounter = {"reference": encounter_url}
    entries = [
        _entry(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": subject,
                "period": {"start": when, "end": when},
            },
            encounter_url,
        )
    ]
    for code, text in _CONDITIONS:
        entries.append(
            _entry(
                {
                    "resourceType": "Condition",
                    "clinicalStatus": {
                        "coding": [
                            {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
                        ]
                    },
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}], "text": text},
                    "subject": subject,
                    "encounter": encounter,
                    "recordedDate": when,
                }
            )
        )
    for code, text, value, unit in _OBSERVATIONS:
        entries.append(
            _entry(
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": text},
                    "subject": subject,
                    "encounter": encounter,
                    "effectiveDateTime": when,
                    "valueQuantity": {
                        "value": value,
                        "unit": unit,
                        "system": "http://unitsofmeasure.org",
                        "code": unit,
                    },
                }
            )
        )
    for code, text in _MEDICATIONS:
        entries.append(
            _entry(
                {
                    "resourceType": "MedicationRequest",
                    "status": "active",
                    "intent": "order",
                    "medicationCodeableConcept": {
                        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code}],
                        "text": text,
                    },
                    "subject": subject,
                    "encounter": encounter,
                    "authoredOn": when,
                }
            )
        )
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def search_load(credentials: Credentials, seed: int = 11) -> Load:
    """``GET /Patient?family=X&_count=20``, X chosen at random among the synthetic first surnames."""
    chooser = random.Random(seed)
    headers = credentials.read()
    paths = [f"/Patient?family={quote(family)}&_count=20" for family in FAMILIES]
    return Load("search", lambda session: session.get(chooser.choice(paths), headers=headers), 200)


def transaction_load(patient_ids: list[str], credentials: Credentials) -> Load:
    """``POST /`` of a consultation for each of ``patient_ids`` in turn; ``created`` lists the Patients
    that were sent one, in order (the $everything load reads those)."""
    if not patient_ids:
        raise ValueError("no Patients to write consultations for")
    turn = itertools.cycle(patient_ids)

    def send(session: Session) -> Awaitable[Reply]:
        patient = next(turn)
        if len(load.created) < len(patient_ids):
            load.created.append(patient)
        return session.post("", content=consultation(patient), headers=credentials.create())

    load = Load("transaction", send, 200)
    return load


def everything_load(patient_ids: list[str], credentials: Credentials, seed: int = 13) -> Load:
    """``GET /Patient/{id}/$everything`` over ``patient_ids`` chosen uniformly at random."""
    if not patient_ids:
        raise ValueError("no Patients for $everything")
    chooser = random.Random(seed)
    headers = credentials.read()
    return Load(
        "everything",
        lambda session: session.get(f"/Patient/{chooser.choice(patient_ids)}/$everything", headers=headers),
        200,
    )


def clinical_figures(
    patient_ids: list[str], credentials: Credentials, concurrency: int, measure: Callable[[Load, int], Measurement]
) -> None:
    """The search, then consultations written to ``patient_ids``, then $everything of those Patients, at
    ``concurrency`` clients; ``measure`` runs one load (warm-up and window) and keeps its measurement."""
    measure(search_load(credentials), concurrency)
    consultations = transaction_load(patient_ids, credentials)
    measure(consultations, concurrency).notes["resources_per_request"] = CONSULTATION_RESOURCES
    measure(everything_load(consultations.created or patient_ids, credentials), concurrency)
