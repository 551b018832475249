"""``_list`` over HTTP on both backends (R4 search.html#list): the resources a List's entries name,
and the functional lists ``$current-problems``, ``$current-allergies``, ``$current-medications``."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.support.access import staff_headers


def _put(client: TestClient, resource: dict[str, Any], **headers: str) -> None:
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers=headers)
    assert response.status_code in (200, 201), response.text


def _ids(client: TestClient, query: str, **headers: str) -> list[str]:
    response = client.get(f"/fhir/{query}", headers=headers)
    assert response.status_code == 200, response.text
    return sorted(e["resource"]["id"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match")


def _list(list_id: str, *references: str) -> dict[str, Any]:
    return {
        "resourceType": "List",
        "id": list_id,
        "status": "current",
        "mode": "working",
        "entry": [{"item": {"reference": reference}} for reference in references],
    }


def _patients(client: TestClient, *ids: str, **headers: str) -> None:
    for patient_id in ids:
        _put(client, {"resourceType": "Patient", "id": patient_id, "name": [{"family": patient_id}]}, **headers)


def test_list_finds_the_entries_of_the_searched_type(client: TestClient) -> None:
    _patients(client, "a", "b", "c")
    _put(client, {"resourceType": "Practitioner", "id": "a"})
    _put(client, _list("42", "Patient/a", "Patient/c", "Practitioner/a", "Patient/missing"))
    _put(client, _list("43", "Patient/b"))
    assert _ids(client, "Patient?_list=42") == ["a", "c"]
    assert _ids(client, "Practitioner?_list=42") == ["a"]
    assert _ids(client, "Patient?_list=List/43") == ["b"]
    assert _ids(client, "Patient?_list=42,43") == ["a", "b", "c"]
    assert _ids(client, "Patient?_list=42&name=c") == ["c"]
    assert _ids(client, "Patient?_list=nothing") == []
    bundle = client.get("/fhir/Patient", params={"_list": "42"}).json()
    assert "_list=42" in next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    # The List changes: the search follows.
    _put(client, _list("42", "Patient/b"))
    assert _ids(client, "Patient?_list=42") == ["b"]
    assert client.delete("/fhir/List/42").status_code in (200, 204)
    assert _ids(client, "Patient?_list=42") == []


def test_functional_lists(client: TestClient) -> None:
    _patients(client, "p")

    def condition(resource_id: str, clinical: str | None, verification: str = "confirmed") -> dict[str, Any]:
        system = "http://terminology.hl7.org/CodeSystem/condition-"
        resource: dict[str, Any] = {
            "resourceType": "Condition",
            "id": resource_id,
            "subject": {"reference": "Patient/p"},
            "verificationStatus": {"coding": [{"system": f"{system}ver-status", "code": verification}]},
        }
        if clinical is not None:
            resource["clinicalStatus"] = {"coding": [{"system": f"{system}clinical", "code": clinical}]}
        return resource

    _put(client, condition("active", "active"))
    _put(client, condition("relapse", "relapse"))
    _put(client, condition("resolved", "resolved"))
    _put(client, condition("error", None, "entered-in-error"))  # R4 con-5: no clinicalStatus then
    assert _ids(client, "Condition?patient=p&_list=$current-problems") == ["active", "relapse"]
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "penicilina",
        "patient": {"reference": "Patient/p"},
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}
            ]
        },
    }
    _put(client, allergy)
    assert _ids(client, "AllergyIntolerance?patient=p&_list=$current-allergies") == ["penicilina"]
    medication = {
        "resourceType": "MedicationStatement",
        "id": "metformina",
        "status": "active",
        "subject": {"reference": "Patient/p"},
        "medicationCodeableConcept": {"text": "metformina"},
    }
    _put(client, medication)
    _put(client, {**medication, "id": "suspendida", "status": "stopped"})
    assert _ids(client, "MedicationStatement?subject=p&_list=$current-medications") == ["metformina"]
    for query, named in (
        ("Patient?_list=$current-problems", "$current-problems"),
        ("Condition?_list=$current-drugs", "$current-drugs"),
    ):
        refused = client.get(f"/fhir/{query}")
        assert refused.status_code == 400, refused.text
        outcome = refused.json()
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "not-supported"
        assert named in outcome["issue"][0]["diagnostics"]


def test_a_list_the_caller_may_not_read_lists_nothing(secured_client: Any) -> None:
    """The List's entries tell what it holds: through a List the caller may not see, nothing is found."""
    client, settings = secured_client
    imss, issste = staff_headers(settings, "IMSS"), staff_headers(settings, "ISSSTE")
    _patients(client, "x", **imss)
    _put(client, _list("imss-list", "Patient/x"), **imss)
    _patients(client, "y", **issste)
    _put(client, _list("issste-list", "Patient/x", "Patient/y"), **issste)
    assert _ids(client, "Patient?_list=imss-list", **imss) == ["x"]
    # ISSSTE's own List names x, but x is IMSS's: ISSSTE sees only its own y.
    assert _ids(client, "Patient?_list=issste-list", **issste) == ["y"]
    # IMSS may not read ISSSTE's List: nothing is found through it, not even IMSS's own x.
    assert _ids(client, "Patient?_list=issste-list", **imss) == []
