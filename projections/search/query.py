"""A search request, parsed: filters (AND of ORs), chains, and the result parameters (R4 §3.1.1).

- Repeating a parameter ANDs it; commas inside one value OR (R4 §3.1.1.4 "Composite ..." / §3.1.1.3).
- ``name:modifier`` (§3.1.1.5), chains ``subject:Patient.name`` (§3.1.1.4.12), reverse chains
  ``_has:Observation:patient:code`` (§3.1.1.4.13).
- Result parameters (§3.1.1.6 and following): ``_sort``, ``_count``, ``_include``, ``_revinclude``,
  ``_summary``, ``_elements``, ``_total``, plus this server's page cursor ``_cursor``.

Unknown parameters are collected in :attr:`SearchRequest.unknown` (the caller reports or rejects
them); an unknown modifier or a malformed value raises :class:`~ehr_core.errors.InvalidResource`
naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ehr_core.numbers import parse_int
from ehr_core.resources.types import is_supported
from projections.search.registry import SearchParameter, parameter, parameters
from projections.search.special import SPECIAL_PARAMETERS, SpecialFilter
from projections.search.types import SEARCH_TYPES
from projections.search.types.base import ValueFilter, invalid, parse_values, unescape
from projections.search.types.token import TokenValue

__all__ = [
    "ChainFilter",
    "Filter",
    "HasFilter",
    "Include",
    "MissingFilter",
    "SameValueFilter",
    "SearchRequest",
    "SortKey",
    "ValueFilter",
    "merge_same_value",
    "parameter_filter",
    "parse_search",
]


#: Result parameters understood but with nothing to do (R4 §3.1.1.6: formats are negotiated elsewhere).
IGNORED = frozenset({"_format", "_pretty"})
RESULT_PARAMETERS = frozenset(
    {"_sort", "_count", "_include", "_revinclude", "_summary", "_elements", "_total", "_cursor"}
)
SUMMARY_VALUES = frozenset({"true", "false", "text", "data", "count"})
TOTAL_VALUES = frozenset({"none", "estimate", "accurate"})
MAX_CHAIN = 3


@dataclass(frozen=True)
class MissingFilter:
    param: SearchParameter
    missing: bool


@dataclass(frozen=True)
class ChainFilter:
    """``param[:Type].inner``: references of ``param`` to a resource of ``target_types`` matching ``inner``."""

    param: SearchParameter
    target_types: tuple[str, ...]
    #: One inner filter per target type (the chained parameter is looked up on each).
    inner: tuple[tuple[str, Filter], ...]


@dataclass(frozen=True)
class HasFilter:
    """``_has:Type:reference:inner``: resources that a ``Type`` matching ``inner`` refers to."""

    source_type: str
    reference: SearchParameter
    inner: Filter
    #: The type searched (the one the references must point to).
    target_type: str


@dataclass(frozen=True)
class SameValueFilter:
    """Several AND-ed date conditions on a parameter with at most one value per resource.

    ``date=ge2020-03-01&date=lt2020-03-08`` on ``Observation.effective`` (0..1): both conditions hold on
    the one value, so they are checked together on one index row — a bounded range instead of two
    half-open ones (the same answer, found with one index range).
    """

    param: SearchParameter
    values: tuple[Any, ...]


Filter = ValueFilter | MissingFilter | ChainFilter | HasFilter | SameValueFilter | SpecialFilter


def merge_same_value(filters: list[Filter]) -> list[Filter]:
    """Group AND-ed single-value date filters of a single-valued parameter into one :class:`SameValueFilter`."""
    groups: dict[str, list[ValueFilter]] = {}
    rest: list[Filter] = []
    for item in filters:
        if (
            isinstance(item, ValueFilter)
            and item.param.type == "date"
            and item.param.code != "_lastUpdated"
            and item.modifier is None
            and len(item.values) == 1
            and item.param.single_valued
        ):
            groups.setdefault(item.param.code, []).append(item)
        else:
            rest.append(item)
    for group in groups.values():
        rest.append(SameValueFilter(group[0].param, tuple(v for item in group for v in item.values)))
    return rest


@dataclass(frozen=True)
class SortKey:
    #: None for ``_id`` and ``_lastUpdated`` (kept on the resource's own row).
    param: SearchParameter
    descending: bool


@dataclass(frozen=True)
class Include:
    """``_include=Source:param[:Target]`` or ``_revinclude`` (``param`` None: ``*``, every reference)."""

    source_type: str
    param: str | None
    target_type: str | None
    iterate: bool


@dataclass
class SearchRequest:
    resource_type: str
    filters: list[Filter] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int | None = None
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] | None = None
    total: str | None = None
    cursor: str | None = None
    #: Parameters this server does not know, as sent (reported in an OperationOutcome, or rejected).
    unknown: list[str] = field(default_factory=list)
    #: The parameters that were applied, as (name, value) pairs, for the ``self`` link.
    applied: list[tuple[str, str]] = field(default_factory=list)
    #: Compartment search (R4 search.html §3.1.1.1 "Compartment search"): only resources in this patient's
    #: compartment, as the Patient CompartmentDefinition places them (``resource_compartments``).
    compartment: str | None = None


_invalid = invalid


class _Unknown(Exception):
    """A parameter (or chained parameter) this server does not support."""


def _value_filter(
    name: str, param: SearchParameter, modifier: str | None, raw: str, base: str | None
) -> ValueFilter | MissingFilter:
    kind = param.type
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise _invalid(name, f":missing takes true or false, got {raw!r}")
        return MissingFilter(param, raw == "true")
    if param.code == "_id":
        if modifier not in (None, "not"):
            raise _invalid(name, f"modifier :{modifier} is not supported on _id")
        return ValueFilter(param, modifier, parse_values(name, raw, unescape))
    search_type = SEARCH_TYPES.get(kind)
    if search_type is None:
        raise _invalid(name, f"parameter type {kind} is not supported")
    return search_type.parse(name, param, modifier, raw, base)


def _split_modifier(part: str) -> tuple[str, str | None]:
    code, _, modifier = part.partition(":")
    return code, (modifier or None)


def _filter(resource_type: str, name: str, raw: str, base: str | None, depth: int = 0) -> Filter:
    """One parameter (``name`` as sent, possibly chained) of a ``resource_type`` search."""
    if depth > MAX_CHAIN:
        raise _invalid(name, f"chains are limited to {MAX_CHAIN} levels")
    if name.startswith("_has:"):
        return _has(resource_type, name, raw, base, depth)
    head, dot, rest = name.partition(".")
    code, modifier = _split_modifier(head)
    param = parameter(resource_type, code)
    if param is None:
        raise _Unknown(name)
    if dot:
        return _chain(resource_type, name, param, modifier, rest, raw, base, depth)
    if modifier is not None and not SEARCH_TYPES[param.type].accepts(param, modifier):
        raise _invalid(name, f"modifier :{modifier} is not supported on a {param.type} parameter")
    return _value_filter(name, param, modifier, raw, base)


def _chain(
    resource_type: str,
    name: str,
    param: SearchParameter,
    modifier: str | None,
    rest: str,
    raw: str,
    base: str | None,
    depth: int,
) -> ChainFilter:
    if param.type != "reference":
        raise _invalid(name, f"only reference parameters can be chained; {param.code} is a {param.type}")
    if modifier is not None:
        if not is_supported(modifier):
            raise _invalid(name, f"{modifier!r} is not a resource type")
        candidates: tuple[str, ...] = (modifier,)
    else:
        candidates = tuple(t for t in param.targets if t != "Resource")
    chained_code = _split_modifier(rest.partition(".")[0])[0]
    inner: list[tuple[str, Filter]] = []
    for target in candidates:
        if chained_code.startswith("_has") or parameter(target, chained_code) is not None:
            try:
                inner.append((target, _filter(target, rest, raw, base, depth + 1)))
            except _Unknown:
                continue
    if not inner:
        if modifier is None and "Resource" in param.targets:
            raise _invalid(name, f"{param.code} may refer to any type: name one, as in {param.code}:Patient.{rest}")
        raise _Unknown(name)
    return ChainFilter(param, tuple(target for target, _ in inner), tuple(inner))


def _has(resource_type: str, name: str, raw: str, base: str | None, depth: int) -> HasFilter:
    parts = name.split(":", 3)
    if len(parts) != 4 or not all(parts):
        raise _invalid(name, "reverse chains are written _has:Type:reference:parameter")
    _, source_type, reference_code, inner_name = parts
    if not is_supported(source_type):
        raise _invalid(name, f"{source_type!r} is not a resource type")
    reference = parameter(source_type, reference_code)
    if reference is None or reference.type != "reference":
        raise _invalid(name, f"{source_type} has no reference parameter {reference_code!r}")
    if resource_type not in reference.targets and "Resource" not in reference.targets:
        raise _invalid(name, f"{source_type}.{reference_code} does not refer to {resource_type}")
    try:
        inner = _filter(source_type, inner_name, raw, base, depth + 1)
    except _Unknown:
        raise _invalid(name, f"{source_type} has no search parameter {inner_name!r}") from None
    return HasFilter(source_type, reference, inner, resource_type)


def _sort(resource_type: str, raw: str) -> list[SortKey]:
    keys = []
    for item in raw.split(","):
        item = item.strip()
        descending = item.startswith("-")
        code = item[1:] if descending else item
        param = parameter(resource_type, code)
        if param is None:
            raise _invalid("_sort", f"{resource_type} has no search parameter {code!r} to sort by")
        if param.type not in SEARCH_TYPES or param.type == "composite":
            raise _invalid("_sort", f"cannot sort by {code}")
        keys.append(SortKey(param, descending))
    return keys


def _include(name: str, raw: str, resource_type: str, iterate: bool, reverse: bool) -> Include:
    parts = raw.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        if raw == "*" and not reverse:
            return Include(resource_type, None, None, iterate)
        raise _invalid(name, f"write {name}=Type:parameter[:TargetType], got {raw!r}")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if not is_supported(source):
        raise _invalid(name, f"{source!r} is not a resource type")
    if target is not None and not is_supported(target):
        raise _invalid(name, f"{target!r} is not a resource type")
    if code != "*":
        param = parameter(source, code)
        if param is None or param.type != "reference":
            raise _invalid(name, f"{source} has no reference parameter {code!r}")
    elif reverse:
        raise _invalid(name, "_revinclude needs a named reference parameter")
    if not iterate and not reverse and source != resource_type:
        raise _invalid(name, f"{raw} does not start from {resource_type} (add :iterate to follow included resources)")
    return Include(source, None if code == "*" else code, target, iterate)


def _count(raw: str) -> int:
    count = parse_int(raw)
    if count is None:
        raise _invalid("_count", f"_count must be a non-negative integer, got {raw!r}")
    return count


def parse_search(resource_type: str, pairs: list[tuple[str, str]], base: str | None = None) -> SearchRequest:
    """Parse ``pairs`` (the query string or form, in order) of a search on ``resource_type``."""
    parameters(resource_type)  # fails early for a type without a model
    request = SearchRequest(resource_type)
    for name, raw in pairs:
        if name in IGNORED:
            continue
        bare, _, suffix = name.partition(":")
        if bare in RESULT_PARAMETERS:
            _result(request, name, bare, suffix, raw)
            request.applied.append((name, raw))
            continue
        special = SPECIAL_PARAMETERS.get(bare)
        if special is not None:  # _text, _content, _list, _filter (projections/search/special.py)
            if suffix:
                raise _invalid(name, f"{bare} takes no modifier")
            request.filters.append(special(resource_type, raw, base))
            request.applied.append((name, raw))
            continue
        try:
            request.filters.append(_filter(resource_type, name, raw, base))
        except _Unknown:
            request.unknown.append(name)
            continue
        request.applied.append((name, raw))
    return request


def parameter_filter(resource_type: str, name: str, raw: str, base: str | None = None) -> Filter | None:
    """One parameter as :func:`parse_search` reads it (``name`` possibly chained or with a modifier),
    None when ``resource_type`` has no such parameter (for ``_filter``, which names parameters too)."""
    try:
        return _filter(resource_type, name, raw, base)
    except _Unknown:
        return None


def _result(request: SearchRequest, name: str, bare: str, suffix: str, raw: str) -> None:
    if bare in ("_include", "_revinclude"):
        if suffix not in ("", "iterate", "recurse"):
            raise _invalid(name, f"modifier :{suffix} is not supported (use :iterate)")
        include = _include(name, raw, request.resource_type, bool(suffix), bare == "_revinclude")
        (request.includes if bare == "_include" else request.revincludes).append(include)
        return
    if suffix:
        raise _invalid(name, f"{bare} takes no modifier")
    if bare == "_sort":
        request.sort = _sort(request.resource_type, raw)
    elif bare == "_count":
        request.count = _count(raw)
    elif bare == "_summary":
        if raw not in SUMMARY_VALUES:
            raise _invalid(name, f"_summary takes one of {', '.join(sorted(SUMMARY_VALUES))}")
        request.summary = raw
    elif bare == "_elements":
        request.elements = [item.strip() for item in raw.split(",") if item.strip()]
    elif bare == "_total":
        if raw not in TOTAL_VALUES:
            raise _invalid(name, f"_total takes one of {', '.join(sorted(TOTAL_VALUES))}")
        request.total = raw
    elif bare == "_cursor":
        request.cursor = raw


def token_any(value: TokenValue) -> bool:
    """True for a token that matches any code of a system (``system|``)."""
    return value.code is None
