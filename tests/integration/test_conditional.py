"""Conditional interactions and conditional references, on every backend (they rest on the search index)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.auth import mint_development_token
from tests.conftest import CORPUS
from tests.support.access import consent, secured_client
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


def test_conditional_create_with_the_search_in_the_url(client: TestClient) -> None:
    """fhirpy's ``get_or_create`` sends the condition as the query of the POST: it means If-None-Exist, never a
    duplicate; both at once are refused."""
    url = f"/fhir/Patient?identifier={CURP}|GOCA800203MDFMRN06"
    first = client.post(url, json=_patient("GOCA800203MDFMRN06"))
    assert first.status_code == 201, first.text
    again = client.post(url, json=_patient("GOCA800203MDFMRN06", active=True))
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"] and "active" not in again.json()
    found = client.get("/fhir/Patient", params={"identifier": f"{CURP}|GOCA800203MDFMRN06"}).json()
    assert found["total"] == 1
    both = client.post(url, json=_patient("GOCA800203MDFMRN06"), headers={"If-None-Exist": "identifier=x|y"})
    assert both.status_code == 400 and both.json()["resourceType"] == "OperationOutcome"
    plain = client.post("/fhir/Patient?_format=json", json=_patient("GOCA800203MDFMRN06"))
    assert plain.status_code == 201 and plain.json()["id"] != first.json()["id"]  # _format is no condition


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
    # A merge patch (fhirpy's ``search(...).patch(field=value)``, plain JSON) as the instance PATCH takes it.
    for media_type, gender in (("application/json", "male"), ("application/merge-patch+json", "other")):
        merged = client.patch(url, json={"gender": gender, "active": None}, headers={"content-type": media_type})
        assert merged.status_code == 200, merged.text
        assert merged.json()["gender"] == gender and "active" not in merged.json()
    not_an_object = client.patch(url, json=[{"op": "add"}], headers={"content-type": "application/json"})
    assert not_an_object.status_code == 400 and not_an_object.json()["resourceType"] == "OperationOutcome"
    # History names the HTTP action of each version (R4 Bundle.entry.request.method).
    history = client.get(f"/fhir/Patient/{patient_id}/_history").json()
    requests = [(entry["request"]["method"], entry["response"]["status"]) for entry in history["entry"]]
    assert requests == [("PATCH", "200 OK")] * 3 + [("POST", "201 Created")]
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


# -- conditional references outside a transaction (R4 http.html#trules, applied to every write) -------------

NPI = "http://hl7.org/fhir/sid/us-npi"
JSON_PATCH = {"content-type": "application/json-patch+json"}


def _practitioner(npi: str) -> dict[str, Any]:
    return {"resourceType": "Practitioner", "identifier": [{"system": NPI, "value": npi}], "name": [{"family": "Ruiz"}]}


def _encounter(practitioner: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "identifier": [{"system": "urn:ehr-core:test-visit", "value": "v-1"}],
        "participant": [{"individual": {"reference": practitioner, "display": "Dra. Ruiz"}}],
        **extra,
    }


def _individual(resource: dict[str, Any]) -> Any:
    return resource["participant"][0]["individual"]


def test_conditional_reference_on_create_update_and_patch_is_rewritten(client: TestClient) -> None:
    """Exactly one match: the stored reference is ``Type/id`` (the rest of the Reference as sent), and a
    search by that reference finds the resource."""
    first = client.post("/fhir/Practitioner", json=_practitioner("1111111111")).json()["id"]
    second = client.post("/fhir/Practitioner", json=_practitioner("2222222222")).json()["id"]
    by_npi = {first: f"Practitioner?identifier={NPI}|1111111111", second: f"Practitioner?identifier={NPI}|2222222222"}

    created = client.post("/fhir/Encounter", json=_encounter(by_npi[first]))
    assert created.status_code == 201, created.text
    encounter = created.json()
    url = f"/fhir/Encounter/{encounter['id']}"
    assert _individual(encounter) == {"reference": f"Practitioner/{first}", "display": "Dra. Ruiz"}
    assert _individual(client.get(url).json())["reference"] == f"Practitioner/{first}"
    found = client.get("/fhir/Encounter", params={"participant": f"Practitioner/{first}"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [encounter["id"]]

    updated = client.put(url, json=_encounter(by_npi[second]) | {"id": encounter["id"]})
    assert updated.status_code == 200, updated.text
    assert _individual(updated.json())["reference"] == f"Practitioner/{second}"

    merge = {"participant": [{"individual": {"reference": by_npi[second]}}]}
    fhirpath = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Encounter.participant[0].individual"},
                    {"name": "value", "valueReference": {"reference": by_npi[first]}},
                ],
            }
        ],
    }
    json_patch = [{"op": "replace", "path": "/participant/0/individual/reference", "value": by_npi[first]}]
    patches: list[tuple[str, Any, str]] = [
        ("application/json-patch+json", json_patch, first),
        ("application/merge-patch+json", merge, second),
        ("application/fhir+json", fhirpath, first),
    ]
    for media_type, body, expected in patches:
        patched = client.patch(url, json=body, headers={"content-type": media_type})
        assert patched.status_code == 200, patched.text
        assert _individual(patched.json())["reference"] == f"Practitioner/{expected}", media_type

    condition = "identifier=urn:ehr-core:test-visit|v-1"
    conditional_update = client.put(f"/fhir/Encounter?{condition}", json=_encounter(by_npi[second]))
    assert conditional_update.status_code == 200, conditional_update.text
    assert _individual(conditional_update.json())["reference"] == f"Practitioner/{second}"
    ops = [{"op": "replace", "path": "/participant/0/individual", "value": {"reference": by_npi[first]}}]
    conditional_patch = client.patch(f"/fhir/Encounter?{condition}", json=ops, headers=JSON_PATCH)
    assert conditional_patch.status_code == 200, conditional_patch.text
    assert _individual(conditional_patch.json())["reference"] == f"Practitioner/{first}"
    # The same reference twice in one resource: both rewritten.
    twice = _encounter(by_npi[second]) | {"participant": [{"individual": {"reference": by_npi[second]}}] * 2}
    both = client.post("/fhir/Encounter", json=twice).json()
    assert [p["individual"]["reference"] for p in both["participant"]] == [f"Practitioner/{second}"] * 2


def _refused(response: Any, status: int, element: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    outcome: dict[str, Any] = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert [issue.get("expression") for issue in outcome["issue"]] == [[element]], outcome
    return outcome


def test_conditional_reference_matching_nothing_is_422_and_several_412(client: TestClient) -> None:
    """No match: 422 naming the element; several: 412 naming it; criteria that are no search: 400 naming it.
    Nothing is stored in any of these cases."""
    client.post("/fhir/Practitioner", json=_practitioner("3333333333"))
    client.post("/fhir/Practitioner", json=_practitioner("3333333333"))
    encounter = client.post("/fhir/Encounter", json=_encounter("Practitioner/x") | {"participant": []}).json()
    url = f"/fhir/Encounter/{encounter['id']}"
    element = "Encounter.participant[0].individual"
    condition = "identifier=urn:ehr-core:test-visit|v-1"
    cases = [
        (f"Practitioner?identifier={NPI}|9999999999", 422, "not-found"),
        (f"Practitioner?identifier={NPI}|3333333333", 412, "multiple-matches"),
    ]
    for reference, status, code in cases:
        body = _encounter(reference)
        outcome = _refused(client.post("/fhir/Encounter", json=body), status, element)
        assert reference in outcome["issue"][0]["diagnostics"] and outcome["issue"][0]["code"] == code
        _refused(client.put(url, json=body | {"id": encounter["id"]}), status, element)
        _refused(client.put(f"/fhir/Encounter/new-{status}", json=body | {"id": f"new-{status}"}), status, element)
        add = [{"op": "add", "path": "/participant", "value": [{"individual": {"reference": reference}}]}]
        _refused(client.patch(url, json=add, headers=JSON_PATCH), status, element)
        _refused(client.patch(f"/fhir/Encounter?{condition}", json=add, headers=JSON_PATCH), status, element)
        _refused(client.put(f"/fhir/Encounter?{condition}", json=body), status, element)
        conditional_create = client.post("/fhir/Encounter", json=body, headers={"If-None-Exist": "identifier=x|y"})
        _refused(conditional_create, status, element)
        second = _encounter("Practitioner/x")
        second["participant"].append({"individual": {"reference": reference}})
        _refused(client.post("/fhir/Encounter", json=second), status, "Encounter.participant[1].individual")
    for criteria in (f"Practitioner?flavour={NPI}|1", "Practitioner?_count=1", "Foo?identifier=x|y"):
        _refused(client.post("/fhir/Encounter", json=_encounter(criteria)), 400, element)
    current = client.get(url).json()
    assert current["meta"]["versionId"] == "1" and current["participant"] == []
    assert client.get("/fhir/Encounter/new-422").status_code == 404
    assert client.get("/fhir/Encounter", params={"_summary": "count"}).json()["total"] == 1


@pytest.fixture
def secured(settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    """The same server with authentication on (both backends): callers are institutions."""
    with secured_client(settings, tmp_path / "ehr-data") as opened:
        yield opened


def _as(settings: Settings, institution: str) -> dict[str, str]:
    claims = {
        "institution": institution,
        "user": f"dr.{institution.lower()}",
        "role": "physician",
        "scope": "user/*.cruds",
    }
    return {"Authorization": f"Bearer {mint_development_token(settings, claims)}"}


def test_conditional_reference_never_matches_or_discloses_another_institutions_record(
    secured: tuple[TestClient, Settings],
) -> None:
    """IMSS's Patient, hidden from ISSSTE, is no match for ISSSTE's conditional reference by its CURP: with no
    record of its own the reference matches nothing (422, the hidden id nowhere in the answer); with its own
    record of the same person, that one alone (not 412, which would tell the hidden one exists). Once IMSS,
    the custodian, consents, IMSS's record is a match like any readable one."""
    client, settings = secured
    imss, issste = _as(settings, "IMSS"), _as(settings, "ISSSTE")
    curp = "MERL700321MJCNSC05"
    patient = {"resourceType": "Patient", "identifier": [{"system": CURP, "value": curp}], "name": [{"family": "M"}]}
    hidden = client.post("/fhir/Patient", json=patient, headers=imss)
    assert hidden.status_code == 201, hidden.text
    hidden_id = hidden.json()["id"]
    reference = f"Patient?identifier={CURP}|{curp}"
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "glucosa"}}
    note = client.post("/fhir/Observation", json=observation | {"subject": {"reference": "Patient/x"}}, headers=issste)
    assert note.status_code == 201, note.text
    note_url = f"/fhir/Observation/{note.json()['id']}"
    with_reference = observation | {"subject": {"reference": reference}} | {"id": note.json()["id"]}
    add = [{"op": "replace", "path": "/subject", "value": {"reference": reference}}]
    answers = [
        client.post("/fhir/Observation", json=with_reference, headers=issste),
        client.put(note_url, json=with_reference, headers=issste),
        client.patch(note_url, json=add, headers=issste | JSON_PATCH),
    ]
    for answer in answers:
        _refused(answer, 422, "Observation.subject")
        assert hidden_id not in answer.text and '"M"' not in answer.text

    own = client.post("/fhir/Patient", json=patient, headers=issste).json()["id"]
    for answer in (
        client.post("/fhir/Observation", json=with_reference, headers=issste),
        client.put(note_url, json=with_reference, headers=issste),
        client.patch(note_url, json=add, headers=issste | JSON_PATCH),
    ):
        assert answer.status_code in (200, 201), answer.text
        assert answer.json()["subject"]["reference"] == f"Patient/{own}" and hidden_id not in answer.text

    granted = client.post("/fhir/Consent", json=consent(hidden_id, "ISSSTE"), headers=imss)
    assert granted.status_code == 201, granted.text
    several = client.post("/fhir/Observation", json=with_reference, headers=issste)
    _refused(several, 412, "Observation.subject")  # both records are readable now: which one is meant?
    assert client.get(f"/fhir/Patient/{hidden_id}", headers=imss).json()["meta"]["versionId"] == "1"
