"""PATCH through HTTP: JSON Patch, FHIRPath Patch and merge patch, with If-Match, on every backend."""

from __future__ import annotations

import base64
import json

from fastapi.testclient import TestClient

PATIENT = b'{"resourceType":"Patient","id":"pat","name":[{"family":"Lopez","given":["Ana"]}],"extension":[{"url":"http://x","valueDecimal":1.50}]}'


def _patient(client: TestClient) -> None:
    response = client.put("/fhir/Patient/pat", content=PATIENT, headers={"content-type": "application/fhir+json"})
    assert response.status_code == 201


def test_json_patch(client: TestClient) -> None:
    _patient(client)
    ops = [
        {"op": "replace", "path": "/name/0/family", "value": "López"},
        {"op": "add", "path": "/active", "value": True},
    ]
    response = client.patch(
        "/fhir/Patient/pat", content=json.dumps(ops), headers={"content-type": "application/json-patch+json"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == 'W/"2"'
    stored = client.get("/fhir/Patient/pat")
    assert stored.json()["name"][0]["family"] == "López" and stored.json()["active"] is True
    assert b'"valueDecimal":1.50' in stored.content


def test_fhirpath_patch(client: TestClient) -> None:
    _patient(client)
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "add"},
                    {"name": "path", "valueString": "Patient"},
                    {"name": "name", "valueString": "birthDate"},
                    {"name": "value", "valueDate": "1974-05-24"},
                ],
            },
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "add"},
                    {"name": "path", "valueString": "Patient"},
                    {"name": "name", "valueString": "identifier"},
                    {
                        "name": "value",
                        "part": [
                            {"name": "system", "valueUri": "urn:oid:2.16.840.1.113883.4.629"},
                            {"name": "value", "valueString": "AAMR740524HOCBRN08"},
                        ],
                    },
                ],
            },
        ],
    }
    response = client.patch("/fhir/Patient/pat", json=parameters, headers={"content-type": "application/fhir+json"})
    assert response.status_code == 200, response.text
    stored = client.get("/fhir/Patient/pat").json()
    assert stored["birthDate"] == "1974-05-24"
    assert stored["identifier"] == [{"system": "urn:oid:2.16.840.1.113883.4.629", "value": "AAMR740524HOCBRN08"}]


def test_merge_patch_as_fhirpy_sends_it(client: TestClient) -> None:
    _patient(client)
    response = client.patch("/fhir/Patient/pat", json={"gender": "female", "extension": None})
    assert response.status_code == 200, response.text
    stored = client.get("/fhir/Patient/pat").json()
    assert stored["gender"] == "female" and "extension" not in stored


def test_patch_honours_if_match(client: TestClient) -> None:
    _patient(client)
    ops = json.dumps([{"op": "add", "path": "/active", "value": True}])
    headers = {"content-type": "application/json-patch+json", "If-Match": 'W/"7"'}
    assert client.patch("/fhir/Patient/pat", content=ops, headers=headers).status_code == 412
    headers["If-Match"] = 'W/"1"'
    assert client.patch("/fhir/Patient/pat", content=ops, headers=headers).status_code == 200


def test_patch_results_are_validated_and_failures_explained(client: TestClient) -> None:
    _patient(client)
    headers = {"content-type": "application/json-patch+json"}
    invalid = json.dumps([{"op": "add", "path": "/gender", "value": 42}])
    response = client.patch("/fhir/Patient/pat", content=invalid, headers=headers)
    assert response.status_code == 400 and response.json()["issue"][0]["expression"] == ["Patient.gender"]
    failing_test = json.dumps([{"op": "test", "path": "/name/0/family", "value": "Nope"}])
    assert client.patch("/fhir/Patient/pat", content=failing_test, headers=headers).status_code == 422
    malformed = json.dumps([{"op": "frobnicate", "path": "/a"}])
    assert client.patch("/fhir/Patient/pat", content=malformed, headers=headers).status_code == 400
    assert client.patch("/fhir/Patient/nobody", content=invalid, headers=headers).status_code == 404
    assert client.get("/fhir/Patient/pat").headers["etag"] == 'W/"1"'


def test_patch_in_a_transaction(client: TestClient) -> None:
    _patient(client)
    ops = base64.b64encode(json.dumps([{"op": "add", "path": "/active", "value": False}]).encode()).decode()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": ops},
                "request": {"method": "PATCH", "url": "Patient/pat"},
            }
        ],
    }
    response = client.post("/fhir", json=bundle)
    assert response.status_code == 200, response.text
    assert response.json()["entry"][0]["response"]["status"] == "200 OK"
    assert client.get("/fhir/Patient/pat").json()["active"] is False
