"""Parsing a search (R4 §3.1.1): modifiers, chains, reverse chains, result parameters, errors."""

from __future__ import annotations

import pytest

from ehr_core.errors import InvalidResource
from projections.search.query import ChainFilter, HasFilter, MissingFilter, ValueFilter, parse_search
from projections.search.values import ReferenceValue, TokenValue


def test_and_or_and_modifiers() -> None:
    request = parse_search(
        "Observation",
        [("code", "http://loinc.org|8480-6,8462-4"), ("status:not", "final"), ("value-quantity:missing", "true")],
    )
    code, status, missing = request.filters
    assert isinstance(code, ValueFilter) and code.values == (
        TokenValue("http://loinc.org", "8480-6"),
        TokenValue(None, "8462-4"),
    )
    assert isinstance(status, ValueFilter) and status.modifier == "not"
    assert isinstance(missing, MissingFilter) and missing.missing


def test_chains_and_type_modifiers() -> None:
    request = parse_search(
        "Observation",
        [("subject:Patient.name", "gómez"), ("patient.organization.name", "imss"), ("subject:Patient", "1")],
    )
    typed, deep, plain = request.filters
    assert isinstance(typed, ChainFilter) and typed.target_types == ("Patient",)
    assert isinstance(deep, ChainFilter) and isinstance(deep.inner[0][1], ChainFilter)
    assert isinstance(plain, ValueFilter) and plain.values == (ReferenceValue("Patient", "1", None),)
    untyped = parse_search("Observation", [("subject.name", "x")]).filters[0]
    assert isinstance(untyped, ChainFilter) and set(untyped.target_types) >= {"Patient", "Location"}


def test_reverse_chains() -> None:
    (has,) = parse_search("Patient", [("_has:Observation:patient:code", "8480-6")]).filters
    assert isinstance(has, HasFilter) and has.source_type == "Observation" and has.target_type == "Patient"
    (nested,) = parse_search("Patient", [("_has:Observation:patient:_has:Provenance:target:agent", "x")]).filters
    assert isinstance(nested, HasFilter) and isinstance(nested.inner, HasFilter)


def test_result_parameters() -> None:
    request = parse_search(
        "Observation",
        [
            ("_sort", "-date,code"),
            ("_count", "5"),
            ("_include", "Observation:patient"),
            ("_include:iterate", "Patient:organization"),
            ("_revinclude", "Provenance:target"),
            ("_summary", "true"),
            ("_elements", "status,code"),
            ("_total", "accurate"),
            ("_format", "json"),
        ],
    )
    assert [(k.param.code, k.descending) for k in request.sort] == [("date", True), ("code", False)]
    assert request.count == 5 and request.summary == "true" and request.elements == ["status", "code"]
    assert [(i.source_type, i.param, i.iterate) for i in request.includes] == [
        ("Observation", "patient", False),
        ("Patient", "organization", True),
    ]
    assert request.revincludes[0].source_type == "Provenance" and request.total == "accurate"


def test_unknown_parameters_are_collected() -> None:
    request = parse_search("Patient", [("nickname", "x"), ("organization.nickname", "y"), ("name", "a")])
    assert request.unknown == ["nickname", "organization.nickname"] and len(request.filters) == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("birthdate", "xx2020"),
        ("birthdate", "2020-13"),
        ("name:nope", "x"),
        ("gender:exact", "x"),
        ("birthdate:missing", "maybe"),
        ("identifier:of-type", "MR|1"),
        ("gender:of-type", "a|b|c"),
        ("general-practitioner:Observation", "1"),
        ("_count", "-1"),
        ("_sort", "nickname"),
        ("_summary", "maybe"),
        ("_total", "all"),
        ("_include", "Observation:patient"),
        ("_has:Observation:nope:code", "1"),
        ("_has:Observation:patient:nope", "1"),
        ("name.family", "x"),
    ],
)
def test_malformed_parameters_name_themselves(name: str, value: str) -> None:
    with pytest.raises(InvalidResource) as raised:
        parse_search("Patient", [(name, value)])
    assert raised.value.issues[0].expression == name


def test_terminology_modifiers_of_a_token() -> None:
    """R4 search.html#token: ``:in``/``:not-in`` take a value set, ``:above``/``:below`` a ``system|code``."""
    request = parse_search(
        "Condition",
        [
            ("code:in", "http://example.org/vs,ValueSet/diabetes"),
            ("code:not-in", "ValueSet/x"),
            ("code:below", "http://hl7.org/fhir/sid/icd-10|E11"),
            ("code:above", r"urn:a|E11\,9"),
        ],
    )
    within, outside, below, above = request.filters
    assert isinstance(within, ValueFilter) and within.values == ("http://example.org/vs", "ValueSet/diabetes")
    assert isinstance(outside, ValueFilter) and outside.modifier == "not-in"
    assert isinstance(below, ValueFilter) and below.values == (TokenValue("http://hl7.org/fhir/sid/icd-10", "E11"),)
    assert isinstance(above, ValueFilter) and above.values == (TokenValue("urn:a", "E11,9"),)


@pytest.mark.parametrize(
    ("name", "value"),
    [("code:below", "E11"), ("code:above", "|E11"), ("code:below", "urn:a|"), ("_id:in", "ValueSet/x")],
)
def test_terminology_modifiers_refuse_what_they_cannot_answer(name: str, value: str) -> None:
    with pytest.raises(InvalidResource) as raised:
        parse_search("Condition", [(name, value)])
    assert raised.value.issues[0].expression == name
