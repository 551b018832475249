"""Validation against a profile: the constraints a StructureDefinition adds to its base (R4 profiling.html).

A resource claims profiles in ``meta.profile`` (R4 §2.11.0.3 resource.html#Meta; profiling.html#profile-use);
``$validate?profile=`` names one. The constraints of the profile are those of its snapshot; the snapshot is
its base's element definitions with the differential applied (profiling.html#snapshot). This server checks
the base (the core StructureDefinition) with the R4B models, the required bindings and the invariants on
every write, so what remains to check for a profile is what its differential (or its snapshot, when the
StructureDefinition carries one) says beyond the base:

- cardinality (``min``/``max``) per occurrence of the parent element (profiling.html#cardinality);
- ``fixed[x]`` (exactly equal) and ``pattern[x]`` (the instance holds at least the pattern's values,
  elementdefinition-definitions.html#ElementDefinition.pattern_x_);
- required bindings (terminologies.html#required), checked against the terminology store by ``member``;
- slices (profiling.html#slicing) told apart by ``value`` or ``pattern`` discriminators: a slice's members are
  the repetitions whose discriminator path holds the slice's fixed or pattern value; the slice's ``min``
  counts them, its child elements apply to them only;
- the profile's own constraints (``constraint.expression``, FHIRPath, on each occurrence of the element, R4
  §2.19.0.6), errors refusing, warnings reported;
- ``mustSupport`` elements absent from the instance, reported as information (profiling.html#mustsupport:
  what "support" means is left to the implementation guide; $validate tells, a write ignores it).

Named rules: FHIRPath has no CURP check; a profile's expression may call ``curpValid()`` (the check digit of
DOMAIN.md "CURP", :func:`ehr_core.identity.identifiers.is_valid_curp`) through fhirpathpy's user functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from fhirpathpy import evaluate as fhirpath_evaluate

from ehr_core.errors import Issue
from ehr_core.identity.identifiers import is_valid_curp
from ehr_core.resources.invariants import ADDED_FUNCTIONS

__all__ = ["Member", "element_definitions", "matches_pattern", "profile_issues"]

#: ``member(value_set_url, system, code)``: whether the code is in the value set; None when the value set is
#: unknown to the terminology store (then the binding cannot be checked: a warning).
Member = Callable[[str, str | None, str], bool | None]

_evaluate: Any = fhirpath_evaluate


def _curp_valid(inputs: list[Any]) -> list[bool]:
    """``curpValid()``: a single string that is a CURP with the right check digit (DOMAIN.md "CURP")."""
    return [len(inputs) == 1 and isinstance(inputs[0], str) and is_valid_curp(inputs[0])]


_OPTIONS = {
    "userInvocationTable": {
        **{name: {"fn": function} for name, function in ADDED_FUNCTIONS.items()},
        "curpValid": {"fn": _curp_valid},
    },
    "traceFn": lambda label, value: None,
}

_Node = tuple[Any, str]  # (JSON value, FHIRPath of it in the resource)


def element_definitions(structure: dict[str, Any]) -> list[dict[str, Any]]:
    """The elements to check: the snapshot's when the StructureDefinition has one, else the differential's
    (the base's own rules are the core validation's)."""
    for part in ("snapshot", "differential"):
        elements = (structure.get(part) or {}).get("element")
        if isinstance(elements, list) and elements:
            return [e for e in elements if isinstance(e, dict) and isinstance(e.get("path"), str)]
    return []


def _segments(element: dict[str, Any]) -> list[str]:
    """``Patient.identifier:curp.system`` as segments; an element without ``id`` is addressed by its path."""
    ident = element.get("id") if isinstance(element.get("id"), str) else element["path"]
    segments: list[str] = str(ident).split(".")
    slice_name = element.get("sliceName")
    if "id" not in element and isinstance(slice_name, str):
        segments[-1] += f":{slice_name}"
    return segments


def _children(node: _Node, name: str) -> Iterator[_Node]:
    """The values of ``name`` in ``node`` (``value[x]`` matches ``valueQuantity``...), repetitions flattened."""
    value, where = node
    if not isinstance(value, dict):
        return
    if name.endswith("[x]"):
        prefix = name[:-3]
        keys = [k for k in value if k.startswith(prefix) and k[len(prefix) : len(prefix) + 1].isupper()]
    else:
        keys = [name] if name in value else []
    for key in keys:
        child = value[key]
        if isinstance(child, list):
            yield from ((item, f"{where}.{key}[{index}]") for index, item in enumerate(child))
        else:
            yield child, f"{where}.{key}"


def _fixed_or_pattern(element: dict[str, Any]) -> tuple[str, str, Any] | None:
    """("fixed" | "pattern", the element name ``fixedUri``..., the value) of an element, if it has one."""
    for key, value in element.items():
        for kind in ("fixed", "pattern"):
            if key.startswith(kind) and key[len(kind) : len(kind) + 1].isupper():
                return kind, key, value
    return None


def matches_pattern(value: Any, pattern: Any) -> bool:
    """The instance holds at least the pattern's values: objects key by key, each pattern repetition matched
    by some repetition of the instance, primitives equal (R4 ElementDefinition.pattern[x])."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and matches_pattern(value[k], p) for k, p in pattern.items())
    if isinstance(pattern, list):
        items = value if isinstance(value, list) else [value]
        return all(any(matches_pattern(item, p) for item in items) for p in pattern)
    return bool(value == pattern)


class _Profile:
    """A StructureDefinition's elements, indexed by id, with the slices' membership tests."""

    def __init__(self, structure: dict[str, Any]) -> None:
        self.elements = element_definitions(structure)
        self.by_id = {".".join(_segments(e)): e for e in self.elements}

    def in_slice(self, sliced_id: str, slice_id: str, item: Any) -> bool:
        """Whether ``item`` (a repetition of the element ``sliced_id``) belongs to the slice ``slice_id``:
        each discriminator of the slicing holds the slice's value (type value/pattern)."""
        slicing = (self.by_id.get(sliced_id) or {}).get("slicing") or {}
        discriminators = [d for d in slicing.get("discriminator") or [] if isinstance(d, dict)]
        slice_element = self.by_id.get(slice_id) or {}
        if not discriminators:
            own = _fixed_or_pattern(slice_element)
            return own is not None and matches_pattern(item, own[2])
        for discriminator in discriminators:
            path = str(discriminator.get("path") or "$this")
            wanted = self._discriminator_value(slice_id, slice_element, path)
            if wanted is None:
                return False
            found = [item] if path == "$this" else _at(item, path)
            if not any(matches_pattern(value, wanted) for value in found):
                return False
        return True

    def _discriminator_value(self, slice_id: str, slice_element: dict[str, Any], path: str) -> Any:
        if path == "$this":
            own = _fixed_or_pattern(slice_element)
            return None if own is None else own[2]
        child = self.by_id.get(f"{slice_id}.{path}")
        if child is not None and (found := _fixed_or_pattern(child)) is not None:
            return found[2]
        own = _fixed_or_pattern(slice_element)  # patternIdentifier {system: ...} on the slice itself
        if own is not None and isinstance(own[2], dict):
            value: Any = own[2]
            for name in path.split("."):
                value = value.get(name) if isinstance(value, dict) else None
            return value
        return None

    def select(self, root: _Node, segments: list[str]) -> list[_Node]:
        """The occurrences in the resource of the element with these id segments (the first is the type)."""
        nodes = [root]
        done = [segments[0]]
        for segment in segments[1:]:
            name, _, slice_name = segment.partition(":")
            sliced_id = ".".join([*done, name])
            done.append(segment)
            found = [child for node in nodes for child in _children(node, name)]
            if slice_name:
                slice_id = ".".join(done)
                found = [child for child in found if self.in_slice(sliced_id, slice_id, child[0])]
            nodes = found
        return nodes


def _at(item: Any, path: str) -> list[Any]:
    values = [item]
    for name in path.split("."):
        values = [child for value in values for child, _ in _children((value, ""), name)]
    return values


def profile_issues(resource: dict[str, Any], structure: dict[str, Any], member: Member, limit: int = 50) -> list[Issue]:
    """Every way ``resource`` falls short of the profile ``structure`` (errors, warnings, information)."""
    resource_type = resource.get("resourceType")
    url = structure.get("url", f"StructureDefinition/{structure.get('id')}")
    if structure.get("type") != resource_type:
        message = f"the profile {url} constrains {structure.get('type')}, not {resource_type}"
        return [Issue("invalid", message, str(resource_type))]
    profile = _Profile(structure)
    root: _Node = (resource, str(resource_type))
    issues: list[Issue] = []
    for element in profile.elements:
        segments = _segments(element)
        if len(segments) < 2:
            issues += _constraints(element, [root], resource, url)
            continue
        parents = profile.select(root, segments[:-1])
        label = ".".join(segments)
        occurrences: list[_Node] = []
        name, _, slice_name = segments[-1].partition(":")
        sliced_id = ".".join([*segments[:-1], name])
        for parent in parents:
            here = list(_children(parent, name))
            if slice_name:
                here = [child for child in here if profile.in_slice(sliced_id, label, child[0])]
            occurrences += here
            issues += _cardinality(element, here, parent, label, url)
        if element.get("mustSupport") is True and not occurrences and parents:
            message = f"{label} is must-support in {url} and absent"
            issues.append(Issue("informational", message, label, severity="information"))
        for value, where in occurrences:
            issues += _value_issues(element, value, where, label, url, member)
        issues += _constraints(element, occurrences, resource, url)
        if sum(i.severity == "error" for i in issues) >= limit:
            break
    return issues


def _cardinality(element: dict[str, Any], here: list[_Node], parent: _Node, label: str, url: str) -> list[Issue]:
    count = len(here)
    minimum = element.get("min")
    maximum = element.get("max")
    issues = []
    if isinstance(minimum, int) and count < minimum:
        message = f"{label}: at least {minimum} required by {url}, found {count}"
        issues.append(Issue("required", message, f"{parent[1]}.{label.rsplit('.', 1)[-1].split(':')[0]}"))
    if isinstance(maximum, str) and maximum.isdigit() and count > int(maximum):
        message = f"{label}: at most {maximum} allowed by {url}, found {count}"
        issues.append(Issue("structure", message, here[int(maximum)][1]))  # the first one too many
    return issues


def _value_issues(element: dict[str, Any], value: Any, where: str, label: str, url: str, member: Member) -> list[Issue]:
    issues: list[Issue] = []
    wanted = _fixed_or_pattern(element)
    if wanted is not None:
        kind, key, expected = wanted
        ok = value == expected if kind == "fixed" else matches_pattern(value, expected)
        if not ok:
            message = f"{label} must {'be' if kind == 'fixed' else 'match'} {key} {expected!r} ({url})"
            issues.append(Issue("value", message, where))
    binding = element.get("binding") or {}
    value_set = binding.get("valueSet")
    if binding.get("strength") == "required" and isinstance(value_set, str):
        issues += _binding_issues(value, where, label, value_set, member)
    return issues


def _codings(value: Any) -> list[tuple[str | None, str]] | None:
    """(system, code) pairs of a code, Coding or CodeableConcept; None for another type."""
    if isinstance(value, str):
        return [(None, value)]
    if not isinstance(value, dict):
        return None
    if "coding" in value or "text" in value:
        codings = [c for c in value.get("coding") or [] if isinstance(c, dict)]
        return [(c.get("system"), c["code"]) for c in codings if isinstance(c.get("code"), str)]
    if isinstance(value.get("code"), str):
        return [(value.get("system"), value["code"])]
    return None


def _binding_issues(value: Any, where: str, label: str, value_set: str, member: Member) -> list[Issue]:
    codings = _codings(value)
    if codings is None:
        return []
    if not codings:
        return [Issue("code-invalid", f"{label} has no code from the required value set {value_set}", where)]
    answers = [member(value_set, system, code) for system, code in codings]
    if any(answer is True for answer in answers):
        return []
    if all(answer is None for answer in answers):
        message = f"{label}: the value set {value_set} is not known here, its required binding is not checked"
        return [Issue("not-found", message, where, severity="warning")]
    shown = ", ".join(f"{s}|{c}" if s else c for s, c in codings)
    return [Issue("code-invalid", f"{label}: {shown} is not in the required value set {value_set}", where)]


@lru_cache(maxsize=512)
def _parsed_ok(expression: str) -> bool:
    try:
        _evaluate({}, expression, {}, None, _OPTIONS)
    except Exception:  # a profile's expression this engine cannot parse is skipped, not a 500
        return False
    return True


def _constraints(element: dict[str, Any], occurrences: list[_Node], resource: dict[str, Any], url: str) -> list[Issue]:
    issues: list[Issue] = []
    for constraint in element.get("constraint") or []:
        expression = constraint.get("expression") if isinstance(constraint, dict) else None
        if not isinstance(expression, str) or constraint.get("source", url) != url:
            continue  # a snapshot repeats the base's own invariants (their source): the core validation's
        severity = "error" if constraint.get("severity", "error") == "error" else "warning"
        for value, where in occurrences:
            if _holds(value, expression, resource):
                continue
            human = constraint.get("human") or expression
            message = f"{constraint.get('key', 'constraint')}: {human} ({url})"
            issues.append(Issue("invariant", message, where, severity=severity))
    return issues


def _holds(value: Any, expression: str, resource: dict[str, Any]) -> bool:
    """Whether the expression is true on the value (an empty result is no violation, like the invariants);
    an expression the engine cannot evaluate is no violation either."""
    if not _parsed_ok(expression):
        return True
    try:
        result = _evaluate(value, expression, {"resource": resource, "rootResource": resource}, None, _OPTIONS)
    except Exception:  # see _parsed_ok
        return True
    return not (result and all(item is False for item in result))
