"""Profiles (R4 profiling.html) on every backend: a resource claiming a profile in ``meta.profile`` is checked
against its constraints on create, update and in a transaction; ``$validate?profile=`` reports them. The
shipped Mexican profiles (ehr_core/profiles/mx) and a profile stored with PUT are both found by canonical url.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from ehr_core.identity.identifiers import CURP_SYSTEM, curp_check_digit
from tests.conftest import CORPUS

FHIR = {"content-type": "application/fhir+json"}
MX_PATIENT = "http://ehr-core.mx/fhir/StructureDefinition/MXPatient"
MX_CONDITION = "http://ehr-core.mx/fhir/StructureDefinition/MXCondition"
ICD_10 = "http://hl7.org/fhir/sid/icd-10"
_FIRST17 = "GOMC850312MDFNRR0"
CURP = _FIRST17 + str(curp_check_digit(_FIRST17))
BAD_CURP = _FIRST17 + str((curp_check_digit(_FIRST17) + 1) % 10)
CUSTOM = "http://example.org/fhir/StructureDefinition/ClinicPatient"


def _patient(*identifiers: dict[str, Any], profile: str = MX_PATIENT) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "meta": {"profile": [profile]},
        "identifier": list(identifiers) or [{"system": "urn:example:mrn", "value": "123"}],
        "name": [{"family": "Gómez", "given": ["Carmen"]}],
        "gender": "female",
        "birthDate": "1985-03-12",
    }


def _curp(value: str) -> dict[str, Any]:
    return {"system": CURP_SYSTEM, "value": value}


def _condition(system: str, code: str, profile: str = MX_CONDITION) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "meta": {"profile": [profile]},
        "subject": {"display": "Carmen Gómez"},
        "code": {"coding": [{"system": system, "code": code}]},
    }


def _diagnostics(answer: Any) -> str:
    return " | ".join(f"{i.get('expression')} {i['diagnostics']}" for i in answer.json()["issue"])


def _validate(client: TestClient, resource: dict[str, Any], profile: str) -> list[dict[str, Any]]:
    body = {k: v for k, v in resource.items() if k != "meta"}
    answer = client.post(f"/fhir/{resource['resourceType']}/$validate?profile={profile}", json=body, headers=FHIR)
    assert answer.status_code == 200, answer.text
    parameters = {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": body}, {"name": "profile", "valueUri": profile}],
    }
    again = client.post(f"/fhir/{resource['resourceType']}/$validate", json=parameters, headers=FHIR)
    assert again.status_code == 200, again.text
    assert again.json()["issue"] == answer.json()["issue"]
    return list(answer.json()["issue"])


def _errors(issues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in issues if i["severity"] == "error"]


def test_mx_patient_without_curp_is_refused_naming_the_slice(client: TestClient) -> None:
    answer = client.post("/fhir/Patient", json=_patient(), headers=FHIR)
    assert answer.status_code == 400, answer.text
    assert "Patient.identifier:curp" in _diagnostics(answer)
    errors = _errors(_validate(client, _patient(), MX_PATIENT))
    assert any("identifier:curp" in e["diagnostics"] and e["code"] == "required" for e in errors), errors


def test_mx_patient_with_a_bad_curp_check_digit_is_refused(client: TestClient) -> None:
    answer = client.post("/fhir/Patient", json=_patient(_curp(BAD_CURP)), headers=FHIR)
    assert answer.status_code == 400, answer.text
    assert "mx-curp-1" in _diagnostics(answer)
    errors = _errors(_validate(client, _patient(_curp(BAD_CURP)), MX_PATIENT))
    invariant = [e for e in errors if e["code"] == "invariant"]
    assert [e["expression"][0] for e in invariant] == ["Patient.identifier[0]"], errors


def test_mx_patient_with_a_valid_curp_is_stored_and_read_back(client: TestClient) -> None:
    patient = _patient({"system": "urn:example:mrn", "value": "9"}, _curp(CURP))
    answer = client.post("/fhir/Patient", json=patient, headers=FHIR)
    assert answer.status_code == 201, answer.text
    read = client.get(answer.headers["location"].split("/_history")[0].split("/fhir")[-1].join(["/fhir", ""]))
    assert read.status_code == 200 and read.json()["meta"]["profile"] == [MX_PATIENT]
    issues = _validate(client, patient, MX_PATIENT)
    assert _errors(issues) == [], issues
    # An update breaking the profile is refused like a create; so is a transaction entry.
    stored = read.json()
    stored["identifier"] = [_curp(BAD_CURP)]
    update = client.put(f"/fhir/Patient/{stored['id']}", json=stored, headers=FHIR)
    assert update.status_code == 400, update.text
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": _patient(), "request": {"method": "POST", "url": "Patient"}}],
    }
    assert client.post("/fhir", json=bundle, headers=FHIR).status_code == 400


def test_must_support_is_reported_as_information(client: TestClient) -> None:
    patient = {"resourceType": "Patient", "identifier": [_curp(CURP)], "name": [{"family": "Gómez"}]}
    issues = _validate(client, patient, MX_PATIENT)
    information = [i["diagnostics"] for i in issues if i["severity"] == "information"]
    assert any("Patient.gender is must-support" in text for text in information), issues
    assert any("Patient.birthDate is must-support" in text for text in information), issues
    assert _errors(issues) == []


def test_mx_condition_needs_a_cie_10_code(client: TestClient) -> None:
    created = client.post("/fhir/Condition", json=_condition(ICD_10, "E11.9"), headers=FHIR)
    assert created.status_code == 201, created.text
    answer = client.post("/fhir/Condition", json=_condition("http://snomed.info/sct", "44054006"), headers=FHIR)
    assert answer.status_code == 400, answer.text
    assert "Condition.code" in _diagnostics(answer)
    errors = _errors(_validate(client, _condition("http://snomed.info/sct", "44054006"), MX_CONDITION))
    assert {e["code"] for e in errors} == {"value", "code-invalid"}, errors


def test_cie_10_membership_is_checked_once_its_code_system_is_stored(client: TestClient) -> None:
    code_system = {
        "resourceType": "CodeSystem",
        "id": "cie-10-sample",
        "url": ICD_10,
        "status": "active",
        "content": "fragment",
        "concept": [{"code": "E11.9", "display": "Diabetes mellitus tipo 2, sin complicaciones"}],
    }
    assert client.put("/fhir/CodeSystem/cie-10-sample", json=code_system, headers=FHIR).status_code == 201
    created = client.post("/fhir/Condition", json=_condition(ICD_10, "E11.9"), headers=FHIR)
    assert created.status_code == 201, created.text
    answer = client.post("/fhir/Condition", json=_condition(ICD_10, "Z99.99"), headers=FHIR)
    assert answer.status_code == 400, answer.text
    assert "not in the required value set" in _diagnostics(answer)


def _custom_profile() -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "id": "ClinicPatient",
        "url": CUSTOM,
        "version": "2",
        "name": "ClinicPatient",
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {
            "element": [
                {"id": "Patient.name", "path": "Patient.name", "min": 1, "max": "1"},
                {"id": "Patient.active", "path": "Patient.active", "min": 1, "fixedBoolean": True},
                {
                    "id": "Patient.maritalStatus",
                    "path": "Patient.maritalStatus",
                    "patternCodeableConcept": {
                        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"}]
                    },
                },
                {
                    "id": "Patient.telecom",
                    "path": "Patient.telecom",
                    "constraint": [
                        {
                            "key": "clinic-1",
                            "severity": "error",
                            "human": "a telecom has a value",
                            "expression": "value.exists()",
                        }
                    ],
                },
            ]
        },
    }


def test_a_stored_profile_applies_to_the_resources_claiming_it(client: TestClient) -> None:
    good = {"resourceType": "Patient", "meta": {"profile": [CUSTOM]}, "active": True, "name": [{"family": "A"}]}
    unknown = client.post("/fhir/Patient/$validate?profile=" + CUSTOM, json=good, headers=FHIR)
    assert unknown.status_code == 400 and unknown.json()["issue"][0]["code"] == "not-supported", unknown.text
    assert (
        client.put("/fhir/StructureDefinition/ClinicPatient", json=_custom_profile(), headers=FHIR).status_code == 201
    )
    assert client.post("/fhir/Patient", json=good, headers=FHIR).status_code == 201
    assert (
        client.post("/fhir/Patient", json=good | {"meta": {"profile": [CUSTOM + "|2"]}}, headers=FHIR).status_code
        == 201
    )
    broken = {
        "two names (max 1)": good | {"name": [{"family": "A"}, {"family": "B"}]},
        "no name (min 1)": {k: v for k, v in good.items() if k != "name"},
        "active false (fixed)": good | {"active": False},
        "marital status of another system (pattern)": good
        | {"maritalStatus": {"coding": [{"system": "http://example.org/other", "code": "M"}]}},
        "telecom without value (constraint)": good | {"telecom": [{"system": "phone", "use": "home"}]},
    }
    expected = {
        "two names (max 1)": "Patient.name[1]",
        "no name (min 1)": "Patient.name",
        "active false (fixed)": "Patient.active",
        "marital status of another system (pattern)": "Patient.maritalStatus",
        "telecom without value (constraint)": "Patient.telecom[0]",
    }
    for what, resource in broken.items():
        answer = client.post("/fhir/Patient", json=resource, headers=FHIR)
        assert answer.status_code == 400, (what, answer.text)
        assert [i["expression"][0] for i in answer.json()["issue"]] == [expected[what]], (what, answer.text)
        assert _errors(_validate(client, resource, CUSTOM)), what
    # The version named must exist: |1 is no stored version.
    answer = client.post("/fhir/Patient/$validate?profile=" + CUSTOM + "|1", json=good, headers=FHIR)
    assert answer.status_code == 400, answer.text


def test_an_unknown_claimed_profile_is_accepted_with_a_warning(client: TestClient) -> None:
    patient = {"resourceType": "Patient", "meta": {"profile": ["http://example.org/nowhere"]}, "gender": "male"}
    assert client.post("/fhir/Patient", json=patient, headers=FHIR).status_code == 201
    answer = client.post("/fhir/Patient/$validate", json=patient, headers=FHIR)
    assert answer.status_code == 200, answer.text
    warnings = [i for i in answer.json()["issue"] if i["severity"] == "warning"]
    assert warnings and "http://example.org/nowhere" in warnings[0]["diagnostics"], answer.text
    # The core profile of the type is always known.
    core = client.post(
        "/fhir/Patient/$validate?profile=http://hl7.org/fhir/StructureDefinition/Patient", json=patient, headers=FHIR
    )
    assert core.status_code == 200, core.text


R4_ONLY_EXAMPLES = CORPUS / "hl7-examples" / "r4-examples"


def test_r4_types_removed_in_r4b_are_validated_stored_and_read_back(client: TestClient) -> None:
    raw = (R4_ONLY_EXAMPLES / "MedicinalProduct-example.json").read_bytes()
    example = json.loads(raw)
    answer = client.put(f"/fhir/MedicinalProduct/{example['id']}", content=raw, headers=FHIR)
    assert answer.status_code == 201, answer.text
    read = client.get(f"/fhir/MedicinalProduct/{example['id']}")
    assert read.status_code == 200, read.text
    body = read.json()
    assert {k: v for k, v in body.items() if k != "meta"} == {k: v for k, v in example.items() if k != "meta"}
    assert client.get("/fhir/MedicinalProduct").json()["total"] == 1
    summary = client.get(f"/fhir/MedicinalProduct/{example['id']}?_summary=true")
    assert summary.status_code < 500, summary.text
    # The R4 element table is a real check: an unknown element, a wrong shape, a wrong primitive type.
    for broken, where in (
        ({**example, "colour": "red"}, "MedicinalProduct.colour"),
        ({**example, "name": example["name"][0]}, "MedicinalProduct.name"),
        ({**example, "name": [{"productName": 5}]}, "MedicinalProduct.name[0].productName"),
        ({**example, "name": [{}]}, "MedicinalProduct.name[0]"),
    ):
        answer = client.post("/fhir/MedicinalProduct", json=broken, headers=FHIR)
        assert answer.status_code == 400, answer.text
        assert answer.json()["issue"][0]["expression"] == [where], answer.text
