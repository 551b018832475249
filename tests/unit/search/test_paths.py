"""The compiled expressions reach exactly what a FHIRPath engine reaches (R4 §3.1.1.4, FHIRPath N1).

Every parameter's expression (verbatim from R4's registry) is evaluated with ``fhirpathpy`` on real
resources and compared with what the compiled routes walk to. ``resolve()`` is not available in
``fhirpathpy``; ``where(resolve() is T)`` is evaluated as "the literal reference starts with ``T/``",
(relative or absolute), which is what the index can know without resolving.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fhirpathpy import evaluate
from fhirpathpy.models import models

from projections.search.paths import Route, Step, compile_expression, walk
from projections.search.registry import parameters, searchable_types
from tests.conftest import CORPUS


def test_choice_elements_and_casts() -> None:
    routes = compile_expression("Observation", "Observation.effective")
    assert {(r.steps[0].key, r.datatype) for r in routes} == {
        ("effectiveDateTime", "dateTime"),
        ("effectivePeriod", "Period"),
        ("effectiveTiming", "Timing"),
        ("effectiveInstant", "instant"),
    }
    assert compile_expression("Observation", "(Observation.value as Quantity)") == (
        Route((Step("valueQuantity"),), "Quantity"),
    )
    assert compile_expression("Condition", "Condition.onset.as(dateTime) | Condition.onset.as(Period)") == (
        Route((Step("onsetDateTime"),), "dateTime"),
        Route((Step("onsetPeriod"),), "Period"),
    )


def test_filters_and_reference_targets() -> None:
    (phone,) = compile_expression("Patient", "Patient.telecom.where(system='phone')")
    assert phone.steps == (Step("telecom", (("system", "phone"),)),) and phone.datatype == "ContactPoint"
    (patient,) = compile_expression("Observation", "Observation.subject.where(resolve() is Patient)")
    assert patient.reference_type == "Patient" and patient.targets == ("Patient",)
    (subject,) = compile_expression("Observation", "Observation.subject")
    assert {"Patient", "Group", "Device", "Location"} <= set(subject.targets)
    resource = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/1"},
    }
    assert list(walk(resource, patient)) == [{"reference": "Patient/1"}]
    assert list(walk({**resource, "subject": {"reference": "Group/1"}}, patient)) == []


def test_every_definition_compiles_to_typed_routes() -> None:
    for resource_type in searchable_types():
        for code, param in parameters(resource_type).items():
            if param.type == "composite":
                # R4 search.html#composite: the repetitions, and every component's values within one.
                assert param.repetitions, f"{resource_type}.{code} has no repetitions"
                assert len(param.components) >= 2, f"{resource_type}.{code} has fewer than two components"
                for component in param.components:
                    assert component.routes, f"{resource_type}.{code} component {component.code} reaches nothing"
                continue
            assert param.special or param.routes, f"{resource_type}.{code} reaches nothing"
            if param.type == "reference":
                assert param.targets, f"{resource_type}.{code} has no target types"


_RESOLVE = re.compile(r"\.where\(resolve\(\) is (\w+)\)")
_CAST = re.compile(r"\(([\w.]+) as (\w+)\)")


def _engine_expression(resource_type: str, expression: str) -> str:
    """The expression as an engine can run it on collections: ``(X as T)`` → ``X.ofType(T)``.

    FHIRPath's ``as`` needs a single item; the index (like every server) applies the cast to each one.
    """
    expression = expression.replace("Resource.", f"{resource_type}.")
    expression = _CAST.sub(lambda m: f"{m.group(1)}.ofType({m.group(2)})", expression)
    expression = expression.replace(".as(", ".ofType(")
    return _RESOLVE.sub(
        lambda m: f".where(reference.startsWith('{m.group(1)}/') or reference.contains('/{m.group(1)}/'))", expression
    )


def _key(value: Any) -> str:
    """Comparable text; the engine reads decimals as Decimal, the index's JSON parser as float."""
    return json.dumps(value, sort_keys=True, default=float)


def _sample() -> list[dict[str, Any]]:
    resources = []
    known = set(searchable_types())
    for path in sorted((CORPUS / "hl7-examples" / "r4-examples").glob("*.json")):
        resource = json.loads(path.read_text())
        if resource.get("resourceType") in known:
            resources.append(resource)
    synthea = sorted((CORPUS / "synthea" / "smart-r4-2019").glob("*.json"))[0]
    resources += [entry["resource"] for entry in json.loads(synthea.read_text())["entry"]]
    return resources


@pytest.mark.slow
def test_routes_reach_what_fhirpath_reaches() -> None:
    model = models["r4"]
    mismatches: list[str] = []
    checked = 0
    for resource in _sample():
        resource_type = resource["resourceType"]
        for code, param in parameters(resource_type).items():
            if param.special or param.type == "composite":  # components checked as their own parameters
                continue
            expected = evaluate(resource, _engine_expression(resource_type, param.expression), model=model)
            found = [value for route in param.routes for value in walk(resource, route)]
            checked += 1
            # FHIRPath's union removes duplicates; so does the index (rows are unique per resource).
            if set(map(_key, expected)) != set(map(_key, found)):
                mismatches.append(f"{resource_type}/{resource.get('id')} {code}: {expected!r} != {found!r}")
    assert checked > 5000
    assert not mismatches, "\n".join(mismatches[:40])
