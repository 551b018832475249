"""``_typeFilter`` of ``$export`` (Bulk Data Access IG 2.0 "Query Parameters", "Experimental Query
Parameters"): each value is one or more comma-separated FHIR search queries ``Type?params`` (a comma or
other reserved character inside a query is percent-encoded there, so a value's own ``,`` that ORs search
values arrives as ``%2C``). Each query is a search of this server's engine: parsed as a search is, and
any parameter it cannot apply, a result parameter (``_sort``, ``_include``...: a filter selects, it does
not shape), a malformed value or an unknown type is a 400 naming ``_typeFilter`` — an export filtered by
less than asked would hand out more of a record than requested. Several queries for one type are ORed;
a type without a query is exported whole.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from ehr_core.errors import InvalidResource, Issue
from ehr_core.resources.types import is_supported
from projections.access import Viewer
from projections.db import Dialect, Tx
from projections.search import SearchRequest, parse_search, select_among
from projections.search.query import IGNORED, RESULT_PARAMETERS

__all__ = ["parse_type_filters"]

_NAME = "_typeFilter"


def _refuse(message: str) -> InvalidResource:
    return InvalidResource([Issue("invalid", f"{_NAME}: {message}", _NAME)])


def parse_type_filters(
    values: list[str], types: list[str] | None, tx: Tx, viewer: Viewer | None, dialect: Dialect
) -> dict[str, list[SearchRequest]]:
    """The searches of ``values`` by type, each checked against the index (``tx``) as a search would be."""
    found: dict[str, list[SearchRequest]] = {}
    for value in values:
        for query in value.split(","):
            resource_type, mark, text = query.strip().partition("?")
            if not mark or not resource_type:
                raise _refuse(f"{query!r} is not a search Type?parameters")
            if not is_supported(resource_type):
                raise _refuse(f"unknown resource type {resource_type!r} in {query!r}")
            if types is not None and resource_type not in types:
                raise _refuse(f"{query!r} filters {resource_type}, which _type leaves out of the export")
            pairs = parse_qsl(text, keep_blank_values=True)
            for name, _ in pairs:
                if name.partition(":")[0] in RESULT_PARAMETERS or name in IGNORED:
                    raise _refuse(f"{name} in {query!r} is not a filter")
            try:
                search = parse_search(resource_type, pairs)
                if search.unknown:
                    raise _refuse(f"unknown or unsupported parameter(s) {', '.join(search.unknown)} in {query!r}")
                # Built once now, so a value only the index can refuse is a 400 here, not a failed job.
                select_among(tx, search, ["-"], viewer, dialect)
            except InvalidResource as error:
                if error.issues and error.issues[0].expression == _NAME:
                    raise
                detail = "; ".join(issue.diagnostics for issue in error.issues)
                raise _refuse(f"{query!r}: {detail}") from None
            found.setdefault(resource_type, []).append(search)
    return found
