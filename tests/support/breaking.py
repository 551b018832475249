"""Resources that break exactly one generated rule, found from the HL7 examples (for tests/integration).

Invariants: for each (element path, key) of :data:`ehr_core.spec.invariants.INVARIANTS`, an element of an
official example where the rule holds is mutated (a child removed, two removed, or a child copied from
another example's element of the same path added) until the spec's expression, evaluated by fhirpathpy
directly on that element, is false, while every other invariant of the element stays true and the R4B
models still accept the resource. The server's own walk, placement, paths and answers are what the tests
then check; the search uses nothing of them.

Required bindings: each (type, element) of ``ELEMENTS`` and ``CODED`` that an example holds, with the code
replaced by one outside the value set.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhirpathpy import compile as compile_fhirpath
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from ehr_core.resources.invariants import ADDED_FUNCTIONS
from ehr_core.spec.invariants import INVARIANTS, PLACES
from ehr_core.spec.required_codes import CODED, CODINGS, ELEMENTS
from tests.conftest import CORPUS

__all__ = ["Case", "binding_cases", "invariant_cases"]

EXAMPLES = CORPUS / "hl7-examples" / "r4-examples"
NOT_A_CODE = "not-a-code"
_OPTIONS = {
    "userInvocationTable": {name: {"fn": fn} for name, fn in ADDED_FUNCTIONS.items()},
    "traceFn": lambda label, value: None,
}


@dataclass(frozen=True)
class Case:
    rule: str  # the invariant key, or the value set URL
    element_path: str
    broken: dict[str, Any]
    fixed: dict[str, Any]
    expression: str  # FHIRPath of the element that breaks it


def _models_accept(resource: dict[str, Any]) -> bool:
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except Exception:
        return False
    return True


@cache
def _examples() -> tuple[dict[str, Any], ...]:
    found = []
    for file in sorted(EXAMPLES.glob("*.json")):
        if file.name == "package.json":
            continue
        resource = json.loads(file.read_bytes())
        if resource.get("resourceType") in PLACES and _models_accept(resource):
            found.append(resource)
    return tuple(found)


def _nodes(node: Any, keys: list[str], where: str) -> Iterator[tuple[dict[str, Any], str]]:
    if not keys:
        if isinstance(node, dict):
            yield node, where
        return
    key, rest = keys[0], keys[1:]
    if not isinstance(node, dict) or key not in node:
        return
    value = node[key]
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for index, item in items:
        yield from _nodes(item, rest, f"{where}.{key}" if index is None else f"{where}.{key}[{index}]")


def _locate(resource: dict[str, Any], where: str) -> dict[str, Any]:
    """The dict at FHIRPath ``where`` (as _nodes spells it) inside ``resource``."""
    node: Any = resource
    for part in where.split(".")[1:]:
        name, _, index = part.partition("[")
        node = node[name]
        if index:
            node = node[int(index[:-1])]
    assert isinstance(node, dict)
    return node


@cache
def _compiled(expression: str) -> Any:
    return compile_fhirpath(expression, models["r4"], _OPTIONS)


def _holds(node: dict[str, Any], element_path: str, expression: str, resource: dict[str, Any]) -> bool | None:
    """The spec's expression on ``node``, by fhirpathpy alone: False only when it evaluates to false."""
    context = {"resource": resource, "rootResource": resource}
    try:
        result = _compiled(expression)(ResourceNode.create_node(node, element_path), context)
    except Exception:
        return None
    return result != [False]


def _root_holds(resource: dict[str, Any], but: str | None = None) -> bool:
    """Whether the rules of the resource itself (its type's and DomainResource's) still hold, ``but`` aside."""
    rows = [row for row in INVARIANTS if row[0] in (resource["resourceType"], "DomainResource") and row[1] != but]
    return all(_holds(resource, path, expression, resource) is not False for path, _k, _h, expression in rows)


@cache
def invariant_cases() -> tuple[Case, ...]:
    by_path: dict[str, list[tuple[str, str]]] = {}
    for path, key, _human, expression in INVARIANTS:
        by_path.setdefault(path, []).append((key, expression))
    # element path -> [(example, FHIRPath of a node)]
    occurrences: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for example in _examples():
        resource_type = example["resourceType"]
        occurrences.setdefault(resource_type, []).append((example, resource_type))
        for json_path, element_path in PLACES.get(resource_type, ()):
            for _node, where in _nodes(example, json_path.split("."), resource_type):
                occurrences.setdefault(element_path, []).append((example, where))
    cases = []
    for path, key, _human, expression in INVARIANTS:
        if path in ("DomainResource", "Extension", "Element"):
            continue  # universal: exercised by the hand-made cases of the tests
        case = _break(path, key, expression, by_path[path], occurrences.get(path, []))
        if case is not None:
            cases.append(case)
    return tuple(cases)


def _break(
    path: str, key: str, expression: str, siblings: list[tuple[str, str]], found: list[tuple[dict[str, Any], str]]
) -> Case | None:
    donors: dict[str, Any] = {}
    for example, where in found:
        for name, value in _locate(example, where).items():
            donors.setdefault(name, value)
    for example, where in found[:6]:
        node = _locate(example, where)
        if _holds(node, path, expression, example) is not True:
            continue
        names = [name for name in node if name not in ("id", "extension", "modifierExtension", "resourceType")]
        edits: list[tuple[tuple[str, ...], tuple[str, ...]]] = [((n,), ()) for n in names]
        edits += [((a, b), ()) for a, b in itertools.combinations(names, 2)]
        edits += [((), (n,)) for n in donors if n not in node and n != "resourceType"]
        edits += [((d,), (a,)) for d in names for a in donors if a not in node and a != "resourceType"]
        for removed, added in edits[:400]:
            broken = copy.deepcopy(example)
            target = _locate(broken, where)
            for name in removed:
                del target[name]
            for name in added:
                target[name] = copy.deepcopy(donors[name])
            if not target or _holds(target, path, expression, broken) is not False:
                continue
            others = [other for other in siblings if other[0] != key]
            if any(_holds(target, path, e, broken) is False for _k, e in others):
                continue
            if not _root_holds(broken, but=key) or not _models_accept(broken):
                continue
            return Case(key, path, broken, example, where)
    return None


@cache
def binding_cases() -> tuple[Case, ...]:
    cases: dict[tuple[str, str], Case] = {}
    for example in _examples():
        resource_type = example["resourceType"]
        rows = [(p, url, "code") for p, url in ELEMENTS.get(resource_type, ())] + list(CODED.get(resource_type, ()))
        for json_path, url, kind in rows:
            if (resource_type, json_path) in cases:
                continue
            keys = json_path.split(".")
            broken = copy.deepcopy(example)
            if kind == "code":
                parents = list(_nodes(broken, keys[:-1], resource_type))
                for parent, where in parents:
                    value = parent.get(keys[-1])
                    if isinstance(value, str):
                        parent[keys[-1]] = NOT_A_CODE
                        cases[(resource_type, json_path)] = Case(url, json_path, broken, example, f"{where}.{keys[-1]}")
                        break
                    if isinstance(value, list) and value and isinstance(value[0], str):
                        value[0] = NOT_A_CODE
                        where = f"{where}.{keys[-1]}[0]"
                        cases[(resource_type, json_path)] = Case(url, json_path, broken, example, where)
                        break
                continue
            for node, where in _nodes(broken, keys, resource_type):
                codings = node.get("coding") if kind == "CodeableConcept" else [node]
                if codings and all(c.get("system") in CODINGS[url] for c in codings if isinstance(c, dict)):
                    for coding in codings:
                        coding["code"] = NOT_A_CODE
                    cases[(resource_type, json_path)] = Case(url, json_path, broken, example, where)
                    break
    return tuple(cases[k] for k in sorted(cases) if _root_holds(cases[k].broken))
