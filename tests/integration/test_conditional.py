"""Conditional interactions and conditional references, on every backend (they rest on the search index)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import CORPUS
from tests.support.references import references

PIPES = CORPUS / "synthea" / "fhir-data-pipes-2021"
CURP = "urn:oid:2.16.840.1.113883.4.629"


def _patient(curp: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": CURP, "value": curp}], **extra}


def test_conditional_create(client: TestClient) -> None:
    query = {"If-None-Exist": f"identifier={CURP}|SABC560626MDFLRN01"}
    first = client.post("/fhir/Patient", json=_patient("SABC560626MDFLRN01"), headers=query)
    assert first.status_code == 201
    again = client.post("/fhir/Patient", json=_patient("SABC560626MDFLRN01", active=True), headers=query)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and "active" not in again.json()
    client.post("/fhir/Patient", json=_patient("SABC560626MDFLRN01"))  # a duplicate, made unconditionally
    several = client.post("/fhir/Patient", json=_patient("SABC560626MDFLRN01"), headers=query)
    assert several.status_code == 412


def test_conditional_update(client: TestClient) -> None:
    url = f"/fhir/Patient?identifier={CURP}|AAMR740524HOCBRN08"
    created = client.put(url, json=_patient("AAMR740524HOCBRN08"))
    assert created.status_code == 201, created.text
    patient_id = created.json()["id"]
    updated = client.put(url, json=_patient("AAMR740524HOCBRN08", gender="male"))
    assert updated.status_code == 200 and updated.json()["id"] == patient_id
    assert updated.headers["etag"] == 'W/"2"'
    client.post("/fhir/Patient", json=_patient("AAMR740524HOCBRN08"))
    assert client.put(url, json=_patient("AAMR740524HOCBRN08")).status_code == 412
    assert client.put("/fhir/Patient", json=_patient("X")).status_code == 400  # no search parameters


def test_conditional_delete_and_patch(client: TestClient) -> None:
    url = f"/fhir/Patient?identifier={CURP}|BAUM690216HMSLRG18"
    assert client.delete(url).status_code == 204  # no match: nothing to do
    patient_id = client.post("/fhir/Patient", json=_patient("BAUM690216HMSLRG18")).json()["id"]
    patched = client.patch(
        url,
        json=[{"op": "add", "path": "/active", "value": True}],
        headers={"content-type": "application/json-patch+json"},
    )
    assert patched.status_code == 200 and patched.json()["active"] is True
    assert client.delete(url).status_code == 204
    assert client.get(f"/fhir/Patient/{patient_id}").status_code == 410


def test_transaction_conditional_reference_matching_several_is_412(client: TestClient) -> None:
    for _ in range(2):
        client.post(
            "/fhir/Practitioner",
            json={
                "resourceType": "Practitioner",
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "42"}],
            },
        )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"code": "AMB"},
                    "participant": [
                        {"individual": {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|42"}}
                    ],
                },
                "request": {"method": "POST", "url": "Encounter"},
            }
        ],
    }
    response = client.post("/fhir", json=bundle)
    assert response.status_code == 412
    assert "Bundle.entry[0]" in response.json()["issue"][0]["diagnostics"]


def _identifiers(client: TestClient, resource_type: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    page = client.get(f"/fhir/{resource_type}/_history?_count=1000").json()
    while True:
        for entry in page["entry"]:
            for identifier in entry.get("resource", {}).get("identifier", []):
                seen[f"{identifier.get('system')}|{identifier.get('value')}"] += 1
        following = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not following:
            return seen
        page = client.get(following[0].split("testserver")[1]).json()


@pytest.mark.slow
def test_fhir_data_pipes_batches_twice_then_conditional_transactions(client: TestClient) -> None:
    batches = sorted(PIPES.glob("*Information*.json"))
    for _ in range(2):
        for path in batches:
            response = client.post(
                "/fhir", content=path.read_bytes(), headers={"content-type": "application/fhir+json"}
            )
            assert response.status_code == 200, response.text[:500]
            statuses = Counter(e["response"]["status"] for e in response.json()["entry"])
            assert set(statuses) <= {"201 Created", "200 OK"}, statuses
    for resource_type in ("Organization", "Practitioner"):
        duplicates = {key: n for key, n in _identifiers(client, resource_type).items() if n > 1}
        assert not duplicates, f"{resource_type} created twice: {list(duplicates)[:5]}"
    locations: list[str] = []
    patients = sorted(set(PIPES.glob("*.json")) - set(batches))
    sent = sum(len(json.loads(path.read_bytes())["entry"]) for path in patients)
    for path in patients:
        response = client.post("/fhir", content=path.read_bytes(), headers={"content-type": "application/fhir+json"})
        assert response.status_code == 200, f"{path.name}: {response.text[:500]}"
        locations += [e["response"]["location"].split("/_history")[0] for e in response.json()["entry"]]
    unresolved = []
    for location in locations:
        for reference in references(client.get(f"/fhir/{location}").json()):
            if reference.startswith("#"):
                continue
            if reference.startswith("urn:") or "?" in reference or client.get(f"/fhir/{reference}").status_code != 200:
                unresolved.append(f"{location} -> {reference}")
    assert unresolved == [], unresolved[:10]
    assert len(locations) == sent == 980
