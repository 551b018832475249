"""Error-level invariants of R4 (conformance-rules.html#constraints), evaluated with fhirpathpy.

R4 §2.19.0.6: each ``constraint`` of an element definition is a FHIRPath expression that SHALL be true on
every instance of that element; one of severity ``error`` that is false makes the resource invalid
(``per-1``: a Period's start is not after its end; ``obs-6``: dataAbsentReason only when there is no value).
The R4B models check cardinality and types only, so these are evaluated here, from the generated table
:mod:`ehr_core.spec.invariants`.

Cost (bench/validation.py: no more than the checks of before the invariants): each expression is parsed
once (lazily, per element path, then cached) and translated into a Python predicate where that is
mechanical (:mod:`ehr_core.resources.fhirpath_predicates`; fhirpathpy evaluates the others), and only the
invariants of elements present in the resource are evaluated: the resource is walked along the generated
JSON paths of its type, so an Observation without ``referenceRange`` never evaluates ``obs-3``. The
universal ones are placed by a walk of the whole resource: ext-1 on every extension, ele-1 on every object
that holds nothing but an ``id``; the resource's JSON text (written once by orjson, for the character
check) says whether it holds any, or extensions only, so most resources are not walked at all. Contained
resources are checked against their own type's rules (%resource is the contained one, %rootResource its
container, R4 fhirpath.html#variables); the resources inside a stored Bundle are not (each entry of a
transaction is validated as its own write). :data:`GUARDS` spare the evaluations of the rules on nearly
every element where the expression's first terms already make it true.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import suppress
from functools import cache
from typing import Any, TypeAlias

from fhirpathpy import apply_parsed_path
from fhirpathpy.engine.nodes import FP_Type, ResourceNode
from fhirpathpy.models import models as fhirpath_models
from fhirpathpy.parser import parse

from ehr_core.errors import Issue
from ehr_core.resources.fhirpath_predicates import Predicate, compile_predicate
from ehr_core.resources.json import dumps
from ehr_core.spec.invariants import INVARIANTS, PLACES

__all__ = ["ADDED_FUNCTIONS", "GUARDS", "invariant_issues"]

# fhirpathpy ships py.typed but leaves these unannotated (see ehr_core/resources/fhirpath_patch.py).
_apply_parsed_path: Any = apply_parsed_path
_parse: Any = parse
_create_node: Any = ResourceNode.create_node
_R4_MODEL: dict[str, Any] = fhirpath_models["r4"]


def _has_value(inputs: list[Any]) -> list[bool]:
    """FHIRPath ``hasValue()`` (R4 fhirpath.html#functions, FHIR's additions): a single primitive with a value.

    fhirpathpy 2.2.4 lacks it; per-1, age-1 and cnt-3 use it. An element holding only extensions reaches
    here as a dict (its ``_start`` object), which has no value.
    """
    if len(inputs) != 1:
        return [False]
    item = inputs[0]
    return [isinstance(item, (str, int, float, bool, FP_Type))]


#: Functions the FHIR profile of FHIRPath adds that fhirpathpy lacks, implemented here. The generator
#: (ehr_core/spec/invariants_generator.py) counts them as evaluable.
ADDED_FUNCTIONS: dict[str, Callable[[list[Any]], list[bool]]] = {"hasValue": _has_value}
_OPTIONS = {
    "userInvocationTable": {name: {"fn": function} for name, function in ADDED_FUNCTIONS.items()},
    "traceFn": lambda label, value: None,  # ref-1 and dom-3 call trace(): fhirpathpy would print
}

#: Resources that are no DomainResource (R4 §2.20 resource list): dom-* do not apply to them.
_NOT_DOMAIN = frozenset({"Bundle", "Binary", "Parameters"})
_EXTENSION_KEYS = ("extension", "modifierExtension")
#: Which universal places (ext-1's, ele-1's) a resource may hold: see _universal_places.
_ALL, _EXTENSIONS, _NONE = "all", "extensions", "none"

# key, human, parsed expression, uses %resource, its Python translation if any
_Compiled: TypeAlias = tuple[str, str, Any, bool, Predicate | None]


def _has_value_key(node: dict[str, Any]) -> bool:
    # A loop rather than any() over a generator, which costs about twice as much, on every Extension.
    for key in node:  # noqa: SIM110
        if key.startswith(("value", "_value")):
            return True
    return False


def _has_contained(node: dict[str, Any]) -> bool:
    return bool(node.get("contained"))


_PLAIN_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _unreferenced_contained(node: dict[str, Any], text: bytes | None) -> bool:
    """Whether some contained resource's ``#id`` is no string anywhere in the resource (else dom-3 holds:
    each is referred to). A cheap over-approximation: fhirpathpy then judges, with the spec's expression.

    ``text``, the resource as JSON when known, answers without a walk for ids of the FHIR id characters
    (R4 §2.24.0.1): a string value ``"#id"`` is there exactly when the text has it after a ``:``, ``[`` or
    ``,`` (a quote after anything else is inside a string); keys are element names, never ``#id``."""
    contained = node.get("contained")
    if not contained:
        return False
    ids = [item.get("id") for item in contained if isinstance(item, dict)]
    if text is not None and all(isinstance(i, str) and _PLAIN_ID.fullmatch(i) for i in ids):
        quoted = [f'"#{i}"'.encode() for i in ids]
        return not all(b":" + q in text or b"[" + q in text or b"," + q in text for q in quoted)
    wanted = {f"#{i}" for i in ids}
    stack: list[Any] = [{k: v for k, v in node.items() if k != "contained"}, *contained]
    while stack and wanted:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            wanted.discard(item)
    return bool(wanted)


#: Invariants true by their first terms unless the element holds what the guard looks for: each key's
#: expression starts with the prefix given (tests/unit/test_invariants.py checks it against the spec), so
#: a guard that answers False means the expression is true without evaluating it. These are the rules on
#: nearly every resource, Extension, Period and Reference, where evaluating everywhere was most of the cost
#: (bench/validation.py); dom-3 walks ``%resource.descendants()`` once per contained resource.
GUARDS: dict[str, tuple[str, Callable[[dict[str, Any], bytes | None], bool]]] = {
    "dom-2": ("contained.contained.empty()", lambda node, _text: _has_contained(node)),
    "dom-3": ("contained.where(", _unreferenced_contained),
    "dom-4": (
        "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()",
        lambda node, _text: _has_contained(node),
    ),
    "dom-5": ("contained.meta.security.empty()", lambda node, _text: _has_contained(node)),
    # True when exactly one of ``extension`` and ``value[x]`` is there: evaluated when both or neither are
    # (a primitive's ``_valueX`` counted as a value, so a doubtful case goes to fhirpathpy).
    "ext-1": (
        "extension.exists() != value.exists()",
        lambda node, _text: ("extension" in node) == _has_value_key(node),
    ),
    # A Condition without abatement[x] (nearly every one a consultation records) holds con-4 by its first
    # term; with one (a primitive's ``_abatementX`` counted too) fhirpathpy judges the clinicalStatus.
    "con-4": (
        "abatement.empty() or ",
        lambda node, _text: any(key.startswith(("abatement", "_abatement")) for key in node),
    ),
    # Spelled out whole: true without a verificationStatus or without a clinicalStatus; with both it is evaluated.
    "con-5": (
        "verificationStatus.coding.where(system='http://terminology.hl7.org/CodeSystem/condition-ver-status' and "
        "code='entered-in-error').empty() or clinicalStatus.empty()",
        lambda node, _text: "verificationStatus" in node and "clinicalStatus" in node,
    ),
    # Spelled out whole: true when there is no value or no component, the other Observations evaluate it.
    "obs-7": (
        "value.empty() or component.code.where(coding.intersect(%resource.code.coding).exists()).empty()",
        lambda node, _text: "component" in node and any(key.startswith(("value", "_value")) for key in node),
    ),
    "per-1": (
        "start.hasValue().not() or end.hasValue().not() or ",
        lambda node, _text: "start" in node and "end" in node,
    ),
    "ref-1": (
        "reference.startsWith('#').not() or ",
        lambda node, _text: str(node.get("reference", "")).startswith("#"),
    ),
}


@cache
def _by_element() -> dict[str, list[tuple[str, str, str]]]:
    found: dict[str, list[tuple[str, str, str]]] = {}
    for path, key, human, expression in INVARIANTS:
        found.setdefault(path, []).append((key, human, expression))
    return found


@cache
def _compiled(element_path: str) -> tuple[_Compiled, ...]:
    """The invariants attached to ``element_path``, each expression parsed once and translated into Python
    where it can be (:mod:`ehr_core.resources.fhirpath_predicates`)."""
    compiled = []
    for key, human, expression in _by_element().get(element_path, ()):
        tree = _parse(expression)
        uses_variables = "%resource" in expression or "%rootResource" in expression
        compiled.append((key, human, tree, uses_variables, compile_predicate(expression, tree, element_path)))
    return tuple(compiled)


@cache
def _checks(element_path: str) -> tuple[tuple[str, str, Any, bool, Predicate | None, Any], ...]:
    """:func:`_compiled` with each invariant's guard, if any (:data:`GUARDS`)."""
    return tuple(
        (*compiled, GUARDS[compiled[0]][1] if compiled[0] in GUARDS else None) for compiled in _compiled(element_path)
    )


_Tree: TypeAlias = dict[str, Any]  # JSON key -> subtree; "" -> the element paths at this node


@cache
def _tree(resource_type: str) -> _Tree:
    tree: _Tree = {}
    for json_path, element_path in PLACES.get(resource_type, ()):
        node = tree
        for key in json_path.split("."):
            node = node.setdefault(key, {})
        node.setdefault("", []).append(element_path)
    return tree


def invariant_issues(
    resource: dict[str, Any], resource_type: str, limit: int = 20, text: bytes | None = None
) -> list[Issue]:
    """An issue for each error-level invariant that ``resource`` breaks (at most ``limit``); ``text``: the
    resource as JSON (:func:`ehr_core.resources.json.dumps`), if the caller has it already."""
    issues: list[Issue] = []
    if text is None:
        with suppress(TypeError, ValueError):  # what orjson cannot write: the walks below do without the text
            text = dumps(resource)
    universal = _universal_places(resource, text)
    for node, element_path, where, context in _places(resource, resource_type, resource_type, resource, universal):
        for key, human, ast, uses_variables, predicate, guard in _checks(element_path):
            if guard is not None and not guard(node, text if node is resource else None):
                continue
            variables = context if uses_variables else {}
            holds = predicate(node, variables) if predicate is not None else None
            if not holds if holds is not None else _broken(node, element_path, ast, variables):
                issues.append(Issue("invariant", f"Constraint failed: {key}: {human}", _written(where)))
                if len(issues) >= limit:
                    return issues
    return issues


# element, element path, FHIRPath (a string, or its parts: see _written), variables
_Place: TypeAlias = tuple[Any, str, Any, dict[str, Any]]


def _places(
    resource: dict[str, Any], resource_type: str, where: Any, root: dict[str, Any], universal: str = _ALL
) -> Iterator[_Place]:
    """(element, its element path, its FHIRPath, %resource and %rootResource) for every element carrying
    invariants. FHIRPath's %resource is the resource the element is in, %rootResource its container when
    contained (R4 fhirpath.html#variables). ``universal``: which of the places of ext-1 and ele-1 the
    resource may hold (see :func:`_universal_places`). FHIRPaths are kept as parts (see :func:`_written`)."""
    variables = {"resource": resource, "rootResource": root}
    yield resource, resource_type, where, variables
    if resource_type not in _NOT_DOMAIN:
        yield resource, "DomainResource", where, variables
    stack: list[tuple[Any, _Tree, Any]] = [(resource, _tree(resource_type), where)]
    while stack:
        node, branch, path = stack.pop()
        for key, below in branch.items():
            if not key or key not in node:
                continue
            value = node[key]
            if isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, dict):
                        at = ((path, key), index)
                        for element_path in below.get("", ()):
                            yield item, element_path, at, variables
                        stack.append((item, below, at))
            elif isinstance(value, dict):
                for element_path in below.get("", ()):
                    yield value, element_path, (path, key), variables
                stack.append((value, below, (path, key)))
    if universal == _ALL:
        yield from _everywhere(resource, _written(where), variables)
    elif universal == _EXTENSIONS:
        yield from _extensions(resource, where, variables)
    for index, contained in enumerate(resource.get("contained") or ()):
        if isinstance(contained, dict) and isinstance(contained.get("resourceType"), str):
            # R4 references.html#contained: a contained resource is valid on its own terms.
            yield from _places(contained, contained["resourceType"], ((where, "contained"), index), root, universal)


# In the resource as JSON text (orjson's, compact: every key follows a ``{`` or a ``,``), what the places of
# ext-1 show (an ``extension`` or ``modifierExtension`` key) and what those of ele-1 show (an object with
# nothing or only an ``id``, a ``_field`` key). A string value that merely contains one of these costs a
# walk, never a missed place. (Searched with ``in``: a regular expression with these alternatives scans
# several times slower.)
_EXTENSION_MARK = b'xtension":'
_ELEMENT_MARKS = (b"{}", b'{"id":')
_COMPANION_MARKS = (b',"_', b'{"_')


def _universal_places(resource: dict[str, Any], text: bytes | None) -> str:
    """Which universal places ``resource`` may hold: any (:func:`_everywhere` walks it), Extensions only
    (:func:`_extensions`), or none. Its text, written in one call of native code, says so far faster than a
    walk; most resources hold no extension at all, and nearly none an element without a value."""
    if text is None:
        try:
            text = dumps(resource)
        except (TypeError, ValueError):
            return _ALL
    if _ELEMENT_MARKS[0] in text or _ELEMENT_MARKS[1] in text:
        return _ALL
    if b"_" in text and (_COMPANION_MARKS[0] in text or _COMPANION_MARKS[1] in text):
        return _ALL
    return _EXTENSIONS if _EXTENSION_MARK in text else _NONE


def _extensions(node: dict[str, Any], where: str, variables: dict[str, Any]) -> Iterator[_Place]:
    """The places of :func:`_everywhere` in a resource without ele-1 places: the Extensions. Their paths
    are kept as parts, written out only for an issue (:func:`_written`)."""
    stack: list[tuple[dict[str, Any], Any]] = [(node, where)]
    push, pop = stack.append, stack.pop
    while stack:
        item, path = pop()
        for key, value in item.items():
            if isinstance(value, str):
                continue  # most values: one test
            if isinstance(value, list):
                if key == "contained":
                    continue  # walked as its own resource
                at = (path, key)
                extensions = key in _EXTENSION_KEYS
                for index, child in enumerate(value):
                    if isinstance(child, dict):
                        if extensions:
                            yield child, "Extension", (at, index), variables
                        push((child, (at, index)))
            elif isinstance(value, dict):
                push((value, (path, key)))


def _written(path: Any) -> str:
    """The FHIRPath of a path, written out or kept as parts: ``((("Patient", "extension"), 0), "url")``."""
    parts: list[str] = []
    while not isinstance(path, str):
        path, last = path
        parts.append(f"[{last}]" if isinstance(last, int) else f".{last}")
    return path + "".join(reversed(parts))


def _nothing_but_id(node: dict[str, Any]) -> bool:
    return not node or (len(node) == 1 and "id" in node)


def _everywhere(node: Any, where: str, variables: dict[str, Any]) -> Iterator[_Place]:
    """The universal places: every Extension (the items of any ``extension``/``modifierExtension`` key,
    for ext-1), and every object that holds nothing but an ``id`` (for ele-1, "All FHIR elements must have
    a @value or children": an object with any other key passes it, so only these are worth evaluating)."""
    stack: list[tuple[Any, str]] = [(node, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                # Most values are primitives: their path is never written out.
                if key == "contained" or not isinstance(value, (dict, list)):
                    continue  # contained: walked as its own resource
                at = f"{path}.{key}"
                if key[:1] == "_":
                    # A primitive's id and extensions (R4 json.html#primitive): the element's @value is the
                    # sibling without the underscore, so an ``{"id": ...}`` here has a value when that does.
                    yield from _primitive_companions(value, item.get(key[1:]), at, variables, stack)
                    continue
                if isinstance(value, dict) and _nothing_but_id(value):
                    yield value, "Element", at, variables
                if key in _EXTENSION_KEYS and isinstance(value, list):
                    for index, extension in enumerate(value):
                        if isinstance(extension, dict):
                            yield extension, "Extension", f"{at}[{index}]", variables
                stack.append((value, at))
        else:
            for index, value in enumerate(item):
                if isinstance(value, dict):
                    if _nothing_but_id(value):
                        yield value, "Element", f"{path}[{index}]", variables
                    stack.append((value, f"{path}[{index}]"))


def _primitive_companions(
    value: Any, primitive: Any, at: str, variables: dict[str, Any], stack: list[tuple[Any, str]]
) -> Iterator[_Place]:
    """ele-1 places among a primitive's ``_field`` companions: only those whose primitive has no value."""
    if isinstance(value, dict):
        if primitive is None and _nothing_but_id(value):
            yield value, "Element", at, variables
        stack.append((value, at))
    elif isinstance(value, list):
        values = primitive if isinstance(primitive, list) else []
        for index, companion in enumerate(value):
            if not isinstance(companion, dict):
                continue
            valued = index < len(values) and values[index] is not None
            if not valued and _nothing_but_id(companion):
                yield companion, "Element", f"{at}[{index}]", variables
            stack.append((companion, f"{at}[{index}]"))


def _broken(node: Any, element_path: str, ast: Any, variables: dict[str, Any]) -> bool:
    """Whether the invariant evaluates to false on ``node``; an empty result or an engine failure is no
    evidence of a broken rule, so neither refuses the resource."""
    try:
        result = _apply_parsed_path(_create_node(node, element_path), ast, variables, _R4_MODEL, _OPTIONS)
    except Exception:  # fhirpathpy raises plain exceptions on data it does not expect
        return False
    return bool(result == [False])
