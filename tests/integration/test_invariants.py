"""Error-level invariants and required bindings are enforced over HTTP, rule by rule, on every backend.

The rules are drawn from the generated tables, not listed by hand (tests/support/breaking.py): for each
invariant of :data:`ehr_core.spec.invariants.INVARIANTS` that some official HL7 example can be made to
break (by removing or adding children of one element, judged by fhirpathpy evaluating the spec's expression
on that element alone), the broken resource must be refused with 400 and one issue naming that invariant at
that element; the example as published must be accepted; and a transaction carrying the broken resource
must store nothing (R4 http.html#trules). The same for one element of each required value set
(``ELEMENTS``, ``CODED``), with a code outside it.

Each backend gets one server; failures are collected and reported together.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import IN_CI
from tests.support.breaking import EXAMPLES, Case, binding_cases, invariant_cases

FHIR = {"content-type": "application/fhir+json"}
PATIENT_URN = "urn:uuid:0b7c3c2e-7f0e-4f43-9d55-5a1f00000001"


@pytest.fixture(scope="module")
def cases() -> tuple[tuple[Case, ...], tuple[Case, ...]]:
    if not EXAMPLES.is_dir():
        message = f"HL7 examples not found at {EXAMPLES} (set EHR_CORPUS)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    by_value_set: dict[str, Case] = {}
    for case in binding_cases():
        by_value_set.setdefault(case.rule, case)
    return invariant_cases(), tuple(by_value_set.values())


def _without_id(resource: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if key != "id"}


def _count(client: TestClient, resource_type: str) -> int | None:
    """How many ``resource_type`` are stored (None for a type with no search here: AuditEvent is the server's)."""
    answer = client.get(f"/fhir/{resource_type}?_summary=count")
    return int(answer.json()["total"]) if answer.status_code == 200 else None


def _transaction(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": PATIENT_URN,
                "resource": {"resourceType": "Patient", "gender": "female"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": _without_id(resource), "request": {"method": "POST", "url": resource["resourceType"]}},
        ],
    }


class Run:
    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.failures: list[str] = []

    def refused(self, case: Case, code: str, naming: str) -> list[dict[str, Any]] | None:
        resource_type = case.broken["resourceType"]
        answer = self.client.post(f"/fhir/{resource_type}", json=_without_id(case.broken), headers=FHIR)
        if answer.status_code != 400:
            self.failures.append(f"{case.rule} at {case.expression}: answered {answer.status_code} {answer.text[:200]}")
            return None
        issues: list[dict[str, Any]] = answer.json()["issue"]
        mine = [i for i in issues if i["code"] == code and i.get("expression") == [case.expression]]
        if not mine or naming not in mine[0]["diagnostics"]:
            self.failures.append(f"{case.rule} at {case.expression}: issues {issues}")
            return None
        return issues

    def accepted(self, case: Case) -> None:
        resource_type = case.fixed["resourceType"]
        answer = self.client.post(f"/fhir/{resource_type}", json=_without_id(case.fixed), headers=FHIR)
        if answer.status_code != 201:
            self.failures.append(
                f"{case.rule}: the published example answered {answer.status_code} {answer.text[:200]}"
            )

    def transaction_stores_nothing(self, case: Case) -> None:
        resource_type = case.broken["resourceType"]
        before = (_count(self.client, "Patient"), _count(self.client, resource_type))
        answer = self.client.post("/fhir", json=_transaction(case.broken), headers=FHIR)
        after = (_count(self.client, "Patient"), _count(self.client, resource_type))
        if answer.status_code != 400 or after != before:
            self.failures.append(f"{case.rule} in a transaction: {answer.status_code}, counts {before} -> {after}")


def test_each_invariant_is_enforced(client: TestClient, cases: tuple[tuple[Case, ...], tuple[Case, ...]]) -> None:
    invariants, _bindings = cases
    assert len({(c.element_path, c.rule) for c in invariants}) >= 40, [c.rule for c in invariants]
    run = Run(client)
    for case in invariants:
        issues = run.refused(case, "invariant", f"{case.rule}:")
        if issues is not None and len(issues) != 1:
            run.failures.append(f"{case.rule}: more than the one rule broken: {issues}")
        run.accepted(case)
        if case.broken["resourceType"] != "Bundle":  # a Bundle entry cannot carry a transaction Bundle
            run.transaction_stores_nothing(case)
    assert not run.failures, f"{len(run.failures)} of {len(invariants)} rules:\n" + "\n".join(run.failures)


def test_each_required_binding_is_enforced(
    client: TestClient, cases: tuple[tuple[Case, ...], tuple[Case, ...]]
) -> None:
    _invariants, bindings = cases
    assert len(bindings) >= 30, len(bindings)
    assert {"code" if "." not in c.element_path else "nested" for c in bindings} == {"code", "nested"}
    run = Run(client)
    for case in bindings:
        run.refused(case, "code-invalid", case.rule)
    for case in bindings[:30]:
        run.transaction_stores_nothing(case)
    assert not run.failures, f"{len(run.failures)} of {len(bindings)} value sets:\n" + "\n".join(run.failures)


def test_the_universal_rules(client: TestClient) -> None:
    """ele-1, ext-1 and dom-* hold on every element, extension and resource: hand-made, as no table row
    places them."""
    refused = {
        "ele-1": ({"resourceType": "Patient", "name": [{}]}, "Patient.name[0]"),
        "ext-1": (
            {
                "resourceType": "Patient",
                "extension": [
                    {"url": "http://example.org/x", "valueString": "a", "extension": [{"url": "y", "valueString": "b"}]}
                ],
            },
            "Patient.extension[0]",
        ),
        "dom-2": (
            {
                "resourceType": "Patient",
                "contained": [
                    {"resourceType": "Patient", "id": "c", "contained": [{"resourceType": "Patient", "id": "d"}]}
                ],
                "link": [{"other": {"reference": "#c"}, "type": "seealso"}],
            },
            "Patient",
        ),
        "dom-3": ({"resourceType": "Patient", "contained": [{"resourceType": "Patient", "id": "c"}]}, "Patient"),
    }
    for key, (resource, expression) in refused.items():
        answer = client.post("/fhir/Patient", json=resource, headers=FHIR)
        assert answer.status_code == 400, (key, answer.text)
        issues = answer.json()["issue"]
        assert any(
            i["diagnostics"].startswith(f"Constraint failed: {key}:") and i["expression"] == [expression]
            for i in issues
        ), (key, issues)
    referred = {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Patient", "id": "c"}],
        "link": [{"other": {"reference": "#c"}, "type": "seealso"}],
    }
    assert client.post("/fhir/Patient", json=referred, headers=FHIR).status_code == 201
