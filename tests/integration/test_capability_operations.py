"""The CapabilityStatement lists what the server answers: each operation (with a readable
OperationDefinition) answers at its level, includes are the reference parameters, AuditEvent and Provenance
claim only the parameters their searches take, conditional read is declared (both backends)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from fhir_api.services import Services

FHIR = {"Content-Type": "application/fhir+json"}
ASYNC = {"Prefer": "respond-async"}
MRN = "urn:ehr-core:sid:imss:mrn"
GENDER = "http://hl7.org/fhir/administrative-gender"
GENDER_VS = "http://hl7.org/fhir/ValueSet/administrative-gender"


def _parameters(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(items)}


def _invoke(client: TestClient, definition: str, method: str, import_url: str = "") -> Response:
    """One call of the operation ``definition`` (an OperationDefinition id) by ``method`` (``import_url``: an
    NDJSON file in the server's import directory, for ``$import``)."""
    get = method == "GET"
    calls: dict[str, tuple[str, dict[str, str], dict[str, Any] | None, dict[str, str]]] = {
        "everything": ("/fhir/Patient/p1/$everything", {"_type": "Patient"}, None, {}),
        "summary": ("/fhir/Patient/p1/$summary", {}, None, {}),
        "match": ("/fhir/Patient/$match", {}, _parameters({"name": "resource", "resource": {
            "resourceType": "Patient", "name": [{"family": "Gómez"}], "birthDate": "1980-01-01"}}), {}),
        "ihe-pix": ("/fhir/Patient/$ihe-pix", {"sourceIdentifier": f"{MRN}|M-1"}, _parameters(
            {"name": "sourceIdentifier", "valueIdentifier": {"system": MRN, "value": "M-1"}}), {}),
        "person": ("/fhir/Patient/p1/$person", {}, None, {}),
        "access-grants": ("/fhir/Patient/p1/$access-grants", {}, None, {}),
        "link": ("/fhir/Patient/p2/$link", {}, _parameters({"name": "other", "valueReference": {
            "reference": "Patient/p1"}}), {}),
        "unlink": ("/fhir/Patient/p2/$unlink", {}, None, {}),
        "review": ("/fhir/Person/$review", {}, None, {}),
        "export": ("/fhir/$export", {"_type": "Patient"}, _parameters({"name": "_type", "valueString": "Patient"}),
                   ASYNC),
        "patient-export": ("/fhir/Patient/$export", {}, None, ASYNC),
        "group-export": ("/fhir/Group/g/$export", {}, None, ASYNC),
        "import": ("/fhir/$import", {}, _parameters({"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
                   {"name": "input", "part": [{"name": "type", "valueCode": "Patient"},
                                              {"name": "url", "valueUri": import_url}]}), {}),
        "validate": ("/fhir/Patient/p1/$validate", {}, _parameters({"name": "resource", "resource": {
            "resourceType": "Patient", "id": "p1"}}), {}),
        "subscription-status": ("/fhir/Subscription/s/$status", {}, None, {}),
        "subscription-events": ("/fhir/Subscription/s/$events", {"eventsSinceNumber": "1"}, _parameters(
            {"name": "eventsSinceNumber", "valueString": "1"}), {}),
        "ledger-key": ("/fhir/$ledger-key", {}, None, {}),
        "ledger-head": ("/fhir/$ledger-head", {"log": "record"}, _parameters({"name": "log", "valueCode": "record"}),
                        {}),
        "ledger-proof": ("/fhir/$ledger-proof", {"event": "1"}, _parameters({"name": "event", "valueInteger": 1}),
                         {}),
        "lookup": ("/fhir/CodeSystem/$lookup", {"system": GENDER, "code": "male"}, None, {}),
        "subsumes": ("/fhir/CodeSystem/$subsumes", {"system": "http://hl7.org/fhir/observation-status",
                                                    "codeA": "amended", "codeB": "corrected"}, None, {}),
        "expand": ("/fhir/ValueSet/$expand", {"url": GENDER_VS, "count": "2"}, None, {}),
        "validate-code": ("/fhir/ValueSet/$validate-code", {"url": GENDER_VS, "code": "male"}, None, {}),
        "translate": ("/fhir/ConceptMap/$translate", {"system": GENDER, "code": "male"}, None, {}),
    }  # fmt: skip
    path, query, body, headers = calls[definition]
    if get:
        return client.get(path, params=query, headers=headers)
    if body is None and query:
        body = _parameters(*({"name": k, "valueString": v} for k, v in query.items()))
    return client.post(path, json=body, headers=headers | (FHIR if body is not None else {}))


def _statement(client: TestClient) -> dict[str, Any]:
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    statement: dict[str, Any] = response.json()
    return statement


def test_every_listed_operation_answers_get_and_post(
    client: TestClient, services: Services, request: pytest.FixtureRequest
) -> None:
    patient = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": MRN, "value": "M-1"}],
               "name": [{"family": "Gómez"}], "birthDate": "1980-01-01"}  # fmt: skip
    assert client.put("/fhir/Patient/p1", json=patient).is_success
    assert client.put("/fhir/Patient/p2", json={**patient, "id": "p2", "identifier": []}).is_success
    group = {"resourceType": "Group", "id": "g", "type": "person", "actual": True,
             "member": [{"entity": {"reference": "Patient/p1"}}]}  # fmt: skip
    assert client.put("/fhir/Group/g", json=group).is_success
    channel = {"type": "rest-hook", "endpoint": "https://example.org/"}
    subscription = {"resourceType": "Subscription", "id": "s", "status": "off", "reason": "capability",
                    "criteria": "Patient?name=Gomez", "channel": channel}  # fmt: skip
    assert client.put("/fhir/Subscription/s", json=subscription).is_success
    assert services.compliance is not None
    services.compliance.ledger.seal(partial=True)
    source = services.settings.import_root / f"capability-{uuid.uuid4().hex}.ndjson"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text('{"resourceType": "Patient", "id": "p3"}\n')
    request.addfinalizer(lambda: source.unlink(missing_ok=True))
    rest = _statement(client)["rest"][0]
    listed = [(None, op) for op in rest["operation"]] + [
        (resource["type"], op) for resource in rest["resource"] for op in resource.get("operation", [])
    ]
    assert {op["name"] for _, op in listed} >= {"everything", "summary", "match", "ihe-pix", "export",
                                                "ledger-key", "ledger-head", "ledger-proof", "validate"}  # fmt: skip
    for resource_type, op in listed:
        definition_id = op["definition"].rsplit("/", 1)[1]
        definition = client.get(op["definition"].split("testserver")[1])
        assert definition.status_code == 200, op
        body = definition.json()
        assert body["resourceType"] == "OperationDefinition" and body["code"] == op["name"]
        assert (resource_type in body.get("resource", [])) if resource_type else body["system"]
        methods = ["POST"] if body["affectsState"] or definition_id == "match" else ["GET", "POST"]
        for method in methods:
            response = _invoke(client, definition_id, method, source.resolve().as_uri())
            assert response.status_code in (200, 202), (definition_id, method, response.text)
            if definition_id == "import":  # done before the store closes under it
                status = response.headers["content-location"].split("testserver")[1]
                for _ in range(2400):
                    if (polled := client.get(status)).status_code != 202:
                        break
                    time.sleep(0.05)
                assert polled.status_code == 200, polled.text
    # Everything the server answers as an operation is listed: $unknown is not.
    unknown = client.get("/fhir/Patient/p1/$frobnicate")
    assert unknown.status_code == 404 and unknown.json()["resourceType"] == "OperationOutcome"
    stored = client.get("/fhir/OperationDefinition/not-one-of-ours")
    assert stored.status_code == 404 and stored.json()["resourceType"] == "OperationOutcome"


def test_statement_declares_what_searches_take(client: TestClient) -> None:
    rest = _statement(client)["rest"][0]
    by_type = {resource["type"]: resource for resource in rest["resource"]}
    assert {"code": "search-system"} in rest["interaction"]
    assert rest["compartment"] == ["http://hl7.org/fhir/CompartmentDefinition/patient"]
    assert by_type["Patient"]["conditionalRead"] == "full-support"
    assert "disabled" in rest["security"]["description"]  # these tests run without authentication
    assert "Observation:subject" in by_type["Observation"]["searchInclude"]
    assert "Observation:subject" in by_type["Patient"]["searchRevInclude"]
    # AuditEvent and Provenance are searched over the server's logs: only what those searches take.
    audit = {p["name"] for p in by_type["AuditEvent"]["searchParam"]}
    assert audit == {"patient", "entity", "agent", "date", "action", "outcome", "subtype", "address"}
    assert {p["name"] for p in by_type["Provenance"]["searchParam"]} == {"target", "patient", "agent", "recorded"}
    for resource_type, names in (("AuditEvent", audit), ("Provenance", {"target", "patient", "agent", "recorded"})):
        for name in names:
            response = client.get(f"/fhir/{resource_type}", params={name: "2020-01-01" if name in ("date", "recorded")
                                                                     else "x"})  # fmt: skip
            assert response.status_code == 200, (resource_type, name, response.text)
        refused = client.get(f"/fhir/{resource_type}", params={"_id": "x"})
        assert refused.status_code == 400 and "_id" not in {p["name"] for p in by_type[resource_type]["searchParam"]}
    # Every include listed for a type is one its search takes.
    for resource_type in ("Patient", "Observation", "Encounter"):
        for include in by_type[resource_type]["searchInclude"]:
            response = client.get(f"/fhir/{resource_type}", params={"_include": include})
            assert response.status_code == 200, (resource_type, include, response.text)
        for include in by_type[resource_type].get("searchRevInclude", [])[:20]:
            response = client.get(f"/fhir/{resource_type}", params={"_revinclude": include})
            assert response.status_code == 200, (resource_type, include, response.text)
