"""Index rows per data type (R4 §3.1.1.5): what each kind of value becomes in the index."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from projections.search.dates import MAX, date_range
from projections.search.extract import Rows, extract
from projections.search.paths import walk
from projections.search.registry import SearchParameter, parameters, searchable_types
from projections.search.types import SEARCH_TYPES
from tests.conftest import CORPUS

V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def test_patient_tokens_strings_dates_references() -> None:
    rows = extract(
        {
            "resourceType": "Patient",
            "identifier": [
                {"system": "urn:oid:2.16.840.1.113883.4.629", "value": "SABC560626MDFLRN01"},
                {"type": {"coding": [{"system": V2, "code": "MR"}], "text": "Expediente"}, "value": "42"},
            ],
            "active": True,
            "name": [{"family": "Gómez", "given": ["María", "José"], "prefix": ["Dra."]}],
            "telecom": [{"system": "phone", "value": "555"}, {"system": "email", "value": "a@b.mx"}],
            "gender": "female",
            "birthDate": "1956-06-26",
            "address": [{"city": "Ciudad de México", "line": ["Av. Insurgentes 1"]}],
            "managingOrganization": {
                "reference": "Organization/imss",
                "identifier": {"system": "clues", "value": "DF1"},
            },
        }
    )
    tokens = set(rows.token)
    assert ("identifier", "urn:oid:2.16.840.1.113883.4.629", "SABC560626MDFLRN01") in tokens
    assert ("identifier", None, "42") in tokens and ("identifier:of-type", V2, "MR|42") in tokens
    assert {("active", None, "true"), ("gender", None, "female"), ("deceased", None, "false")} <= tokens
    assert {("phone", None, "555"), ("email", None, "a@b.mx"), ("telecom", None, "555")} <= tokens
    assert ("organization:identifier", "clues", "DF1") in tokens
    strings = {(code, value) for code, value, _ in rows.string}
    assert {("name", "gomez"), ("name", "maria"), ("name", "jose"), ("name", "dra."), ("family", "gomez")} <= strings
    assert {("given", "maria"), ("address-city", "ciudad de mexico"), ("address", "av. insurgentes 1")} <= strings
    assert ("identifier:text", "expediente") in strings
    assert ("family", "gomez", "Gómez") in rows.string
    assert ("birthdate", *date_range("1956-06-26")) in rows.date
    assert ("organization", "Organization", "imss", None) in rows.reference


def test_observation_codes_quantities_periods_and_typed_references() -> None:
    rows = extract(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}], "text": "TA"},
            "subject": {"reference": "http://other.org/fhir/Patient/p1"},
            "effectivePeriod": {"start": "2024-04-09T10:00:00Z"},
            "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
            "component": [{"code": {"text": "x"}, "valueQuantity": {"value": 1.5, "unit": "g"}}],
        }
    )
    assert ("code", "http://loinc.org", "8480-6") in rows.token
    assert ("combo-code", "http://loinc.org", "8480-6") in rows.token
    assert {("code:text", "systolic"), ("code:text", "ta")} <= {(c, v) for c, v, _ in rows.string}
    assert ("status", None, "final") in rows.token
    # A UCUM quantity also in its canonical unit (UCUM: 1 mm[Hg] = 133.322 g.m-1.s-2); others have none.
    canonical = ("g.m-1.s-2", 120 * 133322.0, 120 * 133322.0)
    assert ("value-quantity", "http://unitsofmeasure.org", "mm[Hg]", "mmHg", 120.0, 120.0, *canonical) in rows.quantity
    assert ("component-value-quantity", None, None, "g", 1.5, 1.5, None, None, None) in rows.quantity
    assert ("date", date_range("2024-04-09T10:00:00Z")[0], MAX) in rows.date
    assert ("subject", "Patient", "p1", "http://other.org/fhir") in rows.reference
    assert ("patient", "Patient", "p1", "http://other.org/fhir") in rows.reference


def test_ranges_timings_and_numbers() -> None:
    condition = extract(
        {
            "resourceType": "Condition",
            "subject": {"reference": "Group/g"},
            "onsetRange": {"low": {"value": 10, "unit": "a"}},
            "abatementPeriod": {"end": "2020"},
        }
    )
    assert ("onset-age", None, None, "a", 10.0, math.inf, None, None, None) in condition.quantity
    assert next(row for row in condition.date if row[0] == "abatement-date")[2] == date_range("2020")[1]
    assert not [row for row in condition.reference if row[0] == "patient"]  # a Group is not a Patient
    risk = extract({"resourceType": "RiskAssessment", "prediction": [{"probabilityDecimal": 0.02}]})
    assert risk.number == [("probability", 0.02, 0.02)]
    request = extract(
        {"resourceType": "MedicationRequest", "dosageInstruction": [{"timing": {"event": ["2020-01-01", "2020-02"]}}]}
    )  # the expression reaches the events themselves: one range each
    assert {row[1:] for row in request.date if row[0] == "date"} == {date_range("2020-01-01"), date_range("2020-02")}
    timed = extract({"resourceType": "Observation", "effectiveTiming": {"event": ["2020-02", "2020-01-01"]}})
    # A Timing counts by its outer limits only (R4 §3.1.1.5.6).
    assert [row[1:] for row in timed.date if row[0] == "date"] == [
        (date_range("2020-01-01")[0], date_range("2020-02")[1])
    ]


def test_unparseable_values_are_skipped_not_fatal() -> None:
    rows = extract({"resourceType": "Patient", "birthDate": "not-a-date", "deceasedDateTime": "2020"})
    assert not [row for row in rows.date if row[0] == "birthdate"]
    assert ("deceased", None, "true") in rows.token


def _reference(resource: dict[str, Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every parameter's routes walked one by one over the whole resource (what extraction computes; it reads
    only the parameters whose element the resource has, and shares component rows between composites)."""
    rows = Rows()
    for param in parameters(resource["resourceType"]).values():
        if param.code in ("_id", "_lastUpdated") or param.special:
            continue
        if param.type == "composite":
            _composite(rows, param, resource)
            continue
        for route in param.routes:
            for value in walk(resource, route):
                SEARCH_TYPES[param.type].extract(rows, param.code, route.datatype, value)
    return {name: sorted(set(getattr(rows, name)), key=repr) for name in vars(rows)}


def _composite(rows: Rows, param: SearchParameter, resource: dict[str, Any]) -> None:
    columns = SEARCH_TYPES["composite"].table.columns[4:]  # after component, rep and the key's token
    key = next((n for n, component in enumerate(param.components) if component.type == "token"), None)
    ordinal = 0
    for repetition in param.repetitions:
        for element in walk(resource, repetition):
            found = []
            for component in param.components:
                kind, values = SEARCH_TYPES[component.type], Rows()
                for route in component.routes:
                    for value in walk(resource if component.from_resource else element, route):
                        kind.extract(values, component.code, route.datatype, value)
                typed = [
                    dict(zip(kind.table.columns, kind.table.bound(row)[1:], strict=True))
                    for row in getattr(values, component.type)
                    if row[0] == component.code
                ]
                found.append([tuple(row.get(column) for column in columns) for row in typed])
            if all(found):
                # The key (first token component) has no rows: each of the others' rows carries its token.
                tokens = [(None, None)] if key is None else [row[:2] for row in found[key]]
                for number, component_rows in enumerate(found):
                    if number != key:
                        rows.composite += [
                            (param.code, number, ordinal, *token, *row) for token in tokens for row in component_rows
                        ]
            ordinal += 1


def _corpus() -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    for path in sorted((CORPUS / "hl7-examples" / "r4-examples").glob("*.json")):
        found = json.loads(path.read_text())
        entries = found.get("entry") or [] if found.get("resourceType") == "Bundle" else []
        resources += [found, *(entry["resource"] for entry in entries if isinstance(entry.get("resource"), dict))]
    synthea = sorted((CORPUS / "synthea" / "smart-r4-2019").glob("*.json"))[0]
    resources += [entry["resource"] for entry in json.loads(synthea.read_text())["entry"]]
    known = set(searchable_types())
    return [resource for resource in resources if resource.get("resourceType") in known]


@pytest.mark.slow
def test_extraction_gives_the_rows_of_every_parameter_read_on_its_own() -> None:
    resources = _corpus()
    assert len(resources) > 1000
    composites = 0
    for resource in resources:
        expected = _reference(resource)
        rows = extract(resource)
        composites += len(rows.composite)
        for name, wanted in expected.items():
            found = [row for row in getattr(rows, name) if not (name == "token" and row[0] == "deceased")]
            assert sorted(found, key=repr) == wanted, (resource["resourceType"], resource.get("id"), name)
    assert composites > 500  # the key has no rows of its own: a code$value pair is one row (types/composite.py)
