"""Generate :mod:`ehr_core.spec.invariants` from the R4 StructureDefinitions' error-level constraints.

R4 §2.19.0.6 (conformance-rules.html#constraints): "constraints" are invariants, FHIRPath expressions that
SHALL evaluate to true on every instance of the element they are attached to; those of severity ``error``
make a resource invalid. The generator lists, per constraint, the element it is attached to (its path in
the defining StructureDefinition: ``Patient.contact``, ``Period``, ``Timing.repeat``), its key, the spec's
human text and its expression; and, per resource type, the JSON paths at which an element carrying
constraints can appear (its own elements, and those of its complex data types, followed down a few levels).

Left out, each with its reason (the generated module lists every one): any expression using a function
fhirpathpy lacks, found by comparing the expression's function calls with fhirpathpy's own table (the
narrative checks ``htmlChecks()``, ``resolve()``, ``conformsTo()``...).

Run through ``python -m ehr_core.spec.generate`` (``make spec``); the server never imports this module.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ehr_core.spec.sources import core_definitions, load

__all__ = ["evaluable_expression", "invariants_module", "skip_reason"]

#: Data types whose elements are not followed: an Extension's value may be of any type (its constraint
#: ext-1 is checked on every extension wherever it is), a Reference's ``identifier`` and a Meta's codings
#: would only repeat the paths (the Reference itself is checked: ref-1).
_NOT_FOLLOWED = frozenset({"Extension", "Meta", "Resource"})
#: How deep data types are followed inside each other (``Timing.repeat.boundsDuration``).
_DEPTH = 3

#: Universal invariants and why they are not evaluated (none today: ele-1 and ext-1 are, on every element
#: and every extension).
_UNIVERSAL_SKIPS: dict[str, str] = {}
_FUNCTION = re.compile(r"\b([A-Za-z]+)\(")
# ``as(T)`` as a function: FHIRPath N1 (and fhirpathpy) require a single input, while R4's dom-3 applies it
# to ``descendants()``, a collection, meaning "those of type T": ``ofType(T)``, the same on one item.
_AS_FUNCTION = re.compile(r"(?<![A-Za-z0-9_])as\(")


def evaluable_expression(expression: str) -> str:
    """The spec's expression as evaluated here: whitespace runs made one space, ``as(T)`` read ``ofType(T)``."""
    return _AS_FUNCTION.sub("ofType(", " ".join(expression.split()))


def skip_reason(key: str, expression: str, evaluable: set[str]) -> str | None:
    """Why the invariant ``key`` is not evaluated, or None when it is.

    ``evaluable``: the FHIRPath functions fhirpathpy implements (its invocation table), so a function it
    lacks is found from the expression, not from a hand-kept list.
    """
    if key in _UNIVERSAL_SKIPS:
        return _UNIVERSAL_SKIPS[key]
    missing = sorted({name for name in _FUNCTION.findall(expression) if name not in evaluable})
    if missing:
        return "uses " + ", ".join(f"{name}()" for name in missing) + ", which fhirpathpy does not implement"
    return None


def _json_key(element: dict[str, Any], type_code: str) -> str:
    name = str(element["path"]).rsplit(".", 1)[1]
    if name.endswith("[x]"):
        return name[:-3] + type_code[0].upper() + type_code[1:]
    return name


def _places(
    definition: dict[str, Any], types: dict[str, dict[str, Any]], constrained: set[str], depth: int
) -> list[tuple[str, str]]:
    """(JSON path below the definition's root, constrained element path) for every constrained element."""
    root = definition["type"]
    found: list[tuple[str, str]] = []
    if root in constrained:
        found.append(("", root))
    keys: dict[str, list[str]] = {root: [""]}  # element path -> its JSON paths below the root
    for element in definition["snapshot"]["element"]:
        path = element["path"]
        parent = path.rsplit(".", 1)[0] if "." in path else None
        if parent is None or parent not in keys:
            continue  # the root itself, or below a choice element (its children belong to each type)
        for element_type in element.get("type", []):
            code = element_type["code"]
            for prefix in keys[parent]:
                json_path = f"{prefix}.{_json_key(element, code)}".lstrip(".")
                if code in ("BackboneElement", "Element") and not path.endswith("[x]"):
                    keys.setdefault(path, []).append(json_path)
                    if path in constrained:
                        found.append((json_path, path))
                elif code in types and code not in _NOT_FOLLOWED and depth > 0:
                    inner = _places(types[code], types, constrained, depth - 1 if code != "Reference" else 0)
                    found += [(f"{json_path}.{sub}".rstrip("."), where) for sub, where in inner]
    return found


def invariants_module(directory: Path) -> str:
    """The text of :mod:`ehr_core.spec.invariants`."""
    from fhir.resources.R4B import get_fhir_model_class
    from fhirpathpy.engine.invocations import invocation_registry

    from ehr_core.resources.invariants import ADDED_FUNCTIONS

    evaluable = set(invocation_registry) | set(ADDED_FUNCTIONS)
    resources = core_definitions(load(directory, "profiles-resources.json"), {"resource"})
    types = core_definitions(load(directory, "profiles-types.json"), {"complex-type"})
    version = next(iter(resources.values())).get("fhirVersion", "?")

    invariants: dict[tuple[str, str], tuple[str, str]] = {}  # (element path, key) -> (human, expression)
    skipped: dict[tuple[str, str], str] = {}
    for definitions in (types, resources):
        for name in sorted(definitions):
            for element in definitions[name]["snapshot"]["element"]:
                for constraint in element.get("constraint", []):
                    if constraint.get("severity") != "error":
                        continue
                    key, path = constraint["key"], element["path"]
                    if key == "ext-1":
                        path = "Extension"  # repeated on every ``extension`` element: Extension's own
                    elif key.startswith("dom-") or key == "ele-1":
                        path = "DomainResource" if key.startswith("dom-") else "Element"
                    if (path, key) in invariants or (path, key) in skipped:
                        continue
                    expression = evaluable_expression(str(constraint.get("expression", "")))
                    reason = skip_reason(key, expression, evaluable)
                    if reason:
                        skipped[(path, key)] = reason
                    else:
                        invariants[(path, key)] = (" ".join(str(constraint["human"]).split()), expression)

    constrained = {path for path, _key in invariants}
    places: list[tuple[str, str, str]] = []
    for resource_type in sorted(resources):
        try:
            get_fhir_model_class(resource_type)
        except ValueError:
            continue  # an R4 type R4B removed: the server stores none (ehr_core/resources/types.py)
        for json_path, where in _places(resources[resource_type], types, constrained, _DEPTH):
            if json_path:
                places.append((resource_type, json_path, where))

    lines = [
        "# ruff: noqa: E501 - one invariant (or one place) per line",
        '"""Error-level invariants of the R4 resources and data types (conformance-rules.html#constraints), generated.',
        "",
        "Generated by ehr_core.spec.generate from profiles-resources.json and profiles-types.json of FHIR R4",
        f"{version}; do not edit (``make spec``; tests/unit/test_spec_generated.py fails when this file differs).",
        "",
        "``INVARIANTS``: (element path, key, human, expression) of every error-level constraint evaluated; the",
        "element path is where the spec attaches it (``Patient.contact``, a data type ``Period``, ``Timing.repeat``;",
        "``DomainResource`` for dom-*, ``Extension`` for ext-1, ``Element`` for ele-1). Each expression is the",
        "spec's, with the function ``as(T)`` written ``ofType(T)`` (FHIRPath N1 wants one input for ``as``; dom-3",
        "gives it a collection). ``SKIPPED``: (element path, key, reason) of every error-level constraint not",
        "evaluated. ``PLACES``: per resource type, the JSON paths (repeating elements walked item by item) of the",
        "elements below the root that carry invariants, and which element path each is; the root itself carries",
        "the resource type's and DomainResource's, every ``extension`` and ``modifierExtension`` item Extension's.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from types import MappingProxyType",
        "",
        '__all__ = ["INVARIANTS", "PLACES", "SKIPPED"]',
        "",
        "# One line per invariant: ``element-path<TAB>key<TAB>expression<TAB>human``.",
        '_INVARIANTS = """',
    ]
    for (path, key), (human, expression) in sorted(invariants.items()):
        lines.append(f"{path}\t{key}\t{expression}\t{human}")
    lines += ['"""', "", "# One line per skipped invariant: ``element-path<TAB>key<TAB>reason``.", '_SKIPPED = """']
    for (path, key), reason in sorted(skipped.items()):
        lines.append(f"{path}\t{key}\t{reason}")
    lines += ['"""', "", "# One line per place: ``ResourceType json.path element-path``.", '_PLACES = """']
    lines += [" ".join(row) for row in places]
    lines += ['"""', _TAIL]
    return "\n".join(lines)


_TAIL = """

def _rows(text: str) -> list[list[str]]:
    return [line.split("\\t") for line in text.strip("\\n").split("\\n")]


def _places(text: str) -> dict[str, tuple[tuple[str, str], ...]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for line in text.strip().splitlines():
        resource_type, json_path, element_path = line.split(" ")
        found.setdefault(resource_type, []).append((json_path, element_path))
    return {resource_type: tuple(rows) for resource_type, rows in found.items()}


#: (element path, key, human, expression) of every evaluated error-level invariant.
INVARIANTS: tuple[tuple[str, str, str, str], ...] = tuple(
    (path, key, human, expression) for path, key, expression, human in _rows(_INVARIANTS)
)
#: (element path, key, reason) of every error-level invariant that is not evaluated.
SKIPPED: tuple[tuple[str, str, str], ...] = tuple((path, key, reason) for path, key, reason in _rows(_SKIPPED))
#: Per resource type: (JSON path below the root, element path) of each element that carries invariants.
PLACES = MappingProxyType(_places(_PLACES))
"""
