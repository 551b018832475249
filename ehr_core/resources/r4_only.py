"""Validation of the R4 resource types R4B removed (``REMOVED_IN_R4B``: MedicinalProduct*, the evidence
syntheses, SubstanceSpecification...), which no model this server has describes.

``fhir.resources`` 8 ships R4B and STU3 models only, so these types are checked against the generated R4
element table (``ehr_core/spec/r4_only.json.gz``, from the R4 StructureDefinitions' snapshots): every
property must be an element of the type (choice elements by their type suffix, ``_name`` for a primitive's
id and extensions), each element's cardinality holds (``max`` 1: no array; ``*``: an array; ``min``), each
primitive has its JSON type (R4 json.html#primitive), backbone elements are walked, and each complex
datatype value (CodeableConcept, Reference, Extension, Narrative...) is validated by its R4B model: the
datatypes themselves did not change between R4 and R4B for these elements. A contained resource is
validated as any resource. The R4 invariants of these types are not evaluated (the generated invariant table
covers the R4B types).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ehr_core.errors import Issue

__all__ = ["r4_only_issues"]

_DATA = Path(__file__).resolve().parents[1] / "spec" / "r4_only.json.gz"

_INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt"})
_CHECKED = frozenset({"BackboneElement", "Element", "Resource"})


@cache
def _table() -> dict[str, dict[str, list[Any]]]:
    table: dict[str, dict[str, list[Any]]] = orjson.loads(gzip.decompress(_DATA.read_bytes()))
    return table


def _primitive_ok(code: str, value: Any) -> bool:
    if code == "boolean":
        return isinstance(value, bool)
    if code in _INTEGERS:
        return isinstance(value, int) and not isinstance(value, bool) and value >= {"positiveInt": 1}.get(code, 0)
    if code == "decimal":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str) and value != ""


def _element(elements: dict[str, list[Any]], path: str, key: str) -> tuple[str, list[Any], str] | None:
    """(element path, definition, the type this key holds) of a property, or None if the type has none."""
    found = elements.get(f"{path}.{key}")
    if found is not None:
        types = found[2]
        return f"{path}.{key}", found, types[0] if isinstance(types, list) and len(types) == 1 else ""
    for index in range(len(key) - 1, 0, -1):  # valueQuantity: value[x] of type Quantity
        if not key[index].isupper():
            continue
        choice = elements.get(f"{path}.{key[:index]}[x]")
        if choice is None:
            continue
        suffix = key[index:]
        for code in choice[2]:
            if code[:1].upper() + code[1:] == suffix:
                return f"{path}.{key[:index]}[x]", choice, code
    return None


def r4_only_issues(
    resource: dict[str, Any], resource_type: str, contained: Callable[[Any], list[Issue]]
) -> list[Issue]:
    """Every structural issue of ``resource`` (a type of :data:`REMOVED_IN_R4B`), at most 20."""
    elements = _table()[resource_type]
    issues: list[Issue] = []
    stack: list[tuple[dict[str, Any], str, str]] = [(resource, resource_type, resource_type)]
    while stack and len(issues) < 20:
        node, path, where = stack.pop()
        present = set()
        for key, value in node.items():
            if path == resource_type and key == "resourceType":
                continue
            primitive_extension = key.startswith("_")
            found = _element(elements, path, key[1:] if primitive_extension else key)
            if found is None:
                issues.append(Issue("structure", f"{key} is no element of {path} (R4)", f"{where}.{key}"))
                continue
            element_path, (_, maximum, types), code = found
            present.add(element_path)
            repeats = maximum != "1"
            if repeats != isinstance(value, list):
                shape = "an array" if repeats else "a single value, not an array"
                issues.append(Issue("structure", f"{element_path} must be {shape}", f"{where}.{key}"))
                continue
            items = value if isinstance(value, list) else [value]
            for index, item in enumerate(items):
                at = f"{where}.{key}[{index}]" if repeats else f"{where}.{key}"
                if primitive_extension:
                    if item is not None and not isinstance(item, dict):
                        issues.append(Issue("structure", f"{key} holds an object (id, extension)", at))
                    continue
                issues += _value_issues(item, element_path, types, code, at, stack, contained)
        for element_path, (minimum, _, _) in elements.items():
            parent, _, _name = element_path.rpartition(".")
            if parent == path and minimum > 0 and element_path not in present:
                issues.append(Issue("required", f"{element_path} is required (min {minimum})", where))
    return issues[:20]


def _value_issues(
    item: Any,
    element_path: str,
    types: list[str] | str,
    code: str,
    at: str,
    stack: list[tuple[dict[str, Any], str, str]],
    contained: Callable[[Any], list[Issue]],
) -> list[Issue]:
    if isinstance(types, str):  # contentReference "#Type.path": that backbone element's definition
        code, element_path = "BackboneElement", types.lstrip("#")
    if code in ("BackboneElement", "Element"):
        if not isinstance(item, dict):
            return [Issue("structure", f"{element_path} is an object", at)]
        stack.append((item, element_path, at))
        return []
    if code == "Resource":
        return contained(item)
    if code[:1].islower():
        if not _primitive_ok(code, item):
            return [Issue("value", f"{element_path} must be a {code}", at)]
        return []
    if not code or code in _CHECKED:
        return []
    try:
        get_fhir_model_class(code).model_validate(item)
    except ValidationError as error:
        detail = error.errors(include_url=False)[0]
        return [Issue("structure", f"{element_path} ({code}): {detail['msg']}", at)]
    except (ValueError, TypeError, KeyError) as error:
        return [Issue("structure", f"{element_path} ({code}): {error}", at)]
    return []
