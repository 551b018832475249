"""FHIR search (R4 §3.1.1): the search index view and the queries over it.

- :class:`SearchIndex`: the view (one table per parameter type), kept by the ``resources`` projector in
  the same transaction as the current resources, so read-your-writes covers search too.
- :class:`FullTextIndex`: the words of each resource's narrative and content, for ``_text`` and
  ``_content`` (:mod:`projections.search.fulltext`); ``_list`` and ``_filter`` live in
  :mod:`projections.search.lists` and :mod:`projections.search.filter`.
- :func:`match`: the ids matching a parameter list — what conditional create/update/delete and
  conditional references in transaction Bundles ask (R4 §3.1.0.8, §3.1.0.4.3, §3.1.0.7.1); :func:`match_many`
  the identifier equalities among many such lists in one round trip (a bulk import's chunk).
- :func:`search`: one page of a searchset, with includes, total and page cursors.
- :func:`select_among`: which of some chosen resources match a search (``$export``'s ``_typeFilter``).
- :func:`capability_search_params`: the ``searchParam`` list of each type for the CapabilityStatement, and
  :func:`capability_system_search_params` the parameters for all resources (``rest.searchParam``).
"""

from __future__ import annotations

from typing import Any

from ehr_core.errors import InvalidResource, Issue
from projections.access import Viewer
from projections.db import Dialect, Tx
from projections.search.definitions import COMMON, SPECIAL, definition_url
from projections.search.engine import (
    Match,
    Page,
    identifier_probe,
    run_search,
    select_among,
    select_by_identifier,
    select_ids,
)
from projections.search.fulltext import FullTextIndex
from projections.search.index import SearchIndex
from projections.search.query import SearchRequest, parse_search
from projections.search.registry import declared
from projections.search.special import SPECIAL_PARAMETERS

# The special parameters register their parsers on import (projections/search/special.py).
from projections.search import filter as _filter, lists as _lists  # noqa: F401  isort: skip

__all__ = [
    "FullTextIndex",
    "Match",
    "Page",
    "SearchIndex",
    "SearchRequest",
    "capability_search_params",
    "capability_system_search_params",
    "match",
    "match_many",
    "parse_search",
    "search",
    "select_among",
]


def match(
    tx: Tx,
    resource_type: str,
    params: list[tuple[str, str]],
    limit: int = 2,
    viewer: Viewer | None = None,
    dialect: Dialect = "sqlite",
) -> list[str]:
    """Ids of current ``resource_type`` resources matching every parameter, at most ``limit``.

    ``params`` are the parsed query pairs of a conditional request (``[("identifier", "sys|1")]``).
    Unknown parameters and malformed values raise :class:`InvalidResource` (a 400): a condition
    must not be silently widened. Result parameters (``_count``, ``_sort``...) are ignored.

    With a ``viewer``, only resources it may read are candidates (DESIGN.md "Access": a conditional match
    considers only what the caller may read), so a match never discloses another institution's record.
    """
    request = parse_search(resource_type, params)
    if request.unknown:
        names = ", ".join(request.unknown)
        raise InvalidResource(
            [Issue("not-supported", f"unknown search parameter(s) for {resource_type}: {names}", request.unknown[0])]
        )
    if not request.filters:
        raise InvalidResource([Issue("invalid", f"a conditional {resource_type} request needs search criteria")])
    return select_ids(tx, request, None, limit, viewer, dialect)


def match_many(
    tx: Tx,
    queries: list[tuple[str, list[tuple[str, str]]]],
    limit: int = 2,
    viewer: Viewer | None = None,
    dialect: Dialect = "sqlite",
) -> list[list[str] | None]:
    """:func:`match` for each ``(resource_type, params)`` of ``queries`` that is one identifier equality
    (:func:`~projections.search.engine.identifier_probe`), all in one statement per 500; None for the others
    (asked alone with :func:`match`, which also refuses, with its error, what is no search)."""
    probes: list[tuple[str, str, str]] = []
    numbers: list[int] = []
    for number, (resource_type, params) in enumerate(queries):
        try:
            request = parse_search(resource_type, params)
        except InvalidResource:
            continue
        probe = None if request.unknown else identifier_probe(request)
        if probe is not None:
            probes.append(probe)
            numbers.append(number)
    found: list[list[str] | None] = [None] * len(queries)
    for number, ids in zip(numbers, select_by_identifier(tx, probes, limit, viewer, dialect), strict=True):
        found[number] = ids
    return found


def search(tx: Tx, dialect: Dialect, request: SearchRequest, base: str | None, count: int) -> Page:
    """One page of ``request`` (see :mod:`projections.search.engine`)."""
    return run_search(tx, dialect, request, base, count)


def capability_search_params(resource_type: str) -> list[dict[str, Any]]:
    """``CapabilityStatement.rest.resource.searchParam`` for ``resource_type`` (R4 §3.1.1.4): each parameter
    with its type and its ``SearchParameter.url`` (R4 capabilitystatement-definitions.html
    #CapabilityStatement.rest.resource.searchParam.definition: "SHALL be populated if the search parameter
    refers to a SearchParameter defined by the FHIR core specification"; a shared one, such as
    ``clinical-patient``, by its own url)."""
    common = {code for code, _kind, _expression in COMMON}
    return [
        {
            "name": code,
            "definition": definition_url("Resource" if code in common else resource_type, code),
            "type": kind,
        }
        for code, kind in sorted(declared(resource_type).items())
    ]


#: The parameters for all resources that R4 defines in prose only (no SearchParameter resource): where.
_UNDEFINED_SPECIAL = {
    "_list": "R4 search.html#list: the entries of a List (_list=[id]), or a functional list ($current-problems, "
    "$current-allergies, $current-medications)",
    "_filter": "R4 search_filter.html: a filter expression over the type's parameters",
    "_has": "R4 search.html#has: reverse chaining (_has:Type:reference:parameter), with every parameter of Type",
    "_type": "R4 http.html#search: the types a system search covers",
}


def capability_system_search_params() -> list[dict[str, Any]]:
    """``CapabilityStatement.rest.searchParam``: the parameters for all resources (R4 §3.1.1.5; the element's
    comment: "typically ... those that apply to all resources - tags, profiles, text search etc."), the
    common ones and the special ones this server implements, with their definition where R4 has one."""
    found = [
        {"name": code, "definition": definition_url("Resource", code), "type": kind}
        for code, kind, _expression in COMMON
    ]
    for code in sorted(set(SPECIAL_PARAMETERS) | {"_has", "_type"}):
        if code in SPECIAL:
            kind, url = SPECIAL[code]
            found.append({"name": code, "definition": url, "type": kind})
        else:
            found.append({"name": code, "type": "special", "documentation": _UNDEFINED_SPECIAL[code]})
    return found
