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

from pathlib import Path
from typing import Any

from ehr_core.spec.sources import core_definitions, load

__all__ = ["required_codes_module"]

#: Data types whose elements are not followed: an Extension's value may be of any type (its binding is
#: the extension's own definition's), a Reference's identifier and a Meta's codings bind nothing required
#: that a resource's author chooses, and following them would only repeat paths.
_NOT_FOLLOWED = frozenset({"Extension", "Reference", "Meta", "Resource"})
#: The element types a required binding constrains here (R4 terminologies.html#strength).
_CODED = ("code", "Coding", "CodeableConcept")
#: How deep data types are followed inside each other (``Timing.repeat.boundsDuration.comparator``).
_DEPTH = 4


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
        self._expanded: dict[str, frozenset[tuple[str, str]] | None] = {}
        self._why: dict[str, str] = {}

    def expand(self, url: str) -> frozenset[str] | None:
        """The codes of the value set at ``url`` (``|version`` ignored), or None if not enumerable here."""
        pairs = self.expand_codings(url)
        return None if pairs is None else frozenset(code for _system, code in pairs)

    def expand_codings(self, url: str) -> frozenset[tuple[str, str]] | None:
        """The (system, code) pairs of the value set at ``url``, or None if not enumerable here."""
        url = url.split("|", 1)[0]
        if url not in self._expanded:
            self._expanded[url] = None  # a value set that includes itself is not enumerable
            self._why[url] = "it includes itself"
            self._expanded[url] = self._compose(url, self.value_sets.get(url))
        return self._expanded[url]

    def why_not(self, url: str) -> str:
        """Why the value set at ``url`` cannot be enumerated from these files."""
        return self._why.get(url.split("|", 1)[0], "")

    def _compose(self, url: str, value_set: dict[str, Any] | None) -> frozenset[tuple[str, str]] | None:
        if value_set is None or "compose" not in value_set:
            self._why[url] = "not defined in valuesets.json (or has no compose)"
            return None
        codes: set[tuple[str, str]] = set()
        for include in value_set["compose"].get("include", []):
            part = self._part(url, include)
            if part is None:
                return None
            codes |= part
        for exclude in value_set["compose"].get("exclude", []):
            part = self._part(url, exclude)
            if part is None:
                return None
            codes -= part
        return frozenset(codes)

    def _part(self, url: str, include: dict[str, Any]) -> set[tuple[str, str]] | None:
        if include.get("filter"):
            self._why[url] = f"it selects codes of {include.get('system')} by a filter"
            return None
        codes: set[tuple[str, str]] | None = None
        if "system" in include:
            system = include["system"]
            if include.get("concept"):
                codes = {(system, concept["code"]) for concept in include["concept"]}
            else:
                codes = self._all_codes(system)
                if codes is None:
                    self._why[url] = f"it includes all of {system}, a code system not complete in these files"
                    return None
        for other_url in include.get("valueSet", []):
            other = self.expand_codings(other_url)
            if other is None:
                self._why[url] = f"it includes {other_url}, which is not enumerable: {self.why_not(other_url)}"
                return None
            codes = set(other) if codes is None else codes & other
        return codes

    def _all_codes(self, system: str) -> set[tuple[str, str]] | None:
        code_system = self.code_systems.get(system)
        if code_system is None or code_system.get("content") != "complete":
            return None
        codes: set[tuple[str, str]] = set()
        stack = list(code_system.get("concept", []))
        while stack:
            concept = stack.pop()
            codes.add((system, concept["code"]))
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
) -> list[tuple[str, str, str]]:
    """(JSON path below the definition's root, value set URL, type) of every required ``code``, ``Coding``
    and ``CodeableConcept`` element."""
    root = definition["type"]
    found: list[tuple[str, str, str]] = []
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
            if code in _CODED and binding.get("strength") == "required" and binding.get("valueSet"):
                found.append((json_path, binding["valueSet"], code))
            elif code in ("BackboneElement", "Element") and not path.endswith("[x]"):
                keys[path] = json_path
            elif code in types and code not in _NOT_FOLLOWED and depth > 0:
                inner = _required_paths(types[code], types, terminology, depth - 1)
                found += [(f"{json_path}.{sub}", url, kind) for sub, url, kind in inner]
    return found


def required_codes_module(directory: Path) -> str:
    """The text of :mod:`ehr_core.spec.required_codes`."""
    from fhir.resources.R4B import get_fhir_model_class

    resources = core_definitions(load(directory, "profiles-resources.json"), {"resource"})
    types = core_definitions(load(directory, "profiles-types.json"), {"complex-type"})
    terminology = _Terminology(load(directory, "valuesets.json"), load(directory, "v3-codesystems.json"))
    version = next(iter(resources.values())).get("fhirVersion", "?")

    elements: dict[str, list[tuple[str, str]]] = {}
    coded: dict[str, list[tuple[str, str, str]]] = {}
    used: set[str] = set()
    used_codings: set[str] = set()
    not_enumerable: dict[str, str] = {}
    for resource_type in sorted(resources):
        try:
            get_fhir_model_class(resource_type)
        except ValueError:
            continue  # an R4 type R4B removed: the server stores none (ehr_core/resources/types.py)
        rows: list[tuple[str, str]] = []
        coded_rows: list[tuple[str, str, str]] = []
        for json_path, url, kind in _required_paths(resources[resource_type], types, terminology, _DEPTH):
            if terminology.expand(url) is None:
                not_enumerable[url] = terminology.why_not(url)
                continue
            if kind == "code":
                rows.append((json_path, url))
                used.add(url)
            else:
                coded_rows.append((json_path, url, kind))
                used_codings.add(url)
        if rows:
            elements[resource_type] = rows
        if coded_rows:
            coded[resource_type] = coded_rows

    lines = [
        "# ruff: noqa: E501 - one value set (or one element) per line",
        '"""Required bindings of ``code``, ``Coding`` and ``CodeableConcept`` elements, generated; do not edit.',
        "",
        "Generated by ehr_core.spec.generate from profiles-resources.json, profiles-types.json, valuesets.json",
        f"and v3-codesystems.json of FHIR R4 {version} (``make spec``; tests/unit/test_spec_generated.py fails",
        "when this file differs); R4 terminologies.html#required. ``ELEMENTS``: per resource type, the JSON",
        "path of each ``code`` element with a required binding (repeating elements are walked item by item)",
        "and its value set. ``VALUE_SETS``: the",
        "codes of each (no R4 code of these value sets holds a space). ``CODED``: per resource type, the JSON",
        "path of each ``Coding`` or ``CodeableConcept`` element with a required binding, its value set and its",
        "type. ``CODINGS``: the (system, code) pairs of those value sets. Elements reached through a",
        "``contentReference`` (``Questionnaire.item.item``) are not listed. Required value sets these files",
        "cannot enumerate (an external code system such as SNOMED CT, LOINC, BCP-13 or BCP-47, a filter, an",
        "incomplete code system), skipped, not checked, each with the reason:",
        "",
        *(f"- {url}: {reason}" for url, reason in sorted(not_enumerable.items())),
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from types import MappingProxyType",
        "",
        '__all__ = ["CODED", "CODINGS", "ELEMENTS", "VALUE_SETS"]',
        "",
        "# One line per value set: ``url code code ...``.",
        '_VALUE_SETS = """',
    ]
    for url in sorted(used):
        lines.append(" ".join([url, *sorted(terminology.expand(url) or ())]))
    lines += ['"""', "", "# One line per element: ``ResourceType json.path value-set-url``.", '_ELEMENTS = """']
    for resource_type, rows in elements.items():
        lines += [f"{resource_type} {path} {url}" for path, url in rows]
    lines += ['"""', "", "# One line per value set and system: ``url system code code ...``.", '_CODINGS = """']
    for url in sorted(used_codings):
        by_system: dict[str, list[str]] = {}
        for system, code in sorted(terminology.expand_codings(url) or ()):
            by_system.setdefault(system, []).append(code)
        lines += [" ".join([url, system, *codes]) for system, codes in by_system.items()]
    lines += ['"""', "", "# One line per element: ``ResourceType json.path value-set-url type``.", '_CODED = """']
    for resource_type, coded_rows in coded.items():
        lines += [f"{resource_type} {path} {url} {kind}" for path, url, kind in coded_rows]
    lines += ['"""', _TAIL]
    return "\n".join(lines)


_TAIL = """

def _elements(text: str) -> dict[str, tuple[tuple[str, str], ...]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for line in text.strip().splitlines():
        resource_type, path, url = line.split(" ")
        found.setdefault(resource_type, []).append((path, url))
    return {resource_type: tuple(rows) for resource_type, rows in found.items()}


def _coded(text: str) -> dict[str, tuple[tuple[str, str, str], ...]]:
    found: dict[str, list[tuple[str, str, str]]] = {}
    for line in text.strip().splitlines():
        resource_type, path, url, kind = line.split(" ")
        found.setdefault(resource_type, []).append((path, url, kind))
    return {resource_type: tuple(rows) for resource_type, rows in found.items()}


def _codings(text: str) -> dict[str, dict[str, frozenset[str]]]:
    found: dict[str, dict[str, frozenset[str]]] = {}
    for url, system, *codes in (line.split(" ") for line in text.strip().splitlines()):
        found.setdefault(url, {})[system] = frozenset(codes)
    return found


#: The codes of each required value set, by its canonical URL (with ``|version`` as the binding names it).
VALUE_SETS = MappingProxyType(
    {url: frozenset(codes) for url, *codes in (line.split(" ") for line in _VALUE_SETS.strip().splitlines())}
)
#: Per resource type: (JSON path, value set URL) of each required ``code`` element.
ELEMENTS = MappingProxyType(_elements(_ELEMENTS))
#: Per required ``Coding``/``CodeableConcept`` value set: its codes by code system.
CODINGS = MappingProxyType(_codings(_CODINGS))
#: Per resource type: (JSON path, value set URL, ``Coding`` or ``CodeableConcept``) of each such element.
CODED = MappingProxyType(_coded(_CODED))
"""
