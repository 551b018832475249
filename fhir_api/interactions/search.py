"""search-type: ``GET [base]/[type]?params`` and ``POST [base]/[type]/_search`` (R4 §3.1.0.9, §3.1.1).

The answer is a ``searchset`` Bundle: the page's matches (``search.mode = match``), the resources
``_include``/``_revinclude`` bring (``include``) and, when some parameters were not understood, an
the search answers 400 naming them (strict by default: a parameter dropped from the query returns
unfiltered results, which a clinician would take for filtered ones), or, under ``Prefer: handling=lenient``,
ignores them and says so in an OperationOutcome (``outcome``) entry, leaving them out of the ``self`` link
(R4 §3.1.1.2 "Handling errors"). Resources are the stored bytes (``orjson.Fragment``), reshaped only
when ``_summary`` or ``_elements`` ask for part of them. ``next``/``prev`` links carry a keyset cursor
(see :mod:`projections.search.engine`), so pages stay consistent while writes arrive.

Access: with auth on, the caller's :class:`~projections.access.Viewer` goes into the query, so
matches, ``total``, cursors and included resources hold only what the policy lets the caller see. With
``X-EHR-Break-Glass: <reason>`` the institution rule is lifted; when the page shows something only that made
visible, the response says ``X-EHR-Break-Glass: granted``, the grant is listed for review and the audit
entry carries purpose of use ``BTG``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue
from ehr_core.resources import json as fhir_json
from fhir_api.access import record_break_glass
from fhir_api.auth import caller_of
from fhir_api.errors import ApiError
from fhir_api.limits import clamp_count
from fhir_api.request import ServicesDep, base_url, media_type, require_type
from fhir_api.responses import FHIR_JSON
from fhir_api.services import Services
from projections.access import Viewer
from projections.db import Tx
from projections.resources import ResourceViews
from projections.search import Match, Page, SearchRequest, capability_search_params, parse_search
from projections.search.engine import run_search
from projections.search.subset import subset

__all__ = ["router", "search_bundle", "strict_handling"]

router = APIRouter()

DEFAULT_COUNT = 20
FORM = "application/x-www-form-urlencoded"


def strict_handling(request: Request) -> bool:
    """Strict unless ``Prefer: handling=lenient`` (R4 §3.1.1.2 leaves the default to the server)."""
    for part in request.headers.get("prefer", "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "handling":
            return value.strip().strip('"').lower() != "lenient"
    return True


def _link(base: str, resource_type: str, pairs: list[tuple[str, str]], cursor: str | None) -> str:
    params = [*pairs, ("_cursor", cursor)] if cursor else pairs
    query = urlencode(params)
    return f"{base}/{resource_type}" + (f"?{query}" if query else "")


def _resource(tx: Tx, match: Match, parsed: SearchRequest) -> Any | None:
    """The stored bytes of ``match`` (None if it vanished), reshaped for ``_summary``/``_elements``."""
    stored = ResourceViews.read(tx, match.resource_type, match.resource_id)
    if stored is None or stored.body is None:
        return None
    if parsed.summary in (None, "false") and parsed.elements is None:
        return orjson.Fragment(stored.body)
    part = subset(fhir_json.loads(stored.body), parsed.summary, parsed.elements)
    return orjson.Fragment(stored.body) if part is None else orjson.Fragment(fhir_json.dumps(part))


def _entries(tx: Tx, base: str, page: Page, parsed: SearchRequest) -> list[dict[str, Any]]:
    """The page's entries, read on the search's connection right after the page (a resource deleted in
    between is left out; one updated in between is served in its newer version)."""
    entries = []
    for mode, matches in (("match", page.matches), ("include", page.includes)):
        for match in matches:
            resource = _resource(tx, match, parsed)
            if resource is not None:
                entries.append(
                    {
                        "fullUrl": f"{base}/{match.resource_type}/{match.resource_id}",
                        "resource": resource,
                        "search": {"mode": mode},
                    }
                )
    return entries


def _outcome(parsed: SearchRequest, page: Page) -> dict[str, Any] | None:
    issues = [
        {
            "severity": "warning",
            "code": "not-supported",
            "diagnostics": f"unknown search parameter {name!r} for {parsed.resource_type} was ignored",
            "expression": [name],
        }
        for name in parsed.unknown
    ]
    if page.includes_truncated:
        issues.append({"severity": "warning", "code": "too-costly", "diagnostics": "included resources were cut short"})
    if not issues:
        return None
    return {"resource": {"resourceType": "OperationOutcome", "issue": issues}, "search": {"mode": "outcome"}}


def search_bundle(
    services: Services,
    resource_type: str,
    pairs: list[tuple[str, str]],
    base: str,
    strict: bool = False,
    viewer: Viewer | None = None,
) -> dict[str, Any]:
    """The searchset Bundle answering ``pairs`` (also usable for GET entries of a batch Bundle)."""
    return _search(services, resource_type, pairs, base, strict, viewer)[0]


def _search(
    services: Services,
    resource_type: str,
    pairs: list[tuple[str, str]],
    base: str,
    strict: bool,
    viewer: Viewer | None,
) -> tuple[dict[str, Any], Page]:
    require_type(resource_type)
    parsed = parse_search(resource_type, pairs, base)
    if strict and parsed.unknown:
        names = ", ".join(parsed.unknown)
        known = ", ".join(sorted(p["name"] for p in capability_search_params(resource_type)))
        message = (
            f"unknown or unsupported search parameter(s) for {resource_type}: {names}; supported: {known} "
            "(send Prefer: handling=lenient to have them ignored instead)"
        )
        raise InvalidResource([Issue("not-supported", message, parsed.unknown[0])])
    count = clamp_count(parsed.count, DEFAULT_COUNT, services.settings)  # EHR_MAX_COUNT
    with services.views.read() as tx:
        page = run_search(tx, services.views.dialect, parsed, base, count, viewer)
        entries = _entries(tx, base, page, parsed)
    applied = [(name, value) for name, value in parsed.applied if name != "_cursor"]
    links = [{"relation": "self", "url": _link(base, resource_type, applied, parsed.cursor)}]
    if page.next_cursor:
        links.append({"relation": "next", "url": _link(base, resource_type, applied, page.next_cursor)})
    if page.prev_cursor:
        links.append({"relation": "previous", "url": _link(base, resource_type, applied, page.prev_cursor)})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = links
    outcome = _outcome(parsed, page)
    if outcome is not None:
        entries.append(outcome)
    bundle["entry"] = entries
    return bundle, page


def _answer(services: Services, request: Request, resource_type: str, pairs: list[tuple[str, str]]) -> Response:
    caller = caller_of(request)
    reason = request.headers.get("x-ehr-break-glass", "").strip() or None
    viewer = caller.viewer(break_glass=reason is not None) if caller is not None else None
    bundle, page = _search(services, resource_type, pairs, base_url(request), strict_handling(request), viewer)
    if page.filtered:
        # For the audit entry: the answer was filtered by the access policy.
        request.state.ehr_access = "filtered"
    headers: dict[str, str] = {}
    if caller is not None and reason is not None and page.break_glass_used:
        with services.views.write() as tx:
            # The query may name the patient (name=, identifier=): the audit entry keeps it; the
            # review list, a plain view table, says only what kind of access it was.
            record_break_glass(tx, caller.claims, reason, f"search {resource_type}")
        request.state.ehr_break_glass = True
        headers["X-EHR-Break-Glass"] = "granted"
    return Response(orjson.dumps(bundle), media_type=FHIR_JSON, headers=headers)


@router.get("/{resource_type}", summary="search-type")
def search_type(resource_type: str, request: Request, services: ServicesDep) -> Response:
    return _answer(services, request, resource_type, list(request.query_params.multi_items()))


@router.post("/{resource_type}/_search", summary="search-type (POST)")
async def search_post(resource_type: str, request: Request, services: ServicesDep) -> Response:
    kind = media_type(request)
    if kind is not None and kind != FORM:
        raise ApiError("unsupported-media-type", f"POST _search takes {FORM}, not {kind}", code="not-supported")
    form = await request.form()
    pairs = list(request.query_params.multi_items())
    pairs += [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
    return await run_in_threadpool(_answer, services, request, resource_type, pairs)
