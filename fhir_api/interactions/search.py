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
from fastapi.responses import Response

from ehr_core.compartment import compartment_types
from ehr_core.errors import InvalidResource, Issue, NotFound
from ehr_core.resources import json as fhir_json
from fhir_api.access import record_break_glass
from fhir_api.auth import caller_of
from fhir_api.disclosure import Disclosure, disclose
from fhir_api.errors import ApiError
from fhir_api.limits import clamp_count
from fhir_api.request import ServicesDep, base_url, media_type, require_type
from fhir_api.responses import FHIR_JSON
from fhir_api.services import Services
from fhir_api.threads import in_thread
from projections.access import Viewer
from projections.db import Tx
from projections.resources import ResourceViews, StoredResource
from projections.search import Page, SearchRequest, capability_search_params, parse_search
from projections.search.engine import indexed_types, run_search
from projections.search.subset import subset
from projections.search.types.token import TERMINOLOGY_MODIFIERS

__all__ = ["compartment_bundle", "router", "search_bundle", "search_system", "strict_handling", "system_bundle"]

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


def _link(base: str, path: str, pairs: list[tuple[str, str]], cursor: str | None) -> str:
    params = [*pairs, ("_cursor", cursor)] if cursor else pairs
    query = urlencode(params)
    return f"{base}/{path}".rstrip("/") + (f"?{query}" if query else "")


def _resource(stored: StoredResource | None, parsed: SearchRequest) -> Any | None:
    """The stored bytes of a match (None if it vanished), reshaped for ``_summary``/``_elements``."""
    if stored is None or stored.body is None:
        return None
    if parsed.summary in (None, "false") and parsed.elements is None:
        return orjson.Fragment(stored.body)
    part = subset(fhir_json.loads(stored.body), parsed.summary, parsed.elements)
    return orjson.Fragment(stored.body) if part is None else orjson.Fragment(fhir_json.dumps(part))


def _entries(
    tx: Tx, base: str, page: Page, parsed: SearchRequest, disclosure: Disclosure | None = None
) -> list[dict[str, Any]]:
    """The page's entries, read on the search's connection right after the page (a resource deleted in
    between is left out; one updated in between is served in its newer version), all in one statement per
    resource type. ``disclosure`` is told each resource served, for the audit entry."""
    pages = (("match", page.matches), ("include", page.includes))
    stored = ResourceViews.read_many(tx, [(m.resource_type, m.resource_id) for _, ms in pages for m in ms])
    reshaped = parsed.summary not in (None, "false") or parsed.elements is not None
    if disclosure is not None and reshaped:
        disclosure.whole = False  # only the answer's body names what a reshaped resource still shows
        disclosure = None
    entries = []
    for mode, matches in pages:
        for match in matches:
            found = stored.get((match.resource_type, match.resource_id))
            resource = _resource(found, parsed)
            if resource is not None:
                if disclosure is not None and found is not None:
                    disclosure.served(found)
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


#: Why a search ``_at`` is refused: R4 defines ``_at`` for history (http.html#history), and a search as of a
#: past moment would need every past version indexed (the index holds current versions, R4 §3.1.1), not
#: the current values answered as if they were the past's.
_AS_OF_SEARCH = (
    "_at (as of a past moment) is not supported on search, whose index holds current versions only: "
    "use [type]/[id]?_at= (read), [type]/_history?_at= or Patient/[id]/$everything?_at="
)


def _terminology_modifier(name: str) -> bool:
    """Whether ``name`` (a chain's last link, too) has a modifier the terminology store answers."""
    return ":" in name and name.rsplit(":", 1)[1] in TERMINOLOGY_MODIFIERS


def _search(
    services: Services,
    resource_type: str,
    pairs: list[tuple[str, str]],
    base: str,
    strict: bool,
    viewer: Viewer | None,
    compartment: str | None = None,
    count: int | None = None,
    disclosure: Disclosure | None = None,
) -> tuple[dict[str, Any], Page]:
    require_type(resource_type)
    parsed = parse_search(resource_type, pairs, base)
    parsed.compartment = compartment
    path = f"Patient/{compartment}/{resource_type}" if compartment is not None else resource_type
    if strict and parsed.unknown:
        names = ", ".join(parsed.unknown)
        known = ", ".join(sorted(p["name"] for p in capability_search_params(resource_type)))
        message = (
            f"unknown or unsupported search parameter(s) for {resource_type}: {names}; supported: {known} "
            "(send Prefer: handling=lenient to have them ignored instead)"
        )
        if "_at" in parsed.unknown:
            message += f"; {_AS_OF_SEARCH}"
        raise InvalidResource([Issue("not-supported", message, parsed.unknown[0])])
    if count is None:
        count = clamp_count(parsed.count, DEFAULT_COUNT, services.settings)  # EHR_MAX_COUNT
    if any(_terminology_modifier(name) for name, _ in pairs):
        # R4 search.html#token :in/:below...: a value set or code system just stored applies (read-your-writes).
        services.terminology_current()
    with services.views.read() as tx:
        page = run_search(tx, services.views.dialect, parsed, base, count, viewer)
        entries = _entries(tx, base, page, parsed, disclosure)
    applied = [(name, value) for name, value in parsed.applied if name != "_cursor"]
    links = [{"relation": "self", "url": _link(base, path, applied, parsed.cursor)}]
    if page.next_cursor:
        links.append({"relation": "next", "url": _link(base, path, applied, page.next_cursor)})
    if page.prev_cursor:
        links.append({"relation": "previous", "url": _link(base, path, applied, page.prev_cursor)})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = links
    outcome = _outcome(parsed, page)
    if outcome is not None:
        entries.append(outcome)
    bundle["entry"] = entries
    return bundle, page


def _viewer(request: Request) -> tuple[Viewer | None, str | None]:
    caller = caller_of(request)
    reason = request.headers.get("x-ehr-break-glass", "").strip() or None
    return (caller.viewer(break_glass=reason is not None) if caller is not None else None), reason


def _respond(services: Services, request: Request, bundle: dict[str, Any], pages: list[Page], what: str) -> Response:
    """The searchset, with the access notes the policy asks for (audit entry, break-the-glass review)."""
    caller = caller_of(request)
    reason = request.headers.get("x-ehr-break-glass", "").strip() or None
    if any(page.filtered for page in pages):
        # For the audit entry: the answer was filtered by the access policy.
        request.state.ehr_access = "filtered"
    headers: dict[str, str] = {}
    if caller is not None and reason is not None and any(page.break_glass_used for page in pages):
        # The query may name the patient (name=, identifier=): the audit entry keeps it; the review
        # list says only what kind of access it was.
        record_break_glass(services, caller.claims, reason, what)
        request.state.ehr_break_glass = True
        headers["X-EHR-Break-Glass"] = "granted"
    return Response(orjson.dumps(bundle), media_type=FHIR_JSON, headers=headers)


def _answer(
    services: Services,
    request: Request,
    resource_type: str,
    pairs: list[tuple[str, str]],
    compartment: str | None = None,
) -> Response:
    viewer, _ = _viewer(request)
    disclosure = Disclosure()
    bundle, page = _search(
        services,
        resource_type,
        pairs,
        base_url(request),
        strict_handling(request),
        viewer,
        compartment=compartment,
        disclosure=disclosure,
    )
    disclose(request, disclosure)
    what = f"search Patient/{compartment}/{resource_type}" if compartment else f"search {resource_type}"
    return _respond(services, request, bundle, [page], what)


async def _form_pairs(request: Request) -> list[tuple[str, str]]:
    """The query string's parameters, then the form body's (R4 §3.1.1 "POST ... _search")."""
    kind = media_type(request)
    if kind is not None and kind != FORM:
        raise ApiError("unsupported-media-type", f"POST _search takes {FORM}, not {kind}", code="not-supported")
    form = await request.form()
    pairs = list(request.query_params.multi_items())
    pairs += [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
    return pairs


# -- system search: GET [base]?params, POST [base]/_search (R4 §3.1.0.9 "search-system") --------------


def _system_cursor(value: str | None, types: list[str]) -> tuple[int, str | None]:
    """A system search's cursor: the index of the type the page starts in, and that type's own cursor."""
    if value is None:
        return 0, None
    index, _, inner = value.partition(":")
    if not index.isdecimal() or int(index) >= len(types):
        raise InvalidResource([Issue("invalid", "_cursor is not one this server issued for this search", "_cursor")])
    return int(index), inner or None


def system_bundle(
    services: Services, pairs: list[tuple[str, str]], base: str, strict: bool, viewer: Viewer | None
) -> tuple[dict[str, Any], list[Page]]:
    """A search across the ``_type`` types (every type with resources when there is no ``_type``): the types
    one after the other, each in its own order, a page continuing into the next type when one runs out.
    The parameters apply to every type, so they must be ones each type has (R4 §3.1.1.1: with several
    types, only parameters common to them all)."""
    types: list[str] = []
    for name, value in pairs:
        if name == "_type":
            types += [require_type(t.strip()) for t in value.split(",") if t.strip() and t.strip() not in types]
    rest = [(n, v) for n, v in pairs if n not in ("_type", "_cursor", "_count")]
    cursor = next((v for n, v in pairs if n == "_cursor"), None)
    requested = next((v for n, v in pairs if n == "_count"), None)
    if not types:
        with services.views.read() as tx:
            types = indexed_types(tx)
    count = clamp_count(
        parse_search(types[0] if types else "Patient", [("_count", requested)] if requested else []).count,
        DEFAULT_COUNT,
        services.settings,
    )
    start, inner = _system_cursor(cursor, types)
    remaining = count
    entries: list[dict[str, Any]] = []
    outcome: dict[str, Any] | None = None
    pages: list[Page] = []
    total: int | None = 0
    next_cursor: str | None = None
    for index, resource_type in enumerate(types):
        listed = index >= start and remaining > 0 and next_cursor is None
        own = [*rest, *([("_cursor", inner)] if index == start and inner else [])]
        bundle, page = _search(services, resource_type, own, base, strict, viewer, count=remaining if listed else 0)
        pages.append(page)
        total = None if total is None or page.total is None else total + page.total
        for entry in bundle.get("entry", []):
            if entry.get("search", {}).get("mode") == "outcome":
                outcome = outcome or entry
            else:
                entries.append(entry)
        if listed:
            remaining -= len(page.matches)
            if page.next_cursor:
                next_cursor = f"{index}:{page.next_cursor}"
        elif index > start and next_cursor is None and page.total:
            next_cursor = f"{index}:"
    query = [("_type", ",".join(types)), *rest, ("_count", str(count))]
    links = [{"relation": "self", "url": _link(base, "", query, cursor)}]
    if next_cursor is not None:
        links.append({"relation": "next", "url": _link(base, "", query, next_cursor)})
    result: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        result["total"] = total
    result["link"] = links
    result["entry"] = [*entries, *([outcome] if outcome else [])]
    return result, pages


def _system_answer(services: Services, request: Request, pairs: list[tuple[str, str]]) -> Response:
    viewer, _ = _viewer(request)
    bundle, pages = system_bundle(services, pairs, base_url(request), strict_handling(request), viewer)
    return _respond(services, request, bundle, pages, "search system")


def search_system(request: Request, services: ServicesDep) -> Response:
    """``GET [base]?params`` (declared on the base URL in fhir_api/routes.py)."""
    return _system_answer(services, request, list(request.query_params.multi_items()))


@router.post("/_search", summary="search-system (POST)")
async def search_system_post(request: Request, services: ServicesDep) -> Response:
    pairs = await _form_pairs(request)
    return await in_thread(_system_answer, services, request, pairs)


@router.get("/{resource_type}", summary="search-type")
def search_type(resource_type: str, request: Request, services: ServicesDep) -> Response:
    return _answer(services, request, resource_type, list(request.query_params.multi_items()))


@router.post("/{resource_type}/_search", summary="search-type (POST)")
async def search_post(resource_type: str, request: Request, services: ServicesDep) -> Response:
    pairs = await _form_pairs(request)
    return await in_thread(_answer, services, request, resource_type, pairs)


# -- compartment search: GET [base]/Patient/[id]/[type]?params (R4 §3.1.1.1 "Compartment search") -----


def compartment_bundle(
    services: Services,
    compartment: str,
    resource_type: str,
    pairs: list[tuple[str, str]],
    base: str,
    strict: bool,
    viewer: Viewer | None,
) -> dict[str, Any]:
    """The searchset of ``GET Patient/[compartment]/[type]?pairs`` (also for GET entries of a Bundle)."""
    _compartment_type("Patient", resource_type)
    return _search(services, resource_type, pairs, base, strict, viewer, compartment=compartment)[0]


def _compartment_type(compartment_type: str, resource_type: str) -> None:
    if resource_type.startswith("$"):
        raise NotFound(f"operation {resource_type} is not supported on {compartment_type}", code="not-supported")
    if compartment_type != "Patient":
        raise NotFound(
            f"compartment search is supported in the Patient compartment only, not {compartment_type}",
            code="not-supported",
        )
    require_type(resource_type)
    if resource_type not in compartment_types():
        raise InvalidResource(
            [
                Issue(
                    "not-supported",
                    f"{resource_type} is not a type of the Patient compartment (R4 CompartmentDefinition)",
                )
            ]
        )


@router.get("/{compartment_type}/{compartment_id}/{resource_type}", summary="search-compartment")
def search_compartment(
    compartment_type: str, compartment_id: str, resource_type: str, request: Request, services: ServicesDep
) -> Response:
    _compartment_type(compartment_type, resource_type)
    pairs = list(request.query_params.multi_items())
    return _answer(services, request, resource_type, pairs, compartment=compartment_id)


@router.post("/{compartment_type}/{compartment_id}/{resource_type}/_search", summary="search-compartment (POST)")
async def search_compartment_post(
    compartment_type: str, compartment_id: str, resource_type: str, request: Request, services: ServicesDep
) -> Response:
    _compartment_type(compartment_type, resource_type)
    pairs = await _form_pairs(request)
    return await in_thread(_answer, services, request, resource_type, pairs, compartment_id)
