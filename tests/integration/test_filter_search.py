"""``_filter`` over HTTP on both backends (R4 search_filter.html): comparisons over the type's own
search parameters, combined with ``and``, ``or``, ``not`` and parentheses."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient


def _put(client: TestClient, resource: dict[str, Any]) -> None:
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
    assert response.status_code in (200, 201), response.text


def _ids(client: TestClient, resource_type: str, expression: str) -> list[str]:
    response = client.get(f"/fhir/{resource_type}", params={"_filter": expression})
    assert response.status_code == 200, response.text
    return sorted(e["resource"]["id"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match")


@pytest.fixture
def patients(client: TestClient) -> TestClient:
    people = [
        ("gomez", "Gómez", "Ana", "1948-03-01", "female"),
        ("gomora", "Gomora", "Luis", "1962-07-15", "male"),
        ("lagoma", "Lagomarsino", "Eva", "1990-01-20", "female"),
        ("perez", "Pérez", "Juan", "1975-11-30", "male"),
    ]
    for resource_id, family, given, birth, gender in people:
        _put(
            client,
            {
                "resourceType": "Patient",
                "id": resource_id,
                "name": [{"family": family, "given": [given]}],
                "birthDate": birth,
                "gender": gender,
            },
        )
    _put(client, {"resourceType": "Patient", "id": "nameless", "gender": "unknown"})
    return client


def test_the_example_contains_and_date(patients: TestClient) -> None:
    assert _ids(patients, "Patient", 'name co "gom" and birthdate ge 1950') == ["gomora", "lagoma"]
    # The same answer as the plain parameters.
    plain = patients.get("/fhir/Patient", params={"name:contains": "gom", "birthdate": "ge1950"}).json()
    assert sorted(e["resource"]["id"] for e in plain["entry"]) == ["gomora", "lagoma"]


def test_or_not_and_parentheses(patients: TestClient) -> None:
    client = patients
    assert _ids(client, "Patient", 'family sw "gom" or gender eq female') == ["gomez", "gomora", "lagoma"]
    assert _ids(client, "Patient", "not (gender eq male)") == ["gomez", "lagoma", "nameless"]
    assert _ids(client, "Patient", 'name co "gom" and not (gender eq female)') == ["gomora"]
    # and binds tighter than or; parentheses say otherwise.
    assert _ids(client, "Patient", "gender eq unknown or gender eq male and birthdate lt 1970") == [
        "gomora",
        "nameless",
    ]
    assert _ids(client, "Patient", "(gender eq unknown or gender eq male) and birthdate lt 1970") == ["gomora"]
    assert _ids(client, "Patient", 'family eq "GOMEZ"') == ["gomez"]  # eq: the whole value, folded
    assert _ids(client, "Patient", 'family ew "ino"') == ["lagoma"]
    assert _ids(client, "Patient", "family ne perez and family pr true") == ["gomez", "gomora", "lagoma"]
    assert _ids(client, "Patient", "family pr false") == ["nameless"]
    assert _ids(client, "Patient", "birthdate sa 1975-12-31 or birthdate eb 1949") == ["gomez", "lagoma"]
    assert _ids(client, "Patient", "_id eq perez") == ["perez"]
    assert _ids(client, "Patient", "gender ne male and gender ne female") == ["nameless"]


def test_references_and_chains(patients: TestClient) -> None:
    client = patients
    for resource_id, patient in (("o1", "gomez"), ("o2", "perez")):
        observation = {
            "resourceType": "Observation",
            "id": resource_id,
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "valueQuantity": {"value": 70 if patient == "gomez" else 90, "unit": "kg"},
        }
        _put(client, observation)
    assert _ids(client, "Observation", "subject eq Patient/gomez") == ["o1"]
    assert _ids(client, "Observation", 'subject.name sw "pér"') == ["o2"]
    assert _ids(client, "Observation", "code eq http://loinc.org|29463-7 and value-quantity gt 80") == ["o2"]
    assert _ids(client, "Observation", "subject ne Patient/gomez") == ["o2"]


def test_self_link_and_combination(patients: TestClient) -> None:
    expression = 'name co "gom" and birthdate ge 1950'
    bundle = patients.get("/fhir/Patient", params={"_filter": expression, "gender": "male"}).json()
    assert sorted(e["resource"]["id"] for e in bundle["entry"]) == ["gomora"]
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert "_filter=name+co+%22gom%22+and+birthdate+ge+1950" in self_link and "gender=male" in self_link


@pytest.mark.parametrize(
    ("expression", "code", "named"),
    [
        ('name co "gom" and', "invalid", "malformed"),
        ('name co "gom', "invalid", "unterminated"),
        ("(gender eq male", "invalid", "')'"),
        ("gender xx male", "invalid", "xx"),
        ("birthdate ge notadate", "invalid", "birthdate"),
        ("nickname eq x", "not-supported", "nickname"),
        ("gender ss http://hl7.org/fhir/administrative-gender|male", "not-supported", "ss"),
        ("gender co mal", "not-supported", "co"),
        ("link[type eq seealso].other eq Patient/1", "not-supported", "link[...]"),
    ],
)
def test_malformed_or_unsupported_filters_are_400(patients: TestClient, expression: str, code: str, named: str) -> None:
    response = patients.get("/fhir/Patient", params={"_filter": expression})
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["code"] == code and named in issue["diagnostics"], issue
    assert issue.get("expression") == ["_filter"]
