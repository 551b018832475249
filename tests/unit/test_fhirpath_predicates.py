"""The invariants translated into Python answer as fhirpathpy does, wherever they answer.

Every place of every HL7 R4 example (each accepted by the models), and of each example mutated to break one
invariant (tests/support/breaking.py, so that false answers are compared too), is evaluated both ways: the
translation (ehr_core/resources/fhirpath_predicates.py) and fhirpathpy on the spec's expression. Where the
translation answers, it must break the rule exactly where fhirpathpy's result is false.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from fhirpathpy import apply_parsed_path
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from ehr_core.resources import invariants
from ehr_core.spec.invariants import INVARIANTS
from tests.conftest import IN_CI
from tests.support.breaking import EXAMPLES, _examples, invariant_cases

pytestmark = pytest.mark.slow  # every place of 700 examples, twice

_apply: Any = apply_parsed_path
_OPTIONS: Any = invariants._OPTIONS


def _fhirpathpy(node: Any, element_path: str, tree: Any, variables: dict[str, Any]) -> Any:
    try:
        return _apply(ResourceNode.create_node(node, element_path), tree, variables, models["r4"], _OPTIONS)
    except Exception:  # fhirpathpy raises plain exceptions; validation then refuses nothing
        return None


def _compare(resource: dict[str, Any], answered: Counter[tuple[str, bool]], wrong: list[Any]) -> None:
    resource_type = resource["resourceType"]
    for node, element_path, where, context in invariants._places(resource, resource_type, resource_type, resource):
        for key, _human, tree, uses_variables, predicate in invariants._compiled(element_path):
            if predicate is None:
                continue
            variables = context if uses_variables else {}
            holds = predicate(node, variables)
            if holds is None:
                continue
            expected = _fhirpathpy(node, element_path, tree, variables)
            answered[(key, holds)] += 1
            # Validation refuses on a false result only (empty or failed: no evidence, invariants._broken).
            if holds == (expected == [False]):
                wrong.append((key, where, holds, expected))


def _local_references() -> list[dict[str, Any]]:
    """ref-1 both ways: a local reference to a contained resource, to none, to the container (``#``)."""
    organization = {"resourceType": "Organization", "id": "o", "name": "x"}
    references = [{"reference": "#o"}, {"reference": "#missing"}, {"reference": "#"}, {"reference": "Patient/1"}]
    return [
        {"resourceType": "Patient", "contained": [organization], "generalPractitioner": references},
        {"resourceType": "Patient", "generalPractitioner": references},
    ]


def test_translations_agree_with_fhirpathpy_on_the_hl7_examples() -> None:
    if not EXAMPLES.is_dir():
        if IN_CI:
            pytest.fail(f"HL7 examples not found at {EXAMPLES} (set EHR_CORPUS)")
        pytest.skip(f"HL7 examples not found at {EXAMPLES} (set EHR_CORPUS)")
    answered: Counter[tuple[str, bool]] = Counter()
    wrong: list[Any] = []
    for example in _examples():
        _compare(example, answered, wrong)
    for case in invariant_cases():
        _compare(case.broken, answered, wrong)
    for resource in _local_references():
        _compare(resource, answered, wrong)
    assert wrong[:10] == [], len(wrong)
    # The comparison is worth something only if it saw both answers of the frequent rules (per-1's false
    # ones: test_period_order_agrees_with_fhirpathpy).
    for key in ("ref-1", "att-1", "obs-6", "qty-3"):
        assert answered[(key, True)] > 0 and answered[(key, False)] > 0, (key, answered)
    assert answered[("per-1", True)] > 100
    translated = {key for key, _holds in answered}
    assert len(translated) >= 50, sorted(translated)


@pytest.mark.parametrize(
    ("start", "end", "holds"),
    [
        ("2020-01-01T10:00:00-05:00", "2020-01-01T09:00:00-05:00", False),
        ("2020-01-01T09:00:00-05:00", "2020-01-01T10:00:00-05:00", True),
        ("2020-01-01T10:00:00Z", "2020-01-01T10:00:00Z", True),
        ("2021-03", "2021-02", False),
        ("2021", "2021", True),
    ],
)
def test_period_order_agrees_with_fhirpathpy(start: str, end: str, holds: bool) -> None:
    period = {"start": start, "end": end}
    (_key, _human, tree, _uses, predicate), *_ = invariants._compiled("Period")
    assert predicate is not None and predicate(period, {}) is holds
    assert _fhirpathpy(period, "Period", tree, {}) == [holds]


def test_outside_the_subset_fhirpathpy_decides() -> None:
    """Mixed precisions (FHIRPath's comparison may then be empty), different time zones and expressions with
    other functions are not translated."""
    (_key, _human, _tree, _uses, predicate), *_ = invariants._compiled("Period")
    assert predicate is not None and predicate({"start": "2020-01-01", "end": "2020-01-01T10:00:00Z"}, {}) is None
    assert predicate({"start": "2020-01-01T10:00:00+02:00", "end": "2020-01-01T09:00:00Z"}, {}) is None
    untranslated = {
        key for path, key, _h, _e in INVARIANTS for k, *_r, p in invariants._compiled(path) if k == key and p is None
    }
    assert {"ele-1", "dom-3", "obs-7"} <= untranslated
