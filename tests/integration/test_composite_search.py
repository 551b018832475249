"""Composite search parameters on every backend (R4 search.html#composite): ``a$b`` holds within one
repetition — the Observation itself for ``code-value-quantity``, one ``Observation.component`` for
``component-code-value-quantity`` — and every composite of the registry parses and runs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_api.services import Services
from projections.rebuild import rebuild
from projections.search.index import SearchIndex
from projections.search.registry import SearchParameter, parameters, searchable_types
from projections.search.reindex import reindex, stale

FHIR = {"content-type": "application/fhir+json"}
LOINC = "http://loinc.org"


def _put(client: TestClient, resource: dict[str, Any]) -> int:
    response = client.put(
        f"/fhir/{resource['resourceType']}/{resource['id']}", content=json.dumps(resource), headers=FHIR
    )
    return response.status_code


def _ids(client: TestClient, url: str) -> list[str]:
    response = client.get(url)
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match")


def _coding(code: str, system: str = LOINC) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def _weight(resource_id: str, value: float, code: str = "29463-7") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": resource_id,
        "status": "final",
        "code": _coding(code),
        "valueQuantity": {"value": value, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    }


def _pressure(resource_id: str, systolic: float, diastolic: float) -> dict[str, Any]:
    def component(code: str, value: float) -> dict[str, Any]:
        return {"code": _coding(code), "valueQuantity": {"value": value, "unit": "mmHg"}}

    return {
        "resourceType": "Observation",
        "id": resource_id,
        "status": "final",
        "code": _coding("85354-9"),
        "component": [component("8480-6", systolic), component("8462-4", diastolic)],
    }


def test_code_value_quantity_holds_on_the_observation_itself(client: TestClient) -> None:
    for resource in (_weight("w70", 70), _weight("w50", 50), _weight("h70", 70, code="8302-2")):
        assert _put(client, resource) in (200, 201)
    assert _ids(client, f"/fhir/Observation?code-value-quantity={LOINC}|29463-7$gt60") == ["w70"]
    assert _ids(client, f"/fhir/Observation?code-value-quantity={LOINC}|29463-7$lt60") == ["w50"]
    assert _ids(client, "/fhir/Observation?code-value-quantity=29463-7$70|http://unitsofmeasure.org|kg") == ["w70"]
    # A comma ORs whole pairs (R4 §3.1.1.4); repeating the parameter ANDs them.
    both = f"{LOINC}|29463-7$gt60,{LOINC}|8302-2$gt60"
    assert _ids(client, f"/fhir/Observation?code-value-quantity={both}") == ["h70", "w70"]
    assert _ids(client, "/fhir/Observation?code-value-quantity=29463-7$gt60&code-value-quantity=29463-7$lt80") == [
        "w70"
    ]
    # combo-code-value-quantity looks at the Observation and at each component.
    assert _ids(client, f"/fhir/Observation?combo-code-value-quantity={LOINC}|29463-7$gt60") == ["w70"]


def test_component_code_value_quantity_needs_code_and_value_in_the_same_component(client: TestClient) -> None:
    assert _put(client, _pressure("high", 150, 90)) in (200, 201)
    assert _put(client, _pressure("crossed", 90, 120)) in (200, 201)
    systolic_over_100 = f"/fhir/Observation?component-code-value-quantity={LOINC}|8480-6$gt100"
    # "crossed" has a systolic component (90) and a component over 100 (diastolic 120): not a match.
    assert _ids(client, systolic_over_100) == ["high"]
    assert _ids(client, f"/fhir/Observation?component-code-value-quantity={LOINC}|8462-4$gt100") == ["crossed"]
    assert _ids(client, f"/fhir/Observation?combo-code-value-quantity={LOINC}|8480-6$gt100") == ["high"]
    # code-value-quantity is the Observation's own code and value: components are not it.
    assert _ids(client, f"/fhir/Observation?code-value-quantity={LOINC}|8480-6$gt100") == []
    # An update replaces the repetitions: the old ones never match again.
    assert _put(client, _pressure("high", 95, 60)) == 200
    assert _ids(client, systolic_over_100) == []


def test_code_value_concept_and_missing(client: TestClient) -> None:
    snomed = "http://snomed.info/sct"
    for resource_id, code, value in (("pos", "94500-6", "10828004"), ("neg", "94500-6", "260385009")):
        resource = {
            "resourceType": "Observation",
            "id": resource_id,
            "status": "final",
            "code": _coding(code),
            "valueCodeableConcept": _coding(value, snomed),
        }
        assert _put(client, resource) in (200, 201)
    assert _put(client, _weight("w1", 80)) in (200, 201)
    assert _ids(client, f"/fhir/Observation?code-value-concept={LOINC}|94500-6${snomed}|10828004") == ["pos"]
    assert _ids(client, "/fhir/Observation?code-value-concept=94500-6$260385009") == ["neg"]
    assert _ids(client, "/fhir/Observation?code-value-concept=29463-7$260385009") == []
    assert _ids(client, "/fhir/Observation?code-value-concept:missing=true") == ["w1"]
    assert _ids(client, "/fhir/Observation?code-value-concept:missing=false") == ["neg", "pos"]


@pytest.mark.parametrize(
    "query",
    [
        "code-value-quantity=29463-7",  # one part of two
        "code-value-quantity=29463-7$gt60$1",  # three parts
        "code-value-quantity=29463-7$xx60",  # not a quantity
        "code-value-quantity:exact=29463-7$60",  # no modifier but :missing
    ],
)
def test_malformed_composite_values_are_400(client: TestClient, query: str) -> None:
    response = client.get(f"/fhir/Observation?{query}")
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def test_the_capability_statement_lists_composites(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    observation = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Observation")
    kinds = {p["name"]: p["type"] for p in observation["searchParam"]}
    assert kinds["code-value-quantity"] == "composite"
    assert kinds["component-code-value-quantity"] == "composite"


# -- every composite of the registry ----------------------------------------------------------------

#: A searched value and an indexed value per component type: the value matches the element.
_SAMPLES: dict[str, tuple[str, Any]] = {
    "token": ("http://example.org/cs|c1", {"coding": [{"system": "http://example.org/cs", "code": "c1"}]}),
    "quantity": ("gt5", {"value": 7}),
    "number": ("gt5", 7),
    "date": ("ge2020-01-01", "2021-05-05"),
    "string": ("abc", "abcdef"),
    "reference": ("Patient/x", {"reference": "Patient/x"}),
    "uri": ("http://example.org/u", "http://example.org/u"),
}


def _composites() -> list[SearchParameter]:
    return [
        param
        for resource_type in searchable_types()
        for param in parameters(resource_type).values()
        if param.type == "composite"
    ]


def test_the_registry_has_the_spec_composites() -> None:
    codes = {(p.resource_type, p.code) for p in _composites()}
    assert {("Observation", "code-value-quantity"), ("Observation", "component-code-value-quantity")} <= codes
    assert len(codes) > 40


@pytest.mark.parametrize("param", _composites(), ids=lambda p: f"{p.resource_type}-{p.code}")
def test_every_composite_parses_and_runs(client: TestClient, param: SearchParameter) -> None:
    value = "$".join(_SAMPLES[component.type][0] for component in param.components)
    assert _ids(client, f"/fhir/{param.resource_type}?{param.code}={value}") == []


_URL = {"url": "http://example.org/x"}
_DATE = {"date": "2020-01-01"}
_CODED = {"coding": [{"system": "http://example.org/cs", "code": "x"}]}
#: What each type with ``useContext`` composites requires besides ``status`` (R4B cardinalities).
_REQUIRED: dict[str, dict[str, Any]] = {
    "CapabilityStatement": {
        **_DATE,
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "kind": "instance",
        "implementation": {"description": "x"},
        "rest": [{"mode": "server"}],
    },
    "ChargeItemDefinition": _URL,
    "CodeSystem": {"content": "complete"},
    "CompartmentDefinition": {**_URL, "code": "Patient", "name": "x", "search": True},
    "EventDefinition": {"trigger": [{"type": "named-event", "name": "x"}]},
    "Evidence": {"variableDefinition": [{"variableRole": _CODED}]},
    "GraphDefinition": {"name": "x", "start": "Patient"},
    "ImplementationGuide": {**_URL, "fhirVersion": ["4.0.1"], "name": "x", "packageId": "example.x"},
    "Library": {"type": _CODED},
    "MessageDefinition": {**_DATE, "eventCoding": {"system": "http://example.org/cs", "code": "x"}},
    "NamingSystem": {**_DATE, "kind": "codesystem", "name": "x", "uniqueId": [{"type": "uri", "value": "urn:x"}]},
    "OperationDefinition": {
        "code": "x",
        "instance": False,
        "kind": "operation",
        "name": "x",
        "system": False,
        "type": False,
    },
    "ResearchDefinition": {"population": {"reference": "ResearchElementDefinition/x"}},
    "ResearchElementDefinition": {"type": "population", "characteristic": [{"definitionCodeableConcept": _CODED}]},
    "SearchParameter": {**_URL, "base": ["Patient"], "code": "x", "description": "x", "name": "x", "type": "token"},
    "StructureDefinition": {
        **_URL,
        "abstract": True,
        "kind": "resource",
        "name": "x",
        "type": "Patient",
        "differential": {"element": [{"id": "Patient", "path": "Patient"}]},
    },
    "StructureMap": {
        **_URL,
        "name": "x",
        "group": [
            {
                "name": "g",
                "typeMode": "none",
                "input": [{"name": "i", "mode": "source"}],
                "rule": [{"name": "r", "source": [{"context": "i"}]}],
            }
        ],
    },
    "TerminologyCapabilities": {**_DATE, "kind": "instance", "implementation": {"description": "x"}},
    "TestScript": {**_URL, "name": "x"},
}


def _use_context(resource_type: str, resource_id: str, code: str, value: dict[str, Any]) -> dict[str, Any]:
    context = {"code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": code}, **value}
    extra = _REQUIRED.get(resource_type, {})
    return {"resourceType": resource_type, "id": resource_id, "status": "active", **extra, "useContext": [context]}


@pytest.mark.parametrize(
    "param",
    [p for p in _composites() if p.code == "context-type-quantity"],
    ids=lambda p: f"{p.resource_type}-{p.code}",
)
def test_context_type_quantity_matches_within_one_use_context(client: TestClient, param: SearchParameter) -> None:
    """``useContext`` composites: code and value of the same UsageContext, on each type that has them."""
    resource_type = param.resource_type
    age = _use_context(resource_type, "age", "age", {"valueQuantity": {"value": 30}})
    other = _use_context(resource_type, "other", "program", {"valueRange": {"low": {"value": 20}}})
    for resource in (age, other):
        response = client.put(f"/fhir/{resource_type}/{resource['id']}", content=json.dumps(resource), headers=FHIR)
        assert response.status_code in (200, 201), response.text
    context = "http://terminology.hl7.org/CodeSystem/usage-context-type"
    assert _ids(client, f"/fhir/{resource_type}?context-type-quantity={context}|age$gt25") == ["age"]
    assert _ids(client, f"/fhir/{resource_type}?context-type-quantity=age$lt25") == []
    # A Range indexes as low..infinity: "program" over 25 matches, "age" (the wrong code) never does.
    assert _ids(client, f"/fhir/{resource_type}?context-type-quantity=program$gt25") == ["other"]


def test_group_characteristic_value_and_document_relationship(client: TestClient) -> None:
    group = {
        "resourceType": "Group",
        "id": "g1",
        "type": "person",
        "actual": False,
        "characteristic": [
            {
                "code": {"text": "x", "coding": [{"code": "sex"}]},
                "valueCodeableConcept": _coding("F", "s"),
                "exclude": False,
            },
            {"code": {"coding": [{"code": "smoker"}]}, "valueBoolean": True, "exclude": False},
        ],
    }
    assert _put(client, group) in (200, 201)
    assert _ids(client, "/fhir/Group?characteristic-value=sex$s|F") == ["g1"]
    assert _ids(client, "/fhir/Group?characteristic-value=smoker$true") == ["g1"]
    assert _ids(client, "/fhir/Group?characteristic-value=smoker$s|F") == []
    document = {
        "resourceType": "DocumentReference",
        "id": "d2",
        "status": "current",
        "content": [{"attachment": {"contentType": "text/plain"}}],
        "relatesTo": [
            {"code": "replaces", "target": {"reference": "DocumentReference/d1"}},
            {"code": "appends", "target": {"reference": "DocumentReference/d0"}},
        ],
    }
    assert _put(client, document) in (200, 201)
    assert _ids(client, "/fhir/DocumentReference?relationship=DocumentReference/d1$replaces") == ["d2"]
    assert _ids(client, "/fhir/DocumentReference?relationship=DocumentReference/d1$appends") == []


def test_rebuild_indexes_composites_of_resources_stored_before(services: Services, client: TestClient) -> None:
    """An index made before composites were supported holds none of their rows; ``ehr rebuild`` fills them
    from the log for every stored resource."""
    assert _put(client, _weight("w70", 70)) in (200, 201)
    assert _put(client, _pressure("high", 150, 90)) in (200, 201)
    with services.views.write() as tx:
        tx.execute("DELETE FROM search_composite")
    url = f"/fhir/Observation?component-code-value-quantity={LOINC}|8480-6$gt100"
    assert _ids(client, url) == []
    rebuild(services.settings, [services.projector])
    assert _ids(client, url) == ["high"]
    assert _ids(client, f"/fhir/Observation?code-value-quantity={LOINC}|29463-7$gt60") == ["w70"]


# -- the key: a composite's token on the rows of its other components (types/composite.py) -----------


def test_each_coding_of_the_key_pairs_with_the_values_of_its_own_component(client: TestClient) -> None:
    """A key with two codings (LOINC and a local code) is found by either, with the value of its own
    component only: the diastolic value never pairs with the systolic codes."""
    local = "http://example.org/local"
    pressure = _pressure("bp", 150, 90)
    pressure["component"][0]["code"]["coding"].append({"system": local, "code": "SYS"})
    assert _put(client, pressure) in (200, 201)
    url = "/fhir/Observation?component-code-value-quantity="
    assert _ids(client, f"{url}{local}|SYS$gt140") == ["bp"]
    assert _ids(client, f"{url}SYS$gt140") == ["bp"]
    assert _ids(client, f"{url}{LOINC}|8480-6$gt140") == ["bp"]
    assert _ids(client, f"{url}{local}|SYS$lt100") == []  # 90 is the diastolic component's
    assert _ids(client, f"{url}{LOINC}|SYS$gt140") == []  # the local code under another system
    assert _ids(client, f"{url}|SYS$gt140") == []  # ``|code``: a code without a system
    assert _ids(client, f"{url}{local}|$gt140") == ["bp"]  # ``system|``: any code of the system
    assert _ids(client, f"{url}{LOINC}|8462-4$lt100") == ["bp"]
    assert _ids(client, f"{url}{LOINC}|8462-4$gt140") == []


def _sequence(resource_id: str, chromosome: str, variants: list[tuple[int, int]]) -> dict[str, Any]:
    chromosomes = "http://terminology.hl7.org/CodeSystem/chromosome-human"
    return {
        "resourceType": "MolecularSequence",
        "id": resource_id,
        "coordinateSystem": 0,
        "referenceSeq": {
            "chromosome": {"coding": [{"system": chromosomes, "code": chromosome}]},
            "genomeBuild": "GRCh38",  # msq-5, msq-6: a chromosome goes with its genome build
            "windowStart": 100,
            "windowEnd": 200,
        },
        "variant": [{"start": start, "end": end} for start, end in variants],
    }


def test_three_components_hold_in_one_repetition_with_the_key_from_the_resource(client: TestClient) -> None:
    """``chromosome$variant-start$variant-end``: the chromosome is the resource's (``%resource``), start
    and end must be one variant's."""
    assert _put(client, _sequence("s1", "1", [(10, 20), (30, 40)])) in (200, 201)
    assert _put(client, _sequence("s2", "2", [(30, 34)])) in (200, 201)
    url = "/fhir/MolecularSequence?chromosome-variant-coordinate="
    assert _ids(client, f"{url}1$gt25$lt45") == ["s1"]
    # Start 30 (second variant) and end 20 (first): no one variant has both.
    assert _ids(client, f"{url}1$gt25$lt35") == []
    assert _ids(client, f"{url}2$gt25$lt35") == ["s2"]
    assert _ids(client, f"{url}1$lt15$lt25") == ["s1"]
    assert _ids(client, f"{url}3$lt15$lt25") == []
    assert _ids(client, "/fhir/MolecularSequence?chromosome-window-coordinate=2$ge100$le200") == ["s2"]
    assert _ids(client, "/fhir/MolecularSequence?chromosome-window-coordinate=2$gt100$le200") == []


def test_an_update_replaces_the_keyed_rows(client: TestClient) -> None:
    assert _put(client, _weight("w", 70)) in (200, 201)
    assert _put(client, _weight("w", 70, code="8302-2")) == 200
    assert _ids(client, f"/fhir/Observation?code-value-quantity={LOINC}|29463-7$gt60") == []
    assert _ids(client, f"/fhir/Observation?code-value-quantity={LOINC}|8302-2$gt60") == ["w"]
    assert _ids(client, "/fhir/Observation?code-value-quantity:missing=false") == ["w"]


def test_an_index_of_the_unkeyed_layout_is_built_again(services: Services, client: TestClient) -> None:
    """A store indexed before composites had keys (a row per component value): its composite table is
    created anew when the index opens, and the extraction version makes the server index it again."""
    assert _put(client, _weight("w70", 70)) in (200, 201)
    with services.views.write() as tx:
        tx.execute("DROP TABLE search_composite")
        tx.execute(
            "CREATE TABLE search_composite (resource_type TEXT NOT NULL, param TEXT NOT NULL, component INTEGER "
            "NOT NULL, rep INTEGER NOT NULL, system TEXT, code TEXT, unit TEXT, value TEXT, exact TEXT, "
            "target_type TEXT, target_id TEXT, base TEXT, low REAL, high REAL, canonical TEXT, canonical_low REAL, "
            "canonical_high REAL, sid BIGINT NOT NULL)"
        )
        tx.execute("CREATE INDEX search_composite_lookup0 ON search_composite (resource_type, param, component, code)")
        tx.execute(
            "INSERT INTO search_composite (resource_type, param, component, rep, system, code, sid) "
            "VALUES ('Observation', 'code-value-quantity', 0, 0, 'http://loinc.org', '29463-7', 1)"
        )
        tx.execute("UPDATE search_registry SET fingerprint = 'before-keys'")
    with services.views.write() as tx:
        SearchIndex().create(tx, services.views.dialect)
        assert tx.execute("SELECT COUNT(*) FROM search_composite").fetchone()[0] == 0
        assert tx.execute("SELECT COUNT(*) FROM search_composite WHERE token_code IS NULL").fetchone()[0] == 0
    assert stale(services.views)
    reindex(services.views)
    assert _ids(client, f"/fhir/Observation?code-value-quantity={LOINC}|29463-7$gt60") == ["w70"]
