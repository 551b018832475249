"""The terminology operations' logic over CodeSystem, ValueSet and ConceptMap resources (R4
terminology-service.html), whatever holds them: the spec's tables or the resources users stored.

Pure functions of the resources a :class:`Resolver` finds by canonical url; no SQL here (the store,
:mod:`projections.terminology.store`, finds them). Errors are :mod:`ehr_core.errors` data:

- an unknown code system or value set named by the request is ``NotFound`` (404): the operation's subject
  does not exist (R4 operations.html: the target of an operation that does not exist);
- a value set that exists but cannot be expanded here (it draws on a code system this server does not hold,
  or a filter it does not implement) is ``Unprocessable`` (422): the request is well formed, the server
  cannot honour it; for the large external terminologies (SNOMED CT, LOINC, RxNorm...) the issue code is
  ``too-costly`` (R4 valueset-operation-expand.html: "the server can return an error ... too-costly" when
  an expansion is unbounded);
- a code that is not in a value set is no error of ``$validate-code``: it is its answer (``result`` false).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ehr_core.errors import InvalidResource, Issue, NotFound, Unprocessable

__all__ = [
    "MAX_EXPANSION",
    "CodeSystemIndex",
    "Concept",
    "Expansion",
    "Resolver",
    "Term",
    "expand",
    "expansion_terms",
    "holds_codes",
    "lookup_parameters",
    "subsumption",
    "translate",
    "validate_code",
]

#: A value set larger than this is not expanded (too-costly): the answer would be megabytes, and a client
#: that wants codes of a set that size searches with ``filter`` or validates one code at a time.
MAX_EXPANSION = 10_000
#: Nested ``valueSet`` imports deeper than this are taken as a cycle.
_MAX_DEPTH = 16

#: The code systems too large (or licensed) to expand whole here: an include of the system without a concept
#: list can only be answered by their own terminology servers (terminologies-systems.html).
EXTERNAL_SYSTEMS = frozenset(
    {
        "http://snomed.info/sct",
        "http://loinc.org",
        "http://www.nlm.nih.gov/research/umls/rxnorm",
        "http://unitsofmeasure.org",
        "http://hl7.org/fhir/sid/icd-10",
        "http://hl7.org/fhir/sid/icd-10-cm",
        "http://hl7.org/fhir/sid/icd-9-cm",
        "http://www.ama-assn.org/go/cpt",
        "http://hl7.org/fhir/sid/ndc",
        "http://hl7.org/fhir/sid/cvx",
        "urn:ietf:bcp:47",
        "urn:ietf:bcp:13",
        "urn:iso:std:iso:3166",
        "urn:iso:std:iso:4217",
        "http://www.whocc.no/atc",
    }
)


#: Finds a resource by type and canonical url (and version, when given); None when nothing has it.
Resolver = Callable[[str, str, str | None], dict[str, Any] | None]


@dataclass
class Concept:
    code: str
    display: str | None
    designation: list[dict[str, Any]]
    properties: list[dict[str, Any]]
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)

    def property_values(self, name: str) -> list[str]:
        values = []
        for item in self.properties:
            if item.get("code") != name:
                continue
            for key, value in item.items():
                if key.startswith("value"):
                    values.append(("true" if value else "false") if isinstance(value, bool) else str(value))
        return values


def holds_codes(code_system: dict[str, Any] | None) -> bool:
    """Whether a CodeSystem lists its codes: the spec describes SNOMED CT, LOINC and others by CodeSystems
    of content ``not-present``, which name the system and hold none of it (R4 codesystem-content-mode)."""
    return code_system is not None and code_system.get("content") != "not-present"


class CodeSystemIndex:
    """A CodeSystem's concepts flattened, with the hierarchy R4 codesystem.html defines: nesting
    (``concept.concept``), and the ``parent``/``child`` properties (codesystem-concept-properties)."""

    def __init__(self, resource: dict[str, Any]) -> None:
        self.resource = resource
        self.url: str = resource.get("url", "")
        self.version: str | None = resource.get("version")
        self.name: str = resource.get("name") or resource.get("title") or self.url
        self.content: str = resource.get("content", "complete")
        self.case_sensitive: bool = resource.get("caseSensitive", True) is not False
        self.concepts: dict[str, Concept] = {}
        self._folded: dict[str, str] = {}
        self._add(resource.get("concept") or [], None)
        for concept in self.concepts.values():
            for parent in concept.property_values("parent") + concept.property_values("subsumedBy"):
                self._link(parent, concept.code)
            for child in concept.property_values("child"):
                self._link(concept.code, child)

    def _add(self, concepts: list[dict[str, Any]], parent: str | None) -> None:
        for item in concepts:
            code = item.get("code")
            if not isinstance(code, str):
                continue
            if code not in self.concepts:
                self.concepts[code] = Concept(
                    code, item.get("display"), list(item.get("designation") or []), list(item.get("property") or [])
                )
                self._folded.setdefault(code.lower(), code)
            if parent is not None:
                self._link(parent, code)
            self._add(item.get("concept") or [], code)

    def _link(self, parent: str, child: str) -> None:
        if parent not in self.concepts or child not in self.concepts or parent == child:
            return
        if parent not in self.concepts[child].parents:
            self.concepts[child].parents.append(parent)
        if child not in self.concepts[parent].children:
            self.concepts[parent].children.append(child)

    def get(self, code: str) -> Concept | None:
        found = self.concepts.get(code)
        if found is None and not self.case_sensitive:
            canonical = self._folded.get(code.lower())
            found = self.concepts.get(canonical) if canonical else None
        return found

    def descendants(self, code: str) -> list[str]:
        """Every concept below ``code``, depth first in the system's order (each once)."""
        found: list[str] = []
        seen = {code}
        stack = list(reversed(self.concepts[code].children)) if code in self.concepts else []
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            found.append(current)
            stack.extend(reversed(self.concepts[current].children))
        return found

    def ancestors(self, code: str) -> set[str]:
        found: set[str] = set()
        stack = list(self.concepts[code].parents) if code in self.concepts else []
        while stack:
            current = stack.pop()
            if current not in found:
                found.add(current)
                stack.extend(self.concepts[current].parents)
        return found


@dataclass(frozen=True)
class Term:
    """One entry of an expansion (``ValueSet.expansion.contains``)."""

    system: str
    code: str
    display: str | None
    version: str | None = None

    def contains(self) -> dict[str, Any]:
        item: dict[str, Any] = {"system": self.system}
        if self.version:
            item["version"] = self.version
        item["code"] = self.code
        if self.display:
            item["display"] = self.display
        return item


@dataclass
class Expansion:
    value_set: dict[str, Any]
    terms: list[Term]


class _Context:
    """One operation's view of the code systems: each resolved and indexed once."""

    def __init__(self, resolve: Resolver) -> None:
        self.resolve = resolve
        self._systems: dict[tuple[str, str | None], CodeSystemIndex | None] = {}

    def code_system(self, url: str, version: str | None = None) -> CodeSystemIndex | None:
        key = (url, version)
        if key not in self._systems:
            found = self.resolve("CodeSystem", url, version)
            self._systems[key] = CodeSystemIndex(found) if found is not None else None
        return self._systems[key]

    def enumerable(self, url: str, version: str | None, what: str) -> CodeSystemIndex:
        """The code system an include draws every code (or a filter's) from: it must be held, and complete."""
        index = self.code_system(url, version)
        # The spec describes SNOMED CT and LOINC by CodeSystems of content ``not-present``: no codes to list.
        if index is None or index.content == "not-present":
            if url in EXTERNAL_SYSTEMS:
                raise Unprocessable(
                    [Issue("too-costly", f"{what} draws on all of {url}, an external terminology this server does "
                                         "not expand; list the concepts, or ask that system's terminology server")]
                )  # fmt: skip
            if index is None:
                raise Unprocessable([Issue("not-found", f"{what}: the code system {url} is not known to this server")])
        if index.content in ("not-present", "supplement"):
            raise Unprocessable(
                [Issue("not-supported", f"{what}: the CodeSystem {url} has content {index.content}: no codes to list")]
            )
        return index


def _filter_codes(index: CodeSystemIndex, item: dict[str, Any], what: str) -> list[str]:
    """The codes of ``index`` a compose filter (R4 valueset.html ``compose.include.filter``) selects."""
    prop, op, value = item.get("property"), item.get("op"), item.get("value")
    if not isinstance(prop, str) or not isinstance(op, str) or not isinstance(value, str):
        raise InvalidResource([Issue("invalid", f"{what}: a filter needs property, op and value")])
    codes = list(index.concepts)
    if prop == "concept" and op in ("is-a", "descendent-of", "is-not-a", "generalizes"):
        root = index.get(value)
        if root is None:
            return codes if op == "is-not-a" else []
        below = index.descendants(root.code)
        if op == "is-a":
            return [root.code, *below]
        if op == "descendent-of":
            return below
        if op == "generalizes":
            above = index.ancestors(root.code)
            return [code for code in codes if code in above or code == root.code]
        excluded = {root.code, *below}
        return [code for code in codes if code not in excluded]
    if prop in ("concept", "code") and op in ("in", "not-in"):
        listed = {part.strip() for part in value.split(",")}
        return [code for code in codes if (code in listed) == (op == "in")]
    if op == "regex":
        try:
            pattern = re.compile(value)
        except re.error as error:
            raise InvalidResource([Issue("invalid", f"{what}: regex {value!r} is not valid: {error}")]) from error
        if prop in ("concept", "code"):
            return [code for code in codes if pattern.fullmatch(code)]
        if prop == "display":
            return [code for code in codes if pattern.fullmatch(index.concepts[code].display or "")]
        return [code for code in codes if any(pattern.fullmatch(v) for v in index.concepts[code].property_values(prop))]
    if op == "=":
        if prop in ("concept", "code"):
            return [code for code in codes if code == value]
        if prop == "display":
            return [code for code in codes if index.concepts[code].display == value]
        return [code for code in codes if value in index.concepts[code].property_values(prop)]
    if op == "exists":
        wanted = value == "true"
        return [code for code in codes if bool(index.concepts[code].property_values(prop)) == wanted]
    raise Unprocessable([Issue("not-supported", f"{what}: the filter {prop} {op} is not supported here")])


def _include(context: _Context, item: dict[str, Any], depth: int, what: str) -> list[Term]:
    """The codes one ``compose.include`` (or ``exclude``) names, in the order it names them."""
    system = item.get("system")
    version = item.get("version")
    terms: list[Term] | None = None
    if isinstance(system, str):
        concepts = item.get("concept") or []
        filters = item.get("filter") or []
        if concepts:
            index = context.code_system(system, version)
            terms = []
            for concept in concepts:
                code = concept.get("code")
                if not isinstance(code, str):
                    continue
                known = index.get(code) if index is not None else None
                display = concept.get("display") or (known.display if known is not None else None)
                terms.append(Term(system, known.code if known else code, display, version))
        else:
            index = context.enumerable(system, version, what)
            selected: list[str] | None = None
            for item_filter in filters:
                chosen = _filter_codes(index, item_filter, what)
                if selected is None:
                    selected = chosen
                else:
                    keep = set(chosen)
                    selected = [code for code in selected if code in keep]
            codes = list(index.concepts) if selected is None else selected
            terms = [Term(system, code, index.concepts[code].display, version) for code in codes]
    for imported in item.get("valueSet") or []:
        nested = _expand_url(context, imported, depth + 1)
        if terms is None:
            terms = nested
        else:
            keys = {(term.system, term.code) for term in nested}
            terms = [term for term in terms if (term.system, term.code) in keys]
    return terms or []


def _expand_url(context: _Context, canonical: str, depth: int) -> list[Term]:
    url, _, version = canonical.partition("|")
    value_set = context.resolve("ValueSet", url, version or None)
    if value_set is None:
        raise Unprocessable([Issue("not-found", f"the value set {canonical} it imports is not known to this server")])
    return _terms(context, value_set, depth)


def _terms(context: _Context, value_set: dict[str, Any], depth: int) -> list[Term]:
    if depth > _MAX_DEPTH:
        raise Unprocessable([Issue("processing", "value set imports nest too deep (a cycle?)")])
    what = f"ValueSet {value_set.get('url') or value_set.get('id') or ''}".strip()
    compose = value_set.get("compose")
    if not isinstance(compose, dict):
        expansion = value_set.get("expansion")
        if isinstance(expansion, dict):
            return list(_flatten(expansion.get("contains") or []))
        raise Unprocessable([Issue("not-supported", f"{what} has neither compose nor expansion")])
    found: dict[tuple[str, str], Term] = {}
    for item in compose.get("include") or []:
        for term in _include(context, item, depth, what):
            found.setdefault((term.system, term.code), term)
            if len(found) > MAX_EXPANSION:
                raise Unprocessable([Issue("too-costly", f"{what} has over {MAX_EXPANSION} codes: not expanded")])
    for item in compose.get("exclude") or []:
        for term in _include(context, item, depth, what):
            found.pop((term.system, term.code), None)
    return list(found.values())


def expansion_terms(resolve: Resolver, value_set: dict[str, Any]) -> list[Term]:
    """Every code of ``value_set`` (its compose, or the expansion it carries), at most :data:`MAX_EXPANSION`."""
    terms = _terms(_Context(resolve), value_set, 0)
    if len(terms) > MAX_EXPANSION:  # an expansion the value set carries is not capped by _terms
        what = f"ValueSet {value_set.get('url') or value_set.get('id') or ''}".strip()
        raise Unprocessable([Issue("too-costly", f"{what} has over {MAX_EXPANSION} codes: not expanded")])
    return terms


def _flatten(contains: Iterable[dict[str, Any]]) -> Iterable[Term]:
    for item in contains:
        if isinstance(item.get("code"), str) and isinstance(item.get("system"), str) and not item.get("abstract"):
            yield Term(item["system"], item["code"], item.get("display"), item.get("version"))
        yield from _flatten(item.get("contains") or [])


def _matches(term: Term, text: str) -> bool:
    """The ``filter`` parameter (R4 valueset-operation-expand.html): every word of it begins a word of the
    display, or it begins the code. Case-insensitive, as a user types it."""
    words = text.lower().split()
    display_words = re.split(r"[^\w]+", (term.display or "").lower())
    if term.code.lower().startswith(text.lower().strip()):
        return True
    return all(any(candidate.startswith(word) for candidate in display_words) for word in words)


def expand(
    resolve: Resolver,
    value_set: dict[str, Any],
    text: str | None = None,
    offset: int = 0,
    count: int | None = None,
    identifier: str = "",
    timestamp: str = "",
) -> dict[str, Any]:
    """The value set with its ``expansion`` (R4 valueset-operation-expand.html), one page of it."""
    terms = _terms(_Context(resolve), value_set, 0)
    if text:
        terms = [term for term in terms if _matches(term, text)]
    page = terms[offset:] if count is None else terms[offset : offset + count]
    parameters: list[dict[str, Any]] = []
    if text:
        parameters.append({"name": "filter", "valueString": text})
    if offset:
        parameters.append({"name": "offset", "valueInteger": offset})
    if count is not None:
        parameters.append({"name": "count", "valueInteger": count})
    expansion: dict[str, Any] = {"identifier": identifier, "timestamp": timestamp, "total": len(terms)}
    if offset or count is not None:
        expansion["offset"] = offset
    if parameters:
        expansion["parameter"] = parameters
    if page:
        expansion["contains"] = [term.contains() for term in page]
    answer = {key: value for key, value in value_set.items() if key not in ("text", "expansion", "compose")}
    answer["resourceType"] = "ValueSet"
    answer["expansion"] = expansion
    return answer


def validate_code(
    resolve: Resolver, value_set: dict[str, Any], system: str | None, code: str, display: str | None
) -> dict[str, Any]:
    """R4 valueset-operation-validate-code.html: ``result``, a ``message`` when false, the ``display``."""
    terms = _terms(_Context(resolve), value_set, 0)
    name = value_set.get("url") or f"ValueSet/{value_set.get('id')}"
    found = next((t for t in terms if t.code == code and (system is None or t.system == system)), None)
    parameters: list[dict[str, Any]] = []
    if found is None:
        coded = f"{system}|{code}" if system else code
        message = f"the code {coded} is not in the value set {name}"
        return {"resourceType": "Parameters", "parameter": [
            {"name": "result", "valueBoolean": False}, {"name": "message", "valueString": message}]}  # fmt: skip
    result = True
    if display is not None and found.display is not None and display.strip().lower() != found.display.lower():
        result = False
        parameters.append(
            {"name": "message", "valueString": f"the display of {found.system}|{code} is {found.display!r}, "
                                               f"not {display!r}"}
        )  # fmt: skip
    parameters.insert(0, {"name": "result", "valueBoolean": result})
    if found.display:
        parameters.append({"name": "display", "valueString": found.display})
    return {"resourceType": "Parameters", "parameter": parameters}


def lookup_parameters(index: CodeSystemIndex, code: str, wanted: list[str]) -> dict[str, Any]:
    """R4 codesystem-operation-lookup.html: name, version, display, designations and properties (with the
    hierarchy as ``parent`` and ``child``); ``wanted`` narrows the properties (empty: all)."""
    concept = index.get(code)
    if concept is None:
        raise NotFound([Issue("not-found", f"the code {code!r} is not in the code system {index.url}", "code")])
    parameters: list[dict[str, Any]] = [{"name": "name", "valueString": index.name}]
    if index.version:
        parameters.append({"name": "version", "valueString": index.version})
    parameters.append({"name": "display", "valueString": concept.display or concept.code})
    for designation in concept.designation:
        parts: list[dict[str, Any]] = []
        if designation.get("language"):
            parts.append({"name": "language", "valueCode": designation["language"]})
        if isinstance(designation.get("use"), dict):
            parts.append({"name": "use", "valueCoding": designation["use"]})
        parts.append({"name": "value", "valueString": designation.get("value", "")})
        parameters.append({"name": "designation", "part": parts})
    properties: list[tuple[str, dict[str, Any]]] = []
    for item in concept.properties:
        given = next(((k, v) for k, v in item.items() if k.startswith("value")), None)
        if isinstance(item.get("code"), str) and given is not None and item["code"] not in ("parent", "child"):
            properties.append((item["code"], {given[0]: given[1]}))
    properties += [("parent", {"valueCode": parent}) for parent in concept.parents]
    properties += [("child", {"valueCode": child}) for child in concept.children]
    for name, value in properties:
        if wanted and name not in wanted:
            continue
        parameters.append(
            {"name": "property", "part": [{"name": "code", "valueCode": name}, {"name": "value", **value}]}
        )
    return {"resourceType": "Parameters", "parameter": parameters}


def subsumption(index: CodeSystemIndex, code_a: str, code_b: str) -> str:
    """R4 codesystem-operation-subsumes.html: how A relates to B in the system's hierarchy."""
    a, b = index.get(code_a), index.get(code_b)
    for name, concept, given in (("codeA", a, code_a), ("codeB", b, code_b)):
        if concept is None:
            raise Unprocessable([Issue("not-found", f"{name} {given!r} is not in the code system {index.url}", name)])
    assert a is not None and b is not None
    if a.code == b.code:
        return "equivalent"
    if a.code in index.ancestors(b.code):
        return "subsumes"
    if b.code in index.ancestors(a.code):
        return "subsumed-by"
    return "not-subsumed"


#: ConceptMap equivalences that say the source does not map (R4 valueset-concept-map-equivalence).
_NOT_A_MATCH = frozenset({"unmatched", "disjoint"})


def translate(
    maps: Iterable[dict[str, Any]],
    system: str | None,
    code: str,
    target_system: str | None = None,
    reverse: bool = False,
) -> dict[str, Any]:
    """R4 conceptmap-operation-translate.html over ``maps``: ``result``, ``message`` and each ``match``."""
    matches: list[dict[str, Any]] = []
    for concept_map in maps:
        source = concept_map.get("url") or f"ConceptMap/{concept_map.get('id')}"
        for group in concept_map.get("group") or []:
            from_system, to_system = group.get("source"), group.get("target")
            if reverse:
                from_system, to_system = to_system, from_system
            if system is not None and from_system != system:
                continue
            if target_system is not None and to_system != target_system:
                continue
            for element in group.get("element") or []:
                for target in element.get("target") or []:
                    origin, mapped = (target, element) if reverse else (element, target)
                    if origin.get("code") != code or not isinstance(mapped.get("code"), str):
                        continue
                    equivalence = target.get("equivalence", "equivalent")
                    coding = {"system": to_system, "code": mapped["code"]}
                    if mapped.get("display"):
                        coding["display"] = mapped["display"]
                    matches.append(
                        {"name": "match", "part": [
                            {"name": "equivalence", "valueCode": equivalence},
                            {"name": "concept", "valueCoding": {k: v for k, v in coding.items() if v is not None}},
                            {"name": "source", "valueUri": source}]}
                    )  # fmt: skip
    result = any(m["part"][0]["valueCode"] not in _NOT_A_MATCH for m in matches)
    parameters: list[dict[str, Any]] = [{"name": "result", "valueBoolean": result}]
    if not result:
        coded = f"{system}|{code}" if system else code
        parameters.append({"name": "message", "valueString": f"no mapping of {coded} was found"})
    return {"resourceType": "Parameters", "parameter": parameters + matches}
