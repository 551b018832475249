"""A code outside its required value set is refused over HTTP and leaves nothing behind, on every backend.

R4 terminologies.html#required; a transaction carrying such a resource fails as a whole (R4 http.html#trules).
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

FHIR = {"content-type": "application/fhir+json"}


def _count(client: TestClient, query: str) -> int:
    answer = client.get(f"/fhir/{query}&_summary=count" if "?" in query else f"/fhir/{query}?_summary=count")
    assert answer.status_code == 200, answer.text
    return int(answer.json()["total"])


def _issue(answer: Any) -> dict[str, Any]:
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome", outcome
    return dict(outcome["issue"][0])


def test_create_and_update_refuse_a_code_outside_the_value_set(client: TestClient) -> None:
    before = _count(client, "Patient")
    refused = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "banana"}, headers=FHIR)
    assert refused.status_code == 400, refused.text
    issue = _issue(refused)
    assert issue["code"] == "code-invalid" and issue["expression"] == ["Patient.gender"], issue
    assert "administrative-gender" in issue["diagnostics"]
    assert _count(client, "Patient") == before

    created = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "female"}, headers=FHIR)
    assert created.status_code == 201, created.text
    patient = created.json()
    observation = {"resourceType": "Observation", "status": "not-a-status", "code": {"text": "peso"}}
    answer = client.post("/fhir/Observation", json=observation, headers=FHIR)
    assert answer.status_code == 400 and _issue(answer)["expression"] == ["Observation.status"], answer.text

    changed = {**patient, "telecom": [{"system": "phone", "value": "55"}, {"system": "pigeon", "value": "1"}]}
    answer = client.put(f"/fhir/Patient/{patient['id']}", json=changed, headers=FHIR)
    assert answer.status_code == 400 and _issue(answer)["expression"] == ["Patient.telecom[1].system"], answer.text
    assert client.get(f"/fhir/Patient/{patient['id']}").json()["meta"]["versionId"] == "1"


def test_a_transaction_carrying_a_bad_code_stores_nothing(client: TestClient) -> None:
    before = (_count(client, "Patient"), _count(client, "Observation"))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:7d0e7bd4-5f0c-4bd3-9a4e-000000000001",
                "resource": {"resourceType": "Patient", "gender": "male"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "peso"},
                    "subject": {"reference": "urn:uuid:7d0e7bd4-5f0c-4bd3-9a4e-000000000001"},
                    "valueQuantity": {"value": 70, "comparator": "about"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    answer = client.post("/fhir", json=bundle, headers=FHIR)
    assert answer.status_code == 400, answer.text
    issue = _issue(answer)
    assert issue["code"] == "code-invalid", issue
    assert "Observation.valueQuantity.comparator" in (issue.get("expression") or [""])[0] + issue["diagnostics"]
    assert (_count(client, "Patient"), _count(client, "Observation")) == before
