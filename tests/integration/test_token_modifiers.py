"""Token search modifiers answered by the terminology store (R4 search.html#token): ``:in`` and ``:not-in`` (a
value set's expansion), ``:below`` and ``:above`` (a code system's hierarchy), over HTTP on both backends.

The hierarchy is a fragment of the CIE-10 (ICD-10 as the Secretaría de Salud publishes it for Mexico) stored as
a CodeSystem under the ICD-10 url: chapters, blocks, categories and subcategories.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from httpx import Response

from tests.support.terminology import concept as _concept

FHIR = {"Content-Type": "application/fhir+json"}
ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
GENDER_VS = "http://hl7.org/fhir/ValueSet/administrative-gender"
DIABETES_VS = "urn:ehr-core:vs:cie-10-diabetes"


CIE10: dict[str, Any] = {
    "resourceType": "CodeSystem",
    "id": "cie-10-fragmento",
    "url": ICD10,
    "version": "2019",
    "name": "CIE10Fragmento",
    "status": "active",
    "content": "fragment",
    "hierarchyMeaning": "is-a",
    "concept": [
        _concept(
            "IV",
            "Enfermedades endocrinas, nutricionales y metabólicas",
            _concept(
                "E00-E90",
                "Enfermedades endocrinas, nutricionales y metabólicas (bloques)",
                _concept(
                    "E10-E14",
                    "Diabetes mellitus",
                    _concept("E10", "Diabetes mellitus insulinodependiente"),
                    _concept(
                        "E11",
                        "Diabetes mellitus no insulinodependiente",
                        _concept("E11.0", "Diabetes mellitus no insulinodependiente, con coma"),
                        _concept("E11.9", "Diabetes mellitus no insulinodependiente, sin mención de complicación"),
                    ),
                ),
            ),
        ),
        _concept(
            "IX",
            "Enfermedades del sistema circulatorio",
            _concept("I10-I15", "Enfermedades hipertensivas", _concept("I10", "Hipertensión esencial (primaria)")),
        ),
    ],
}

DIABETES: dict[str, Any] = {
    "resourceType": "ValueSet",
    "id": "cie-10-diabetes",
    "url": DIABETES_VS,
    "status": "active",
    "compose": {"include": [{"system": ICD10, "filter": [{"property": "concept", "op": "is-a", "value": "E10-E14"}]}]},
}

FEMALE_ONLY: dict[str, Any] = {
    "resourceType": "ValueSet",
    "id": "solo-femenino",
    "url": "urn:ehr-core:vs:solo-femenino",
    "status": "active",
    "compose": {"include": [{"system": "http://hl7.org/fhir/administrative-gender", "concept": [{"code": "female"}]}]},
}

ALL_OF_SNOMED: dict[str, Any] = {
    "resourceType": "ValueSet",
    "id": "todo-snomed",
    "url": "urn:ehr-core:vs:todo-snomed",
    "status": "active",
    "compose": {"include": [{"system": SNOMED}]},
}


def _put(client: TestClient, resource: dict[str, Any]) -> None:
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers=FHIR)
    assert response.status_code in (200, 201), response.text


def _patient(client: TestClient, resource_id: str, gender: str | None) -> None:
    patient: dict[str, Any] = {"resourceType": "Patient", "id": resource_id, "name": [{"family": resource_id}]}
    if gender is not None:
        patient["gender"] = gender
    _put(client, patient)


def _condition(client: TestClient, resource_id: str, patient: str, *codings: tuple[str, str]) -> None:
    condition: dict[str, Any] = {"resourceType": "Condition", "id": resource_id, "subject": {"reference": patient}}
    if codings:
        condition["code"] = {"coding": [{"system": system, "code": code} for system, code in codings]}
    _put(client, condition)


def _load(client: TestClient) -> None:
    for resource in (CIE10, DIABETES, FEMALE_ONLY, ALL_OF_SNOMED):
        _put(client, resource)
    _patient(client, "ana", "female")
    _patient(client, "beto", "male")
    _patient(client, "sin-genero", None)
    _condition(client, "dm2", "Patient/ana", (ICD10, "E11.9"))
    _condition(client, "dm2-sin-detalle", "Patient/beto", (ICD10, "E11"))
    _condition(client, "dm1", "Patient/beto", (ICD10, "E10"))
    _condition(client, "hta", "Patient/ana", (ICD10, "I10"))
    # The same code in another system is another concept: no value set of CIE-10 holds it.
    _condition(client, "otro-sistema", "Patient/ana", ("urn:ehr-core:cs:local", "E11.9"))
    _condition(client, "sin-codigo", "Patient/ana")


def _ids(client: TestClient, query: str) -> set[str]:
    response = client.get(f"/fhir/{query}")
    assert response.status_code == 200, response.text
    return {entry["resource"]["id"] for entry in response.json().get("entry", []) if entry["search"]["mode"] == "match"}


def _outcome(response: Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return " ".join(issue.get("diagnostics", "") for issue in body["issue"])


def test_in_the_spec_value_set_of_a_code_element(client: TestClient) -> None:
    _load(client)
    assert _ids(client, f"Patient?gender:in={GENDER_VS}") == {"ana", "beto"}
    assert _ids(client, "Patient?gender:in=ValueSet/solo-femenino") == {"ana"}
    assert _ids(client, "Patient?gender:in=urn:ehr-core:vs:solo-femenino") == {"ana"}
    # :not-in, as :not: the resources with no value of the parameter match too.
    assert _ids(client, "Patient?gender:not-in=ValueSet/solo-femenino") == {"beto", "sin-genero"}


def test_in_a_stored_value_set_over_a_stored_hierarchy(client: TestClient) -> None:
    _load(client)
    diabetes = {"dm2", "dm2-sin-detalle", "dm1"}
    assert _ids(client, f"Condition?code:in={DIABETES_VS}") == diabetes
    assert _ids(client, "Condition?code:in=ValueSet/cie-10-diabetes") == diabetes
    assert _ids(client, "Condition?code:in=http://testserver/fhir/ValueSet/cie-10-diabetes") == diabetes
    assert _ids(client, f"Condition?code:not-in={DIABETES_VS}") == {"hta", "otro-sistema", "sin-codigo"}
    # A comma ORs: the codes of either value set.
    assert _ids(client, f"Condition?code:in={DIABETES_VS},ValueSet/solo-femenino") == diabetes


def test_below_and_above_walk_the_stored_hierarchy(client: TestClient) -> None:
    _load(client)
    assert _ids(client, f"Condition?code:below={ICD10}|E11") == {"dm2", "dm2-sin-detalle"}
    assert _ids(client, f"Condition?code:below={ICD10}|E00-E90") == {"dm2", "dm2-sin-detalle", "dm1"}
    assert _ids(client, f"Condition?code:below={ICD10}|E11.9") == {"dm2"}
    assert _ids(client, f"Condition?code:below={ICD10}|E10,{ICD10}|I10-I15") == {"dm1", "hta"}
    # :above: the codes that subsume the one given (it included), E11.9 ⊂ E11 ⊂ E10-E14 ⊂ E00-E90 ⊂ IV.
    assert _ids(client, f"Condition?code:above={ICD10}|E11.9") == {"dm2", "dm2-sin-detalle"}
    assert _ids(client, f"Condition?code:above={ICD10}|E11") == {"dm2-sin-detalle"}
    assert _ids(client, f"Condition?code:above={ICD10}|E10-E14") == set()


def test_combined_with_other_parameters_and_chains(client: TestClient) -> None:
    _load(client)
    assert _ids(client, f"Condition?code:in={DIABETES_VS}&subject=Patient/ana") == {"dm2"}
    assert _ids(client, f"Condition?code:below={ICD10}|E10-E14&subject=Patient/beto") == {"dm2-sin-detalle", "dm1"}
    assert _ids(client, f"Condition?code:not-in={DIABETES_VS}&code:below={ICD10}|IX") == {"hta"}
    assert _ids(client, "Condition?subject:Patient.gender:in=ValueSet/solo-femenino&code:below=" + ICD10 + "|IV") == {
        "dm2"
    }
    response = client.get(f"/fhir/Condition?code:in={DIABETES_VS}&_summary=count")
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 3


def test_a_value_set_stored_just_now_applies(client: TestClient) -> None:
    _load(client)
    hypertension = {
        "resourceType": "ValueSet",
        "id": "cie-10-hipertension",
        "url": "urn:ehr-core:vs:cie-10-hipertension",
        "status": "active",
        "compose": {"include": [{"system": ICD10, "concept": [{"code": "I10"}]}]},
    }
    _put(client, hypertension)
    assert _ids(client, "Condition?code:in=ValueSet/cie-10-hipertension") == {"hta"}


def test_unknown_value_set_or_hierarchy_is_an_operation_outcome(client: TestClient) -> None:
    _load(client)
    unknown = "urn:ehr-core:vs:no-existe"
    assert unknown in _outcome(client.get(f"/fhir/Condition?code:in={unknown}"), 400)
    assert "ValueSet/no-existe" in _outcome(client.get("/fhir/Condition?code:not-in=ValueSet/no-existe"), 400)
    # A system this server does not hold, or holds only by name (the spec's SNOMED CT: content not-present).
    assert "urn:ehr-core:cs:desconocido" in _outcome(
        client.get("/fhir/Condition?code:below=urn:ehr-core:cs:desconocido|X1"), 400
    )
    assert SNOMED in _outcome(client.get(f"/fhir/Condition?code:above={SNOMED}|44054006"), 400)
    assert "Z99" in _outcome(client.get(f"/fhir/Condition?code:below={ICD10}|Z99"), 400)
    # :below and :above need a system and a code.
    assert "system" in _outcome(client.get("/fhir/Condition?code:below=E11"), 400)
    # A value set drawing on all of an external terminology is too costly to expand.
    assert SNOMED in _outcome(client.get("/fhir/Condition?code:in=ValueSet/todo-snomed"), 422)
    # _id is no code: the terminology modifiers are not supported on it.
    _outcome(client.get(f"/fhir/Condition?_id:in={DIABETES_VS}"), 400)


def test_an_expansion_over_the_cap_is_too_costly(client: TestClient) -> None:
    big = {
        "resourceType": "ValueSet",
        "id": "enorme",
        "url": "urn:ehr-core:vs:enorme",
        "status": "active",
        "expansion": {
            "timestamp": "2024-01-01T00:00:00Z",
            "contains": [{"system": "urn:ehr-core:cs:grande", "code": f"c{n}"} for n in range(10_001)],
        },
    }
    _put(client, big)
    message = _outcome(client.get("/fhir/Condition?code:in=ValueSet/enorme"), 422)
    assert "10000" in message
