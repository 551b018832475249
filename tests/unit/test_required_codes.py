"""Required bindings of ``code`` elements are enforced, element by element (R4 terminologies.html#required).

The sample is drawn from the generated table, not listed by hand: for every (resource type, element) of
:data:`ehr_core.spec.required_codes.ELEMENTS` that some official HL7 example holds, that example is
validated as is (accepted) and with that one value replaced by a code outside the value set (refused,
naming exactly that element).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from ehr_core.errors import InvalidResource
from ehr_core.resources.validation import validate
from ehr_core.spec.required_codes import ELEMENTS, VALUE_SETS
from tests.conftest import CORPUS, IN_CI

EXAMPLES = CORPUS / "hl7-examples" / "r4-examples"
NOT_A_CODE = "not-a-code"


def _occurrences(node: Any, keys: list[str], where: str) -> Iterator[tuple[str, list[Any] | dict[str, Any], Any]]:
    """(FHIRPath of the value, its container, its key or index) for every value at ``keys`` below ``node``."""
    key, rest = keys[0], keys[1:]
    if not isinstance(node, dict) or key not in node:
        return
    value = node[key]
    items: list[tuple[str, Any, list[Any] | dict[str, Any], Any]] = (
        [(f"{where}.{key}[{i}]", item, value, i) for i, item in enumerate(value)]
        if isinstance(value, list)
        else [(f"{where}.{key}", value, node, key)]
    )
    for path, item, container, slot in items:
        if rest:
            yield from _occurrences(item, rest, path)
        elif isinstance(item, str):
            yield path, container, slot


def _models_accept(resource: dict[str, Any]) -> bool:
    """The R4B models' own verdict (Evidence-example and a few others break them): an independent filter."""
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except Exception:  # ValueError for a type R4B lacks, pydantic's ValidationError otherwise
        return False
    return True


def _cases() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(resource type, element path, value set, example holding it): one example per element."""
    if not EXAMPLES.is_dir():
        return []
    wanted = {(t, path): url for t, rows in ELEMENTS.items() for path, url in rows}
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for file in sorted(EXAMPLES.glob("*.json")):
        resource = json.loads(file.read_bytes())
        resource_type = resource.get("resourceType")
        if resource_type not in ELEMENTS or not _models_accept(resource):
            continue
        for path, _url in ELEMENTS.get(resource_type, ()):
            if (resource_type, path) in found:
                continue
            if any(True for _ in _occurrences(resource, path.split("."), resource_type)):
                found[(resource_type, path)] = resource
    return [(t, path, wanted[(t, path)], resource) for (t, path), resource in sorted(found.items())]


CASES = _cases()


def test_the_sample_is_broad() -> None:
    if not CASES:
        message = f"HL7 examples not found at {EXAMPLES} (set EHR_CORPUS)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    assert len(CASES) >= 100, len(CASES)
    assert len({url for _t, _p, url, _r in CASES}) >= 30
    assert len({t for t, _p, _u, _r in CASES}) >= 60


@pytest.mark.parametrize(("resource_type", "path", "url", "example"), CASES, ids=[f"{c[0]}.{c[1]}" for c in CASES])
def test_a_code_outside_the_required_value_set_is_refused(
    resource_type: str, path: str, url: str, example: dict[str, Any]
) -> None:
    assert NOT_A_CODE not in VALUE_SETS[url]
    assert validate(example) == resource_type  # as published: every code is in its value set
    broken = copy.deepcopy(example)
    where, container, slot = next(_occurrences(broken, path.split("."), resource_type))
    container[slot] = NOT_A_CODE  # type: ignore[index]
    with pytest.raises(InvalidResource) as refused:
        validate(broken)
    issues = refused.value.issues
    outside = [issue for issue in issues if issue.code == "code-invalid"]
    assert [issue.expression for issue in outside] == [where]
    assert url in outside[0].diagnostics and repr(NOT_A_CODE) in outside[0].diagnostics
    # An invariant may read the same code (cpb-3 reads CapabilityStatement.kind): it breaks too, nothing else.
    assert {issue.code for issue in issues} <= {"code-invalid", "invariant"}
