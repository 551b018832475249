"""transaction and batch Bundles through HTTP, on every backend."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import CORPUS
from tests.support.references import references

SYNTHEA = sorted((CORPUS / "synthea" / "smart-r4-2019").glob("*.json"))


def _post_bundle(client: TestClient, bundle: dict[str, Any], prefer: str | None = None) -> Any:
    headers = {"content-type": "application/fhir+json"}
    if prefer:
        headers["Prefer"] = prefer
    # The weight is sent as 70.50: the server must keep that text.
    body = json.dumps(bundle).replace('"value": 70.5,', '"value": 70.50,')
    return client.post("/fhir", content=body, headers=headers)


def _location(entry: dict[str, Any]) -> str:
    return str(entry["response"]["location"]).split("/_history")[0]


def _check_references_resolve(client: TestClient, locations: list[str]) -> int:
    followed = 0
    for location in locations:
        resource = client.get(f"/fhir/{location}").json()
        for reference in references(resource):
            if reference.startswith("#"):
                continue  # contained resources
            assert not reference.startswith("urn:"), f"{location} still holds {reference}"
            target = client.get(f"/fhir/{reference}")
            assert target.status_code == 200, f"{location} -> {reference}: {target.status_code}"
            followed += 1
    return followed


def test_a_synthea_transaction_is_stored_with_references_resolved(client: TestClient) -> None:
    bundle = json.loads(SYNTHEA[0].read_bytes())
    response = _post_bundle(client, bundle)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    assert len(result["entry"]) == len(bundle["entry"])
    assert {e["response"]["status"] for e in result["entry"]} == {"201 Created"}
    locations = [_location(e) for e in result["entry"]]
    assert _check_references_resolve(client, locations) > len(locations)
    patient = next(loc for loc in locations if loc.startswith("Patient/"))
    sent = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    stored = client.get(f"/fhir/{patient}").json()
    assert stored["name"] == sent["name"] and stored["id"] != sent["id"]


@pytest.mark.slow
def test_all_synthea_transactions_load_through_http(client: TestClient) -> None:
    created = 0
    locations: list[str] = []
    for path in SYNTHEA:
        response = _post_bundle(client, json.loads(path.read_bytes()))
        assert response.status_code == 200, f"{path.name}: {response.text[:500]}"
        entries = response.json()["entry"]
        created += sum(1 for e in entries if e["response"]["status"] == "201 Created")
        locations += [_location(e) for e in entries]
    assert created == 3507
    assert _check_references_resolve(client, locations) > 3507


def _small_transaction(bad_status: Any = "final") -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
                "resource": {"resourceType": "Patient", "name": [{"family": "Hernández"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222",
                "resource": {
                    "resourceType": "Observation",
                    "status": bad_status,
                    "code": {"text": "peso"},
                    "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"},
                    "valueQuantity": {"value": 70.50, "unit": "kg"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {"resourceType": "Organization", "id": "imss-1", "name": "IMSS"},
                "request": {"method": "PUT", "url": "Organization/imss-1"},
            },
        ],
    }


def test_a_failing_entry_stores_nothing_and_is_named(client: TestClient) -> None:
    before = client.get("/fhir/_history").json()["total"]
    response = _post_bundle(client, _small_transaction(bad_status=12))
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert "Bundle.entry[1]" in issue["diagnostics"] and issue["expression"][0].startswith("Bundle.entry[1]")
    assert client.get("/fhir/_history").json()["total"] == before
    assert client.get("/fhir/Organization/imss-1").status_code == 404


def test_transaction_response_and_representation(client: TestClient) -> None:
    response = _post_bundle(client, _small_transaction(), prefer="return=representation")
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "201 Created", "201 Created"]
    patient_id = entries[0]["resource"]["id"]
    observation = entries[1]["resource"]
    assert observation["subject"]["reference"] == f"Patient/{patient_id}"
    assert entries[2]["response"]["etag"] == 'W/"1"'
    raw = client.get(f"/fhir/{_location(entries[1])}").content
    assert b'"value":70.50' in raw


def test_two_entries_on_one_resource_is_400(client: TestClient) -> None:
    entry = {"resource": {"resourceType": "Patient", "id": "p1"}, "request": {"method": "PUT", "url": "Patient/p1"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry, entry]}
    response = _post_bundle(client, bundle)
    assert response.status_code == 400
    assert "entry" in response.json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient/p1").status_code == 404


def test_processing_order_delete_before_post_and_get_last(client: TestClient) -> None:
    client.put("/fhir/Patient/old", json={"resourceType": "Patient", "id": "old"})
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": "Patient/new"}},
            {"resource": {"resourceType": "Patient", "id": "new"}, "request": {"method": "PUT", "url": "Patient/new"}},
            {"request": {"method": "DELETE", "url": "Patient/old"}},
        ],
    }
    response = _post_bundle(client, bundle)
    assert response.status_code == 200, response.text
    get, put, delete = response.json()["entry"]
    assert get["response"]["status"] == "200 OK" and get["resource"]["id"] == "new"
    assert put["response"]["status"] == "201 Created"
    assert delete["response"]["status"] == "204 No Content"
    assert client.get("/fhir/Patient/old").status_code == 410


def test_unknown_urn_reference_fails_the_transaction(client: TestClient) -> None:
    bundle = _small_transaction()
    bundle["entry"][1]["resource"]["subject"]["reference"] = "urn:uuid:99999999-9999-4999-8999-999999999999"
    response = _post_bundle(client, bundle)
    assert response.status_code == 404
    assert "Bundle.entry[1]" in response.json()["issue"][0]["diagnostics"]


def test_batch_entries_succeed_or_fail_alone(client: TestClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": {"resourceType": "Patient", "gender": 3}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "id": "b2"}, "request": {"method": "PUT", "url": "Patient/b2"}},
            {"request": {"method": "GET", "url": "Patient/missing"}},
        ],
    }
    response = _post_bundle(client, bundle)
    assert response.status_code == 200
    bad, good, missing = response.json()["entry"]
    assert bad["response"]["status"].startswith("400")
    assert bad["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert good["response"]["status"] == "201 Created"
    assert missing["response"]["status"].startswith("404")
    assert client.get("/fhir/Patient/b2").status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"resourceType": "Patient"}, 400),
        ({"resourceType": "Bundle", "type": "collection"}, 400),
        ({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {}}]}, 400),
        (
            {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "PUT", "url": "X/1"}}]},
            404,
        ),
    ],
)
def test_malformed_bundles(client: TestClient, body: dict[str, Any], status: int) -> None:
    response = _post_bundle(client, body)
    assert response.status_code == status, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def test_too_many_entries_is_413(client: TestClient) -> None:
    client.app.state.services.settings.max_bundle_entries = 2  # type: ignore[attr-defined]
    response = _post_bundle(client, _small_transaction())
    assert response.status_code == 413
