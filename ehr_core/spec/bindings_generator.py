"""Generate :mod:`ehr_core.spec.required_codes` from the R4 StructureDefinitions and ValueSets.

R4 §1.24.0.1 (terminologies.html#required): a ``required`` binding means the element SHALL hold a code of
the value set. For elements of type ``code`` the system is implied by the element, so the check is one
set membership: the generator lists, for every resource type, the JSON paths of its ``code`` elements with
a required binding (those of its complex data types included: ``name.use``, ``telecom.system``,
``text.status``) and the codes of each value set, expanded from ``valuesets.json`` and
``v3-codesystems.json``. A value set that cannot be enumerated from these files (an external system such
as BCP-13 MIME types or BCP-47 languages, a filter, an incomplete code system) is left out, and the
module says which, so a reader knows what is not checked.

Run through ``python -m ehr_core.spec.generate`` (``make spec``); the server never imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["required_codes_module"]

#: Data types whose elements are not followed: an Extension's value may be of any type (its binding is
#: the extension's own definition's), a Reference's identifier and a Meta's codings bind nothing required
#: that a resource's author chooses, and following them would only repeat paths.
_NOT_FOLLOWED = frozenset({"Extension", "Reference", "Meta", "Resource"})
#: How deep data types are followed inside each other (``Timing.repeat.boundsDuration.comparator``).
_DEPTH = 4


def _load(directory: Path, name: str) -> Any:
    with (directory / name).open("rb") as file:
        return json.load(file)


def _definitions(bundle: dict[str, Any], kinds: set[str]) -> dict[str, dict[str, Any]]:
    found = {}
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "StructureDefinition" and resource.get("kind") in kinds:
            if resource.get("derivation") == "constraint":
                continue  # profiles (SimpleQuantity, the vital signs...) bind nothing a base type does not
            found[resource["type"]] = resource
    return found


class _Terminology:
    """The spec's value sets and code systems, by canonical URL, and their expansion to codes."""

    def __init__(self, *bundles: dict[str, Any]) -> None:
        self.value_sets: dict[str, dict[str, Any]] = {}
        self.code_systems: dict[str, dict[str, Any]] = {}
        for bundle in bundles:
            for entry in bundle.get("entry", []):
                resource = entry.get("resource", {})
                if resource.get("resourceType") == "ValueSet":
                    self.value_sets.setdefault(resource["url"], resource)
                elif resource.get("resourceType") == "CodeSystem":
                    self.code_systems.setdefault(resource["url"], resource)
        self._expanded: dict[str, frozenset[str] | None] = {}

    def expand(self, url: str) -> frozenset[str] | None:
        """The codes of the value set at ``url`` (``|version`` ignored), or None if not enumerable here."""
        url = url.split("|", 1)[0]
        if url not in self._expanded:
            self._expanded[url] = None  # a value set that includes itself is not enumerable
            self._expanded[url] = self._compose(self.value_sets.get(url))
        return self._expanded[url]

    def _compose(self, value_set: dict[str, Any] | None) -> frozenset[str] | None:
        if value_set is None or "compose" not in value_set:
            return None
        codes: set[str] = set()
        for include in value_set["compose"].get("include", []):
            part = self._part(include)
            if part is None:
                return None
            codes |= part
        for exclude in value_set["compose"].get("exclude", []):
            part = self._part(exclude)
            if part is None:
                return None
            codes -= part
        return frozenset(codes)

    def _part(self, include: dict[str, Any]) -> set[str] | None:
        if include.get("filter"):
            return None
        codes: set[str] | None = None
        if "system" in include:
            if include.get("concept"):
                codes = {concept["code"] for concept in include["concept"]}
            else:
                codes = self._all_codes(include["system"])
                if codes is None:
                    return None
        for url in include.get("valueSet", []):
            other = self.expand(url)
            if other is None:
                return None
            codes = set(other) if codes is None else codes & other
        return codes

    def _all_codes(self, system: str) -> set[str] | None:
        code_system = self.code_systems.get(system)
        if code_system is None or code_system.get("content") != "complete":
            return None
        codes: set[str] = set()
        stack = list(code_system.get("concept", []))
        while stack:
            concept = stack.pop()
            codes.add(concept["code"])
            stack.extend(concept.get("concept", []))
        return codes


def _json_key(element: dict[str, Any], type_code: str) -> str:
    name = str(element["path"]).rsplit(".", 1)[1]
    if name.endswith("[x]"):
        return name[:-3] + type_code[0].upper() + type_code[1:]
    return name


def _required_paths(
    definition: dict[str, Any],
    types: dict[str, dict[str, Any]],
    terminology: _Terminology,
    depth: int,
) -> list[tuple[str, str]]:
    """(JSON path below the definition's root, value set URL) of every required ``code`` element."""
    root = definition["type"]
    found: list[tuple[str, str]] = []
    keys: dict[str, str] = {root: ""}  # element path -> JSON path below the root
    for element in definition["snapshot"]["element"]:
        path = element["path"]
        parent = path.rsplit(".", 1)[0] if "." in path else None
        if parent is None or parent not in keys:
            continue  # the root itself, or below a choice element (its children belong to each type)
        for element_type in element.get("type", []):
            code = element_type["code"]
            key = _json_key(element, code)
            json_path = f"{keys[parent]}.{key}".lstrip(".")
            binding = element.get("binding", {})
            if code == "code" and binding.get("strength") == "required" and binding.get("valueSet"):
                found.append((json_path, binding["valueSet"]))
            elif code in ("BackboneElement", "Element") and not path.endswith("[x]"):
                keys[path] = json_path
            elif code in types and code not in _NOT_FOLLOWED and depth > 0:
                inner = _required_paths(types[code], types, terminology, depth - 1)
                found += [(f"{json_path}.{sub}", url) for sub, url in inner]
    return found


def required_codes_module(directory: Path) -> str:
    """The text of :mod:`ehr_core.spec.required_codes`."""
    from fhir.resources.R4B import get_fhir_model_class

    resources = _definitions(_load(directory, "profiles-resources.json"), {"resource"})
    types = _definitions(_load(directory, "profiles-types.json"), {"complex-type"})
    terminology = _Terminology(_load(directory, "valuesets.json"), _load(directory, "v3-codesystems.json"))
    version = next(iter(resources.values())).get("fhirVersion", "?")

    elements: dict[str, list[tuple[str, str]]] = {}
    used: set[str] = set()
    not_enumerable: set[str] = set()
    for resource_type in sorted(resources):
        try:
            get_fhir_model_class(resource_type)
        except ValueError:
            continue  # an R4 type R4B removed: the server stores none (ehr_core/resources/types.py)
        rows = []
        for json_path, url in _required_paths(resources[resource_type], types, terminology, _DEPTH):
            if terminology.expand(url) is None:
                not_enumerable.add(url)
                continue
            rows.append((json_path, url))
            used.add(url)
        if rows:
            elements[resource_type] = rows

    lines = [
        "# ruff: noqa: E501 - one value set (or one element) per line",
        '"""Required bindings of ``code`` elements (R4 terminologies.html#required), generated; do not edit.',
        "",
        "Generated by ehr_core.spec.generate from profiles-resources.json, profiles-types.json, valuesets.json",
        f"and v3-codesystems.json of FHIR R4 {version} (``make spec``; tests/unit/test_spec_generated.py fails",
        "when this file differs). ``ELEMENTS``: per resource type, the JSON path of each ``code`` element with a",
        "required binding (repeating elements are walked item by item) and its value set. ``VALUE_SETS``: the",
        "codes of each (no R4 code of these value sets holds a space). Elements reached through a",
        "``contentReference`` (``Questionnaire.item.item``) are not listed. Required value sets these files",
        "cannot enumerate, not checked:",
        "",
        *(f"- {url}" for url in sorted(not_enumerable)),
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from types import MappingProxyType",
        "",
        '__all__ = ["ELEMENTS", "VALUE_SETS"]',
        "",
        "# One line per value set: ``url code code ...``.",
        '_VALUE_SETS = """',
    ]
    for url in sorted(used):
        lines.append(" ".join([url, *sorted(terminology.expand(url) or ())]))
    lines += ['"""', "", "# One line per element: ``ResourceType json.path value-set-url``.", '_ELEMENTS = """']
    for resource_type, rows in elements.items():
        lines += [f"{resource_type} {path} {url}" for path, url in rows]
    lines += ['"""', _TAIL]
    return "\n".join(lines)


_TAIL = """

def _elements(text: str) -> dict[str, tuple[tuple[str, str], ...]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for line in text.strip().splitlines():
        resource_type, path, url = line.split(" ")
        found.setdefault(resource_type, []).append((path, url))
    return {resource_type: tuple(rows) for resource_type, rows in found.items()}


#: The codes of each required value set, by its canonical URL (with ``|version`` as the binding names it).
VALUE_SETS = MappingProxyType(
    {url: frozenset(codes) for url, *codes in (line.split(" ") for line in _VALUE_SETS.strip().splitlines())}
)
#: Per resource type: (JSON path, value set URL) of each required ``code`` element.
ELEMENTS = MappingProxyType(_elements(_ELEMENTS))
"""
