"""The generated invariants table covers every error-level constraint of R4, and nothing is left out silently.

Every ``constraint`` of severity ``error`` in profiles-resources.json and profiles-types.json is either in
:data:`ehr_core.spec.invariants.INVARIANTS` (evaluated) or in ``SKIPPED`` with a reason; each evaluated
expression parses with fhirpathpy; the guards that spare evaluations rest on the spec's own expressions.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from fhirpathpy.parser import parse

from ehr_core.errors import InvalidResource
from ehr_core.resources.invariants import (
    ADDED_FUNCTIONS,
    GUARDS,
    _places,
    _universal_places,
    _written,
    invariant_issues,
)
from ehr_core.resources.json import dumps
from ehr_core.resources.validation import validate
from ehr_core.spec.invariants import INVARIANTS, SKIPPED
from ehr_core.spec.invariants_generator import skip_reason
from tests.conftest import CORPUS, IN_CI

DEFINITIONS = CORPUS / "spec" / "r4"


def _spec_constraints() -> set[str]:
    """The keys of every error-level constraint of the core resources and data types."""
    keys: set[str] = set()
    for name in ("profiles-resources.json", "profiles-types.json"):
        bundle = json.loads((DEFINITIONS / name).read_bytes())
        for entry in bundle["entry"]:
            definition = entry["resource"]
            if definition.get("resourceType") != "StructureDefinition" or definition.get("kind") == "logical":
                continue
            if definition.get("derivation") == "constraint":
                continue
            for element in definition["snapshot"]["element"]:
                keys |= {c["key"] for c in element.get("constraint", []) if c.get("severity") == "error"}
    return keys


def test_every_error_constraint_is_evaluated_or_skipped_with_a_reason() -> None:
    if not DEFINITIONS.is_dir():
        if IN_CI:
            pytest.fail(f"FHIR R4 definitions not found at {DEFINITIONS}")
        pytest.skip(f"FHIR R4 definitions not found at {DEFINITIONS} (set EHR_CORPUS)")
    evaluated = {key for _path, key, _human, _expression in INVARIANTS}
    skipped = {key for _path, key, _reason in SKIPPED}
    assert _spec_constraints() - evaluated - skipped == set()
    assert len(INVARIANTS) >= 200, len(INVARIANTS)


def test_no_invariant_is_skipped_without_a_reason() -> None:
    assert SKIPPED, "the narrative checks (htmlChecks) cannot be evaluated: SKIPPED cannot be empty"
    for path, key, reason in SKIPPED:
        assert path and key and len(reason.strip()) > 20, (path, key, reason)
    evaluated = {(path, key) for path, key, _human, _expression in INVARIANTS}
    assert not evaluated & {(path, key) for path, key, _reason in SKIPPED}


def test_skip_reasons_name_the_missing_function() -> None:
    functions = {"exists", "empty", "where"}
    assert skip_reason("txt-1", "htmlChecks()", functions) == "uses htmlChecks(), which fhirpathpy does not implement"
    assert "conformsTo()" in (skip_reason("x-1", "a.exists() and conformsTo('x')", functions) or "")
    assert skip_reason("x-2", "a.exists() or b.where(c.empty()).exists()", functions) is None


def test_every_evaluated_expression_parses() -> None:
    for path, key, _human, expression in INVARIANTS:
        assert parse(expression)["children"], (path, key)
        assert "hasValue" not in expression or "hasValue" in ADDED_FUNCTIONS


@pytest.mark.parametrize("key", sorted(GUARDS))
def test_each_guard_rests_on_the_spec_expression(key: str) -> None:
    prefix, _guard = GUARDS[key]
    expressions = [expression for _path, k, _human, expression in INVARIANTS if k == key]
    assert expressions and all(expression.startswith(prefix) for expression in expressions), expressions


def test_has_value() -> None:
    has_value = ADDED_FUNCTIONS["hasValue"]
    assert has_value(["2020"]) == [True] and has_value([]) == [False] and has_value([{"extension": []}]) == [False]


def _keys(resource: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [
        (i.diagnostics.split(":")[1].strip(), i.expression)
        for i in invariant_issues(resource, resource["resourceType"])
    ]


def test_rules_on_data_types_nested_and_contained() -> None:
    period = {"start": "2020-02-01", "end": "2020-01-01"}
    patient = {"resourceType": "Patient", "contact": [{"name": {"family": "x"}, "period": period}]}
    assert _keys(patient) == [("per-1", "Patient.contact[0].period")]
    assert _keys({**patient, "contact": [{"name": {"family": "x"}, "period": {"start": "2020-01-01"}}]}) == []
    # A contained resource breaks its own type's rules; ref-1 needs the local reference to resolve.
    contained = {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Organization", "id": "o"}],
        "managingOrganization": {"reference": "#o"},
        "generalPractitioner": [{"reference": "#missing"}],
    }
    assert sorted(_keys(contained)) == [
        ("org-1", "Patient.contained[0]"),
        ("ref-1", "Patient.generalPractitioner[0]"),
    ]
    with pytest.raises(InvalidResource) as refused:
        validate(contained)
    assert {i.code for i in refused.value.issues} == {"invariant"}
    assert "If present, start SHALL have a lower value than end" in invariant_issues(patient, "Patient")[0].diagnostics


def test_ele_1_sees_a_primitive_value_beside_its_id() -> None:
    """R4 json.html#primitive: ``_given[i]`` carries the id and extensions of ``given[i]``; an id-only companion
    of a valued primitive has a @value (ele-1 holds), one of a null primitive has nothing (ele-1 breaks)."""
    valued = {"resourceType": "Patient", "name": [{"given": ["Ana", "Luisa"], "_given": [None, {"id": "g2"}]}]}
    assert _keys(valued) == []
    assert _keys({"resourceType": "Patient", "birthDate": "1980-02-03", "_birthDate": {"id": "b"}}) == []
    empty = {"resourceType": "Patient", "name": [{"given": ["Ana", None], "_given": [None, {"id": "g2"}]}]}
    assert _keys(empty) == [("ele-1", "Patient.name[0]._given[1]")]
    assert _keys({"resourceType": "Patient", "_birthDate": {"id": "b"}}) == [("ele-1", "Patient._birthDate")]


def test_the_text_finds_every_universal_place() -> None:
    """The ext-1 and ele-1 places are looked for only where the resource's JSON text shows some
    (invariants._universal_places); on every HL7 example, what that finds is what the full walk finds."""
    examples = CORPUS / "hl7-examples" / "r4-examples"
    if not examples.is_dir():
        if IN_CI:
            pytest.fail(f"HL7 examples not found at {examples}")
        pytest.skip(f"HL7 examples not found at {examples} (set EHR_CORPUS)")
    # ele-1's places, which the examples hardly hold: an empty object, an id alone, a lone companion.
    resources = [
        {"resourceType": "Patient", "maritalStatus": {}},
        {"resourceType": "Patient", "name": [{"id": "n1"}]},
        {"resourceType": "Patient", "_birthDate": {"id": "b"}},
        {"resourceType": "Patient", "name": [{"family": "x", "_given": [{"id": "g"}]}]},
    ]
    resources += [json.loads(file.read_bytes()) for file in sorted(examples.glob("*.json"))]
    modes: Counter[str] = Counter()
    for resource in resources:
        if not isinstance(resource.get("resourceType"), str):
            continue  # package.json
        mode = _universal_places(resource, None)
        modes[mode] += 1
        assert _walk(resource, mode) == _walk(resource, "all"), resource.get("id")
    assert all(modes[mode] > 20 for mode in ("all", "extensions", "none")), modes


def _walk(resource: dict[str, Any], mode: str) -> list[tuple[str, str]]:
    kind = resource["resourceType"]
    return sorted((path, _written(where)) for _node, path, where, _v in _places(resource, kind, kind, resource, mode))


def test_dom_3_guard_reads_the_text_as_the_walk_does() -> None:
    """dom-3's guard answers from the resource's JSON text as from a walk of its values: on every HL7 example
    with contained resources, and where a ``"#id"`` is only part of a string or a key."""
    guard = GUARDS["dom-3"][1]
    examples = CORPUS / "hl7-examples" / "r4-examples"
    contained = {"resourceType": "Organization", "id": "o", "name": "x"}
    resources = [
        {"resourceType": "Patient", "contained": [contained], "managingOrganization": {"reference": "#o"}},
        {"resourceType": "Patient", "contained": [contained], "name": [{"text": 'say "#o", twice'}]},
        {"resourceType": "Patient", "contained": [contained], "name": [{"given": ["a", "#o"]}]},
        {"resourceType": "Patient", "contained": [contained]},
    ]
    resources += [json.loads(file.read_bytes()) for file in sorted(examples.glob("*.json"))]
    answers: Counter[bool] = Counter()
    for resource in resources:
        if isinstance(resource.get("contained"), list):
            answer = guard(resource, dumps(resource))
            assert answer is guard(resource, None), resource.get("id")
            answers[answer] += 1
    assert answers[True] >= 2 and answers[False] >= 20, answers


_ACTIVE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
_ENTERED_IN_ERROR = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "entered-in-error"}]
}


def test_a_consultation_condition_is_checked_without_the_fhirpath_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A diagnosis as a consultation records it (clinicalStatus, no abatement, no verificationStatus) holds
    con-4 and con-5 by their first terms: no fhirpathpy evaluation (a transaction Bundle carries several)."""
    import ehr_core.resources.invariants as invariants

    evaluated: list[str] = []
    broken = invariants._broken

    def counting(node: Any, element_path: str, ast: Any, variables: dict[str, Any]) -> bool:
        evaluated.append(element_path)
        return broken(node, element_path, ast, variables)

    monkeypatch.setattr(invariants, "_broken", counting)
    condition = {
        "resourceType": "Condition",
        "clinicalStatus": _ACTIVE,
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]},
        "subject": {"reference": "Patient/p"},
        "recordedDate": "2026-12-01T10:00:00-06:00",
    }
    assert _keys(condition) == []
    assert evaluated == []
    # Where the guards let the rules through, they are still evaluated and still refuse.
    assert _keys({**condition, "abatementDateTime": "2026-12-02"}) == [("con-4", "Condition")]
    assert _keys({**condition, "verificationStatus": _ENTERED_IN_ERROR}) == [("con-5", "Condition")]
    assert _keys({**condition, "clinicalStatus": {**_ACTIVE, "coding": []}, "abatementString": "x"}) == [
        ("con-4", "Condition")
    ]
    assert evaluated
