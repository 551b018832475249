"""``$validate`` (R4 resource-operation-validate) on every backend: always 200 with an OperationOutcome
listing every issue, 400 only for a body that is not JSON (or a parameter the server does not support),
and nothing is ever stored. Access is that of a read of the type (or of the instance).
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from tests.support.access import staff_headers

FHIR = {"content-type": "application/fhir+json"}
BROKEN_PATIENT = {
    "resourceType": "Patient",
    "gender": "banana",
    "contact": [{"gender": "male"}],  # pat-1: no details, no organization
    "name": [{"family": "Ruiz", "period": {"start": "2020-02-01", "end": "2020-01-01"}}],  # per-1
}


def _count(client: TestClient, resource_type: str, headers: dict[str, str] | None = None) -> int:
    answer = client.get(f"/fhir/{resource_type}?_summary=count", headers=headers)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["total"])


def _issues(answer: Any) -> list[dict[str, Any]]:
    assert answer.status_code == 200, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome", outcome
    return list(outcome["issue"])


def _parameters(resource: dict[str, Any] | None, mode: str | None = None, profile: str | None = None) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    if resource is not None:
        items.append({"name": "resource", "resource": resource})
    if mode is not None:
        items.append({"name": "mode", "valueCode": mode})
    if profile is not None:
        items.append({"name": "profile", "valueUri": profile})
    return {"resourceType": "Parameters", "parameter": items}


def test_a_valid_resource_gets_information_and_nothing_is_stored(client: TestClient) -> None:
    before = _count(client, "Patient")
    patient = {"resourceType": "Patient", "gender": "female", "name": [{"family": "Ruiz"}]}
    issues = _issues(client.post("/fhir/Patient/$validate", json=patient, headers=FHIR))
    assert [(i["severity"], i["code"]) for i in issues] == [("information", "informational")], issues
    issues = _issues(client.post("/fhir/Patient/$validate", json=_parameters(patient, "create"), headers=FHIR))
    assert [i["severity"] for i in issues] == ["information"], issues
    assert _count(client, "Patient") == before


def test_every_broken_rule_is_listed_with_its_place(client: TestClient) -> None:
    before = _count(client, "Patient")
    for body in (BROKEN_PATIENT, _parameters(BROKEN_PATIENT)):
        issues = _issues(client.post("/fhir/Patient/$validate", json=body, headers=FHIR))
        found = {(i["severity"], i["expression"][0]) for i in issues}
        assert found == {
            ("error", "Patient.gender"),
            ("error", "Patient.contact[0]"),
            ("error", "Patient.name[0].period"),
        }, issues
        diagnostics = " ".join(i["diagnostics"] for i in issues)
        assert "pat-1" in diagnostics and "per-1" in diagnostics and "administrative-gender" in diagnostics
    # The same resource written for real is refused: $validate says what a write would meet.
    assert client.post("/fhir/Patient", json=BROKEN_PATIENT, headers=FHIR).status_code == 400
    assert _count(client, "Patient") == before


def test_structure_errors_and_a_wrong_type_are_issues_not_failures(client: TestClient) -> None:
    wrong = {"resourceType": "Patient", "gender": 3}
    issues = _issues(client.post("/fhir/Patient/$validate", json=wrong, headers=FHIR))
    assert issues and all(i["severity"] == "error" for i in issues), issues
    issues = _issues(client.post("/fhir/Patient/$validate", json={"resourceType": "Observation"}, headers=FHIR))
    assert issues[0]["severity"] == "error" and "does not match" in issues[0]["diagnostics"], issues
    # A contained resource of a type R4B lacks: an issue here, 400 on a write (the models raise KeyError).
    unknown = {"resourceType": "Patient", "contained": [{"resourceType": "Banana", "id": "b"}]}
    issues = _issues(client.post("/fhir/Patient/$validate", json=unknown, headers=FHIR))
    assert [i["severity"] for i in issues] == ["error"], issues
    assert client.post("/fhir/Patient", json=unknown, headers=FHIR).status_code == 400


def test_malformed_input_and_unsupported_parameters_are_refused(client: TestClient) -> None:
    answer = client.post("/fhir/Patient/$validate", content=b"{not json", headers=FHIR)
    assert answer.status_code == 400 and answer.json()["resourceType"] == "OperationOutcome", answer.text
    other = _parameters({"resourceType": "Patient"}, profile="http://example.org/StructureDefinition/mx-patient")
    answer = client.post("/fhir/Patient/$validate", json=other, headers=FHIR)
    assert answer.status_code == 400 and answer.json()["issue"][0]["code"] == "not-supported", answer.text
    core = _parameters({"resourceType": "Patient"}, profile="http://hl7.org/fhir/StructureDefinition/Patient")
    assert _issues(client.post("/fhir/Patient/$validate", json=core, headers=FHIR))[0]["severity"] == "information"
    answer = client.post("/fhir/Patient/$validate", json=_parameters({"resourceType": "Patient"}, "upsert"))
    assert answer.status_code == 400, answer.text


def test_instance_modes_and_the_stored_version(client: TestClient) -> None:
    created = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male"}, headers=FHIR)
    assert created.status_code == 201, created.text
    patient = created.json()
    url = f"/fhir/Patient/{patient['id']}/$validate"

    assert _issues(client.get(url))[0]["severity"] == "information"
    changed = {**patient, "gender": "other"}
    assert _issues(client.post(url, json=_parameters(changed, "update"), headers=FHIR))[0]["severity"] == "information"
    issues = _issues(client.post(url, json=_parameters({**changed, "id": "someone-else"}, "update"), headers=FHIR))
    assert [(i["severity"], i["expression"]) for i in issues] == [("error", ["Patient.id"])], issues
    no_id = {k: v for k, v in changed.items() if k != "id"}
    issues = _issues(client.post("/fhir/Patient/$validate", json=_parameters(no_id, "update"), headers=FHIR))
    assert [i["code"] for i in issues] == ["required"], issues
    assert _issues(client.post(url, json=_parameters(None, "delete"), headers=FHIR))[0]["severity"] == "information"

    assert client.get("/fhir/Patient/not-there/$validate").status_code == 404
    answer = client.post("/fhir/Patient/not-there/$validate", json=_parameters(None, "delete"), headers=FHIR)
    assert answer.status_code == 404, answer.text
    read = client.get(f"/fhir/Patient/{patient['id']}").json()
    assert read["meta"]["versionId"] == "1" and read["gender"] == "male"  # nothing of the above was stored


def test_the_operation_is_declared(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert "validate" in {op["name"] for op in patient.get("operation", [])}, patient.get("operation")
    definition = client.get("/fhir/OperationDefinition/validate").json()
    assert definition["code"] == "validate" and definition["type"] and definition["instance"], definition
    assert {p["name"] for p in definition["parameter"]} >= {"resource", "mode", "profile", "return"}


def test_access_is_that_of_a_read(secured_client: tuple[TestClient, Settings]) -> None:
    client, settings = secured_client
    owner = staff_headers(settings, "IMSS")
    created = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers={**FHIR, **owner})
    assert created.status_code == 201, created.text
    url = f"/fhir/Patient/{created.json()['id']}/$validate"
    assert client.get(url, headers=owner).status_code == 200
    stranger = staff_headers(settings, "ISSSTE")
    read = client.get(f"/fhir/Patient/{created.json()['id']}", headers=stranger)
    assert read.status_code in (403, 404), read.text
    assert client.get(url, headers=stranger).status_code == read.status_code
    # A scope without read of the type cannot validate against it, even at type level.
    writer = staff_headers(settings, "IMSS", scope="user/Patient.c")
    answer = client.post("/fhir/Patient/$validate", json={"resourceType": "Patient"}, headers={**FHIR, **writer})
    assert answer.status_code == 403, answer.text
    assert client.post("/fhir/Patient/$validate", json={"resourceType": "Patient"}).status_code == 401
