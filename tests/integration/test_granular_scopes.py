"""SMART v2 granular scopes (App Launch 2.0 §Finer-grained resource constraints using search parameters):
``Observation.rs?category=laboratory`` reaches laboratory Observations through a search held to the constraint
and nothing else — not other categories, not a plain read, not _include/_revinclude, $everything or $export."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.auth import mint_development_token
from tests.support.access import staff_headers

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def _observation(oid: str, category: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": "Patient/p1"},
    }


@pytest.fixture
def world(secured_client: tuple[TestClient, Settings]) -> tuple[TestClient, Settings]:
    client, settings = secured_client
    staff = staff_headers(settings, "IMSS")
    for resource in (
        {"resourceType": "Patient", "id": "p1"},
        _observation("o-lab", "laboratory"),
        _observation("o-vital", "vital-signs"),
    ):
        answer = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers=staff)
        assert answer.status_code in (200, 201), answer.text
    return client, settings


def _headers(settings: Settings, scope: str, patient: str | None = None) -> dict[str, str]:
    claims = {"institution": "IMSS", "user": "app", "scope": scope, **({"patient": patient} if patient else {})}
    return {"Authorization": f"Bearer {mint_development_token(settings, claims)}"}


def _ids(answer: Any, resource_type: str) -> set[str]:
    assert answer.status_code == 200, answer.text
    return {
        e["resource"]["id"] for e in answer.json().get("entry", []) if e["resource"]["resourceType"] == resource_type
    }


def test_a_constrained_user_scope_reaches_only_searches_held_to_it(world: tuple[TestClient, Settings]) -> None:
    client, settings = world
    lab = _headers(settings, "user/Observation.rs?category=laboratory")
    assert _ids(client.get("/fhir/Observation?category=laboratory", headers=lab), "Observation") == {"o-lab"}
    for refused in (
        "/fhir/Observation",
        "/fhir/Observation?category=vital-signs",
        "/fhir/Observation?category=laboratory,vital-signs",
        "/fhir/Observation/o-lab",
        "/fhir/Observation?category=laboratory&_include=Observation:subject",
        "/fhir/Patient/p1/$everything",
    ):
        answer = client.get(refused, headers=lab)
        assert answer.status_code == 403, (refused, answer.text)
        assert answer.json()["resourceType"] == "OperationOutcome"


def test_a_constrained_scope_never_widens_another_scopes_includes(world: tuple[TestClient, Settings]) -> None:
    client, settings = world
    both = _headers(settings, "user/Patient.rs user/Observation.rs?category=laboratory")
    answer = client.get("/fhir/Patient?_id=p1&_revinclude=Observation:subject", headers=both)
    assert _ids(answer, "Patient") == {"p1"}
    assert _ids(answer, "Observation") == set()


def test_a_constrained_patient_scope_stays_in_the_compartment_and_the_constraint(
    world: tuple[TestClient, Settings],
) -> None:
    client, settings = world
    app = _headers(settings, "patient/Patient.rs patient/Observation.rs?category=laboratory", patient="p1")
    answer = client.get("/fhir/Observation?category=laboratory&patient=p1", headers=app)
    assert _ids(answer, "Observation") == {"o-lab"}
    assert client.get("/fhir/Observation?category=vital-signs&patient=p1", headers=app).status_code == 403
    assert client.get("/fhir/Patient/p1/$everything", headers=app).status_code == 403


def test_a_constrained_system_scope_does_not_export(world: tuple[TestClient, Settings]) -> None:
    client, settings = world
    system = _headers(settings, "system/Observation.rs?category=laboratory")
    headers = {**system, "Prefer": "respond-async", "Accept": "application/fhir+json"}
    assert client.get("/fhir/$export?_type=Observation", headers=headers).status_code == 403
