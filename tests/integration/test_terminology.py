"""The terminology service (R4 terminology-service.html) over the spec's code systems and value sets and those
a user stores: $expand, $lookup, $validate-code, $subsumes, $translate, by GET and by POST with a Parameters
body, at type and instance level (both backends).

The stored hierarchy is a fragment of the CIE-10 (ICD-10 as the Secretaría de Salud publishes it for Mexico):
two chapters, blocks under them, categories and subcategories under the blocks.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from tests.support.terminology import concept as _concept

FHIR = {"Content-Type": "application/fhir+json"}
GENDER_VS = "http://hl7.org/fhir/ValueSet/administrative-gender"
GENDER = "http://hl7.org/fhir/administrative-gender"
OBSERVATION_STATUS = "http://hl7.org/fhir/observation-status"
SNOMED = "http://snomed.info/sct"
CIE10 = "urn:ehr-core:cs:cie-10"
HYPERTENSION_VS = "urn:ehr-core:vs:cie-10-hipertension"
MAP = "urn:ehr-core:cm:cie-10-a-snomed"


CIE10_FRAGMENT: dict[str, Any] = {
    "resourceType": "CodeSystem",
    "id": "cie-10",
    "url": CIE10,
    "version": "2019",
    "name": "CIE10Fragmento",
    "title": "CIE-10, fragmento (capítulos IV y IX)",
    "status": "active",
    "content": "fragment",
    "hierarchyMeaning": "is-a",
    "caseSensitive": True,
    "concept": [
        _concept(
            "IX",
            "Enfermedades del sistema circulatorio",
            _concept(
                "I10-I15",
                "Enfermedades hipertensivas",
                _concept("I10", "Hipertensión esencial (primaria)"),
                _concept(
                    "I11",
                    "Enfermedad cardíaca hipertensiva",
                    _concept("I11.0", "Enfermedad cardíaca hipertensiva con insuficiencia cardíaca (congestiva)"),
                    _concept("I11.9", "Enfermedad cardíaca hipertensiva sin insuficiencia cardíaca (congestiva)"),
                ),
                _concept("I12", "Enfermedad renal hipertensiva"),
            ),
            _concept(
                "I20-I25",
                "Enfermedades isquémicas del corazón",
                _concept("I20", "Angina de pecho"),
                _concept("I21", "Infarto agudo del miocardio"),
            ),
        ),
        _concept(
            "IV",
            "Enfermedades endocrinas, nutricionales y metabólicas",
            _concept(
                "E10-E14",
                "Diabetes mellitus",
                _concept("E10", "Diabetes mellitus insulinodependiente"),
                _concept("E11", "Diabetes mellitus no insulinodependiente"),
            ),
        ),
    ],
}

HYPERTENSION: dict[str, Any] = {
    "resourceType": "ValueSet",
    "id": "cie-10-hipertension",
    "url": HYPERTENSION_VS,
    "status": "active",
    "compose": {"include": [{"system": CIE10, "filter": [{"property": "concept", "op": "is-a", "value": "I10-I15"}]}]},
}

CIE10_TO_SNOMED: dict[str, Any] = {
    "resourceType": "ConceptMap",
    "id": "cie-10-a-snomed",
    "url": MAP,
    "status": "active",
    "sourceUri": HYPERTENSION_VS,
    "targetUri": "http://snomed.info/sct?fhir_vs",
    "group": [
        {
            "source": CIE10,
            "target": SNOMED,
            "element": [
                {
                    "code": "I10",
                    "target": [{"code": "59621000", "display": "Essential hypertension", "equivalence": "equivalent"}],
                },
                {
                    "code": "I11",
                    "target": [
                        {"code": "64715009", "display": "Hypertensive heart disease", "equivalence": "equivalent"}
                    ],
                },
                {"code": "I12", "target": [{"equivalence": "unmatched"}]},
            ],
        }
    ],
}


def parameters(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(items)}


def _put(client: TestClient, resource: dict[str, Any]) -> None:
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers=FHIR)
    assert response.status_code in (200, 201), response.text


def _load(client: TestClient) -> None:
    for resource in (CIE10_FRAGMENT, HYPERTENSION, CIE10_TO_SNOMED):
        _put(client, resource)


def _ok(response: Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _outcome(response: Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == code, body
    return str(body["issue"][0].get("diagnostics", ""))


def _codes(value_set: dict[str, Any]) -> list[str]:
    return [item["code"] for item in value_set["expansion"].get("contains", [])]


def _out(answer: dict[str, Any]) -> dict[str, Any]:
    """A Parameters answer as name → value (the first of each name; parts as lists of (name, value))."""
    found: dict[str, Any] = {}
    for item in answer["parameter"]:
        if "part" in item:
            value: Any = [(p["name"], next(v for k, v in p.items() if k.startswith("value"))) for p in item["part"]]
        else:
            value = next(v for k, v in item.items() if k.startswith("value"))
        found.setdefault(item["name"], value)
    return found


def _properties(answer: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for item in answer["parameter"]:
        if item["name"] == "property":
            parts = {p["name"]: p for p in item["part"]}
            found.append((parts["code"]["valueCode"], parts["value"]["valueCode"]))
    return found


# -- $expand ----------------------------------------------------------------------------------------


def test_expand_of_a_spec_value_set(client: TestClient) -> None:
    expanded = _ok(client.get("/fhir/ValueSet/$expand", params={"url": GENDER_VS}))
    assert expanded["resourceType"] == "ValueSet" and expanded["url"] == GENDER_VS
    assert expanded["expansion"]["total"] == 4
    assert _codes(expanded) == ["male", "female", "other", "unknown"]
    assert {item["system"] for item in expanded["expansion"]["contains"]} == {GENDER}
    assert expanded["expansion"]["contains"][0]["display"] == "Male"
    posted = _ok(client.post("/fhir/ValueSet/$expand", json=parameters({"name": "url", "valueUri": GENDER_VS}),
                             headers=FHIR))  # fmt: skip
    assert _codes(posted) == _codes(expanded)
    # The spec's value sets are instances too, by their published id.
    assert _codes(_ok(client.get("/fhir/ValueSet/administrative-gender/$expand"))) == _codes(expanded)


def test_expand_is_a_over_a_stored_hierarchy(client: TestClient) -> None:
    _load(client)
    expanded = _ok(client.get("/fhir/ValueSet/$expand", params={"url": HYPERTENSION_VS}))
    assert _codes(expanded) == ["I10-I15", "I10", "I11", "I11.0", "I11.9", "I12"]
    assert expanded["expansion"]["total"] == 6
    assert _codes(_ok(client.get("/fhir/ValueSet/cie-10-hipertension/$expand"))) == _codes(expanded)
    assert _codes(_ok(client.post("/fhir/ValueSet/cie-10-hipertension/$expand", headers=FHIR))) == _codes(expanded)


def _posted_expansion(client: TestClient, compose: dict[str, Any]) -> Response:
    value_set = {"resourceType": "ValueSet", "status": "active", "compose": compose}
    return client.post("/fhir/ValueSet/$expand", json=parameters({"name": "valueSet", "resource": value_set}),
                       headers=FHIR)  # fmt: skip


def test_expand_compose_forms(client: TestClient) -> None:
    _load(client)

    def codes(compose: dict[str, Any]) -> list[str]:
        return _codes(_ok(_posted_expansion(client, compose)))

    def having(*filters: tuple[str, str, str]) -> dict[str, Any]:
        return {"system": CIE10, "filter": [{"property": p, "op": o, "value": v} for p, o, v in filters]}

    assert codes({"include": [having(("concept", "descendent-of", "I11"))]}) == ["I11.0", "I11.9"]
    assert codes({"include": [having(("code", "regex", r"I2\d"))]}) == ["I20", "I21"]
    assert codes({"include": [having(("concept", "=", "E11"))]}) == ["E11"]
    assert codes({"include": [having(("concept", "is-a", "IX"), ("concept", "regex", r"I1.*"))]}) == [
        "I10-I15", "I10", "I11", "I11.0", "I11.9", "I12"]  # fmt: skip
    # A concept list, with the displays of the code system where the value set gives none.
    listed = _ok(_posted_expansion(client, {"include": [{"system": CIE10, "concept": [{"code": "E11"},
                                                                                     {"code": "I10"}]}]}))  # fmt: skip
    assert [(c["code"], c["display"]) for c in listed["expansion"]["contains"]] == [
        ("E11", "Diabetes mellitus no insulinodependiente"), ("I10", "Hipertensión esencial (primaria)")]  # fmt: skip
    # A whole (stored) system, less an exclude; a nested import of a stored value set, less a filter.
    whole = codes({"include": [{"system": CIE10}], "exclude": [having(("concept", "is-a", "IX"))]})
    assert whole == ["IV", "E10-E14", "E10", "E11"]
    nested = codes({"include": [{"valueSet": [HYPERTENSION_VS]}], "exclude": [having(("concept", "is-a", "I11"))]})
    assert nested == ["I10-I15", "I10", "I12"]
    # Two imports intersect; a spec value set and a stored one in the same compose.
    both = codes({"include": [{"valueSet": [HYPERTENSION_VS]}, {"valueSet": [GENDER_VS]}]})
    assert both == ["I10-I15", "I10", "I11", "I11.0", "I11.9", "I12", "male", "female", "other", "unknown"]


def test_expand_pages_with_count_and_offset(client: TestClient) -> None:
    _load(client)
    everything = _codes(_ok(client.get("/fhir/ValueSet/$expand", params={"url": HYPERTENSION_VS})))
    page = _ok(client.get("/fhir/ValueSet/$expand", params={"url": HYPERTENSION_VS, "count": "2", "offset": "1"}))
    assert _codes(page) == everything[1:3]
    assert page["expansion"]["total"] == 6 and page["expansion"]["offset"] == 1
    assert {"name": "count", "valueInteger": 2} in page["expansion"]["parameter"]
    posted = _ok(
        client.post(
            "/fhir/ValueSet/$expand",
            json=parameters(
                {"name": "url", "valueUri": HYPERTENSION_VS},
                {"name": "count", "valueInteger": 2},
                {"name": "offset", "valueInteger": 4},
            ),
            headers=FHIR,
        )
    )
    assert _codes(posted) == everything[4:6]
    beyond = _ok(client.get("/fhir/ValueSet/$expand", params={"url": HYPERTENSION_VS, "offset": "10"}))
    assert _codes(beyond) == [] and beyond["expansion"]["total"] == 6
    _outcome(client.get("/fhir/ValueSet/$expand", params={"url": HYPERTENSION_VS, "count": "-1"}), 400, "invalid")


def test_expand_filter_text(client: TestClient) -> None:
    _load(client)
    filtered = _ok(client.get("/fhir/ValueSet/$expand", params={"url": HYPERTENSION_VS, "filter": "insuficiencia"}))
    assert _codes(filtered) == ["I11.0", "I11.9"] and filtered["expansion"]["total"] == 2
    assert {"name": "filter", "valueString": "insuficiencia"} in filtered["expansion"]["parameter"]
    # Every word must begin a word of the display; case does not matter; a code prefix matches too.
    words = _ok(client.get("/fhir/ValueSet/$expand", params={"url": HYPERTENSION_VS, "filter": "SIN insuf"}))
    assert _codes(words) == ["I11.9"]
    assert _codes(_ok(client.get("/fhir/ValueSet/$expand", params={"url": HYPERTENSION_VS, "filter": "I11"}))) == [
        "I11", "I11.0", "I11.9"]  # fmt: skip
    posted = client.post("/fhir/ValueSet/$expand", headers=FHIR, json=parameters(
        {"name": "url", "valueUri": GENDER_VS}, {"name": "filter", "valueString": "fem"}))  # fmt: skip
    assert _codes(_ok(posted)) == ["female"]


def test_expand_errors(client: TestClient) -> None:
    _outcome(client.get("/fhir/ValueSet/$expand", params={"url": "urn:ehr-core:vs:none"}), 404, "not-found")
    _outcome(client.get("/fhir/ValueSet/none/$expand"), 404, "not-found")
    _outcome(client.get("/fhir/ValueSet/$expand"), 400, "required")
    # All of SNOMED CT or LOINC cannot be listed: too costly (422), whatever the filter.
    snomed = _posted_expansion(client, {"include": [{"system": SNOMED}]})
    assert "snomed" in _outcome(snomed, 422, "too-costly")
    loinc = {
        "include": [{"system": "http://loinc.org", "filter": [{"property": "SCALE_TYP", "op": "=", "value": "Ord"}]}]
    }
    _outcome(_posted_expansion(client, loinc), 422, "too-costly")
    # The spec's own value sets that draw on SNOMED CT whole, asked by url, answer the same.
    _outcome(client.get("/fhir/ValueSet/$expand", params={"url": "http://hl7.org/fhir/ValueSet/clinical-findings"}),
             422, "too-costly")  # fmt: skip
    _outcome(_posted_expansion(client, {"include": [{"system": "urn:ehr-core:cs:none"}]}), 422, "not-found")
    # A listed SNOMED CT concept is fine: no need to hold the code system to list it.
    listed = _posted_expansion(client, {"include": [{"system": SNOMED, "concept": [{"code": "59621000"}]}]})
    assert _codes(_ok(listed)) == ["59621000"]
    _outcome(client.get("/fhir/ValueSet/$expand", params={"url": GENDER_VS, "colour": "red"}), 400, "not-supported")


# -- $lookup ----------------------------------------------------------------------------------------


def test_lookup_of_spec_codes(client: TestClient) -> None:
    male = _out(_ok(client.get("/fhir/CodeSystem/$lookup", params={"system": GENDER, "code": "male"})))
    assert male["name"] == "AdministrativeGender" and male["display"] == "Male" and male["version"] == "4.0.1"
    # A hierarchical one: observation-status ``amended`` has ``corrected`` below it.
    amended = _ok(client.get("/fhir/CodeSystem/$lookup", params={"system": OBSERVATION_STATUS, "code": "amended"}))
    assert _properties(amended) == [("child", "corrected")]
    corrected = client.post("/fhir/CodeSystem/$lookup", headers=FHIR, json=parameters(
        {"name": "coding", "valueCoding": {"system": OBSERVATION_STATUS, "code": "corrected"}}))  # fmt: skip
    assert _properties(_ok(corrected)) == [("parent", "amended")]
    assert _out(_ok(corrected))["display"] == "Corrected"


def test_lookup_of_a_stored_hierarchy(client: TestClient) -> None:
    _load(client)
    found = _ok(client.get("/fhir/CodeSystem/$lookup", params={"system": CIE10, "code": "I11"}))
    assert _out(found)["display"] == "Enfermedad cardíaca hipertensiva" and _out(found)["version"] == "2019"
    assert _properties(found) == [("parent", "I10-I15"), ("child", "I11.0"), ("child", "I11.9")]
    only_parent = client.get("/fhir/CodeSystem/$lookup", params={"system": CIE10, "code": "I11", "property": "parent"})
    assert _properties(_ok(only_parent)) == [("parent", "I10-I15")]
    posted = client.post("/fhir/CodeSystem/$lookup", headers=FHIR, json=parameters(
        {"name": "system", "valueUri": CIE10}, {"name": "code", "valueCode": "I11.0"}))  # fmt: skip
    assert _properties(_ok(posted)) == [("parent", "I11")]
    # The store follows the log: a deleted code system no longer answers.
    assert client.delete("/fhir/CodeSystem/cie-10").status_code in (200, 204)
    _outcome(client.get("/fhir/CodeSystem/$lookup", params={"system": CIE10, "code": "I11"}), 404, "not-found")


def test_lookup_errors(client: TestClient) -> None:
    # An unknown code system, or a code it does not hold: the concept named does not exist here (404).
    _outcome(client.get("/fhir/CodeSystem/$lookup", params={"system": SNOMED, "code": "59621000"}), 404, "not-found")
    _outcome(client.get("/fhir/CodeSystem/$lookup", params={"system": GENDER, "code": "hombre"}), 404, "not-found")
    _outcome(client.get("/fhir/CodeSystem/$lookup", params={"code": "male"}), 400, "required")


# -- $validate-code ----------------------------------------------------------------------------------


def test_validate_code_true_and_false(client: TestClient) -> None:
    valid = _out(_ok(client.get("/fhir/ValueSet/$validate-code", params={"url": GENDER_VS, "system": GENDER,
                                                                          "code": "female"})))  # fmt: skip
    assert valid == {"result": True, "display": "Female"}
    invalid = _out(_ok(client.get("/fhir/ValueSet/$validate-code", params={"url": GENDER_VS, "code": "hombre"})))
    assert invalid["result"] is False and "hombre" in invalid["message"]
    other_system = client.get("/fhir/ValueSet/$validate-code", params={"url": GENDER_VS, "system": CIE10,
                                                                       "code": "male"})  # fmt: skip
    assert _out(_ok(other_system))["result"] is False
    wrong_display = client.get("/fhir/ValueSet/$validate-code", params={"url": GENDER_VS, "code": "male",
                                                                        "display": "Hombre"})  # fmt: skip
    assert _out(_ok(wrong_display))["result"] is False and "Male" in _out(_ok(wrong_display))["message"]
    posted = client.post("/fhir/ValueSet/$validate-code", headers=FHIR, json=parameters(
        {"name": "url", "valueUri": GENDER_VS},
        {"name": "coding", "valueCoding": {"system": GENDER, "code": "unknown"}}))  # fmt: skip
    assert _out(_ok(posted)) == {"result": True, "display": "Unknown"}


def test_validate_code_against_a_stored_value_set(client: TestClient) -> None:
    _load(client)
    inside = client.get("/fhir/ValueSet/cie-10-hipertension/$validate-code", params={"system": CIE10, "code": "I11.9"})
    assert _out(_ok(inside))["result"] is True
    outside = client.post("/fhir/ValueSet/cie-10-hipertension/$validate-code", headers=FHIR, json=parameters(
        {"name": "coding", "valueCoding": {"system": CIE10, "code": "I21"}}))  # fmt: skip
    assert _out(_ok(outside))["result"] is False
    _outcome(client.get("/fhir/ValueSet/none/$validate-code", params={"code": "I10"}), 404, "not-found")
    _outcome(client.get("/fhir/ValueSet/$validate-code", params={"url": GENDER_VS}), 400, "required")


# -- $subsumes --------------------------------------------------------------------------------------


def test_subsumes(client: TestClient) -> None:
    _load(client)

    def outcome(a: str, b: str) -> str:
        answer = _ok(client.get("/fhir/CodeSystem/$subsumes", params={"system": CIE10, "codeA": a, "codeB": b}))
        return str(_out(answer)["outcome"])

    assert outcome("I10-I15", "I11.0") == "subsumes"
    assert outcome("I11.0", "IX") == "subsumed-by"
    assert outcome("I10", "I21") == "not-subsumed"
    assert outcome("I11", "I11") == "equivalent"
    instance = client.get("/fhir/CodeSystem/cie-10/$subsumes", params={"codeA": "IV", "codeB": "E11"})
    assert _out(_ok(instance))["outcome"] == "subsumes"
    posted = client.post("/fhir/CodeSystem/$subsumes", headers=FHIR, json=parameters(
        {"name": "codingA", "valueCoding": {"system": OBSERVATION_STATUS, "code": "corrected"}},
        {"name": "codingB", "valueCoding": {"system": OBSERVATION_STATUS, "code": "amended"}}))  # fmt: skip
    assert _out(_ok(posted))["outcome"] == "subsumed-by"
    _outcome(client.get("/fhir/CodeSystem/$subsumes", params={"system": CIE10, "codeA": "I10", "codeB": "Z99"}),
             422, "not-found")  # fmt: skip
    _outcome(client.get("/fhir/CodeSystem/$subsumes", params={"system": SNOMED, "codeA": "1", "codeB": "2"}),
             404, "not-found")  # fmt: skip
    _outcome(client.get("/fhir/CodeSystem/none/$subsumes", params={"codeA": "1", "codeB": "2"}), 404, "not-found")


# -- $translate -------------------------------------------------------------------------------------


def _matches(answer: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for item in answer["parameter"]:
        if item["name"] == "match":
            parts = {p["name"]: p for p in item["part"]}
            found.append((parts["equivalence"]["valueCode"], parts["concept"]["valueCoding"]["code"]))
    return found


def test_translate_with_a_stored_concept_map(client: TestClient) -> None:
    _load(client)
    mapped = _ok(client.get("/fhir/ConceptMap/$translate", params={"system": CIE10, "code": "I10"}))
    assert _out(mapped)["result"] is True and _matches(mapped) == [("equivalent", "59621000")]
    source = next(p for item in mapped["parameter"] if item["name"] == "match" for p in item["part"]
                  if p["name"] == "source")  # fmt: skip
    assert source["valueUri"] == MAP
    posted = client.post("/fhir/ConceptMap/$translate", headers=FHIR, json=parameters(
        {"name": "url", "valueUri": MAP}, {"name": "coding", "valueCoding": {"system": CIE10, "code": "I11"}},
        {"name": "targetsystem", "valueUri": SNOMED}))  # fmt: skip
    assert _matches(_ok(posted)) == [("equivalent", "64715009")]
    instance = client.get("/fhir/ConceptMap/cie-10-a-snomed/$translate", params={"system": SNOMED, "code": "59621000",
                                                                                  "reverse": "true"})  # fmt: skip
    assert _out(_ok(instance))["result"] is True and _matches(_ok(instance)) == [("equivalent", "I10")]
    # No mapping, or one that says "unmatched", is the answer: result false with a message.
    unmatched = _out(_ok(client.get("/fhir/ConceptMap/$translate", params={"system": CIE10, "code": "I12"})))
    assert unmatched["result"] is False and "I12" in unmatched["message"]
    assert _out(_ok(client.get("/fhir/ConceptMap/$translate", params={"system": CIE10, "code": "E11"})))[
        "result"] is False  # fmt: skip
    elsewhere = client.get("/fhir/ConceptMap/$translate", params={"system": CIE10, "code": "I10",
                                                                  "source": GENDER_VS})  # fmt: skip
    assert _out(_ok(elsewhere))["result"] is False
    _outcome(client.get("/fhir/ConceptMap/$translate", params={"url": "urn:ehr-core:cm:none", "code": "I10"}), 404,
             "not-found")  # fmt: skip
    _outcome(client.get("/fhir/ConceptMap/none/$translate", params={"code": "I10"}), 404, "not-found")


# -- the CapabilityStatement ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_type", "code"),
    [("CodeSystem", "lookup"), ("CodeSystem", "subsumes"), ("ValueSet", "expand"), ("ValueSet", "validate-code"),
     ("ConceptMap", "translate")],
)  # fmt: skip
def test_the_capability_statement_lists_each_operation(client: TestClient, resource_type: str, code: str) -> None:
    statement = _ok(client.get("/fhir/metadata"))
    resource = next(r for r in statement["rest"][0]["resource"] if r["type"] == resource_type)
    listed = {op["name"]: op["definition"] for op in resource.get("operation", [])}
    assert code in listed
    definition = _ok(client.get(f"/fhir/OperationDefinition/{listed[code].rsplit('/', 1)[1]}"))
    assert definition["code"] == code and resource_type in definition["resource"]


# -- with authentication on ---------------------------------------------------------------------------


def test_terminology_needs_the_search_scope_of_its_type(secured_client: tuple[TestClient, Any]) -> None:
    from tests.support.access import staff_headers

    client, settings = secured_client
    writer = staff_headers(settings, "IMSS")
    assert client.put("/fhir/CodeSystem/cie-10", json=CIE10_FRAGMENT, headers=writer | FHIR).status_code == 201
    # R4 terminology resources hold no patient data: any institution's staff with the scope reads them.
    reader = staff_headers(settings, "ISSSTE", scope="user/CodeSystem.s user/ValueSet.s")
    looked_up = client.get("/fhir/CodeSystem/$lookup", params={"system": CIE10, "code": "I10"}, headers=reader)
    assert _out(_ok(looked_up))["display"] == "Hipertensión esencial (primaria)"
    assert (
        _ok(client.get("/fhir/ValueSet/$expand", params={"url": GENDER_VS}, headers=reader))["expansion"]["total"] == 4
    )
    refused = client.get("/fhir/ConceptMap/$translate", params={"system": CIE10, "code": "I10"}, headers=reader)
    assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/ValueSet/$expand", params={"url": GENDER_VS}).status_code == 401
