"""AuditEvent and Provenance: read and search over their own views.

The server produces both (AuditEvent from the audit log, Provenance from each write's context) into their
own views. A client may also send AuditEvents and Provenances of its own (another system's audit record, a
signature): those are ordinary resources in the clinical log, readable by id here, apart from the server's
trail and never mixed into it. Search covers the server's own. Search parameters:

- AuditEvent: ``patient``, ``entity``, ``agent`` (a user id, or ``system|value`` of the user or the
  institution), ``date`` (prefixes ``ge``/``le``/``gt``/``lt``/``eq``), ``action``, ``outcome``,
  ``subtype`` (the FHIR interaction), ``address``; ``_count`` and a ``_page_before`` cursor; newest first.
- Provenance: ``target`` (``Type/id`` or ``Type/id/_history/v``), ``patient``, ``agent``, ``recorded``.

With auth on, searches list only what the caller's institution may see of the server's trail
(:func:`projections.access.audit_clause`, :func:`projections.access.provenance_clause`): AuditEvents of its
own staff's actions, or naming only patients whose record it may read (own, or consent); Provenances of
writes to resources it may read. Break-the-glass opens records for care, not other institutions' trails: it
does not widen these searches.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import Conflict, InvalidResource, Issue
from ehr_core.numbers import parse_int
from fhir_api.auth import caller_of
from fhir_api.errors import ApiError
from fhir_api.interactions import delete, patch, read, update
from fhir_api.request import ServicesDep, base_url
from fhir_api.responses import FHIR_JSON
from fhir_api.services import Services
from fhir_api.threads import in_thread
from projections.access import audit_clause, audit_entry_visible, provenance_clause, provenance_visible
from projections.audit import AuditQuery, date_condition, read_audit, search_audit
from projections.provenance import read_provenance, search_provenance

__all__ = ["router"]

router = APIRouter()

_AUDIT_REFS = ("patient", "entity", "agent")
_AUDIT_COLUMNS = {"action": "action", "outcome": "outcome", "subtype": "interaction", "address": "address"}
_PROVENANCE_REFS = ("target", "patient", "agent")
_CONTROL = ("_count", "_page_before", "_format")


def _reference_value(raw: str, base: str) -> str:
    value = raw.split("|", 1)[1] if raw.startswith("http") and "|" in raw else raw
    return value[len(base) + 1 :] if value.startswith(base + "/") else value


def _paging(request: Request) -> tuple[int, int | None]:
    count_raw = request.query_params.get("_count", "20")
    before_raw = request.query_params.get("_page_before")
    count = parse_int(count_raw)
    before = None if before_raw is None else parse_int(before_raw, signed=True)
    if count is None or (before_raw is not None and before is None):
        raise InvalidResource([Issue("invalid", "_count and _page_before must be numbers")])
    return min(count, 1000), before


def _bundle(request: Request, resource_type: str, rows: list[tuple[str, int, bytes]], count: int) -> Response:
    base = base_url(request)
    entries = [
        {"fullUrl": f"{base}/{resource_type}/{rid}", "resource": orjson.Fragment(body), "search": {"mode": "match"}}
        for rid, _, body in rows[:count]
    ]
    links: list[dict[str, Any]] = [{"relation": "self", "url": str(request.url)}]
    if len(rows) > count:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "_page_before"]
        params.append(("_page_before", str(rows[count - 1][1])))
        query = "&".join(f"{k}={v}" for k, v in params)
        links.append({"relation": "next", "url": f"{base}/{resource_type}?{query}"})
    bundle = {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}
    return Response(orjson.dumps(bundle), media_type=FHIR_JSON)


def _unknown(request: Request, known: tuple[str, ...]) -> None:
    unknown = [k for k in request.query_params if k not in known and k not in _CONTROL]
    if unknown:
        names = ", ".join(unknown)
        raise InvalidResource([Issue("not-supported", f"unsupported search parameter(s): {names}", unknown[0])])


# -- AuditEvent ------------------------------------------------------------------------------------


def _audit_query(request: Request) -> AuditQuery:
    _unknown(request, (*_AUDIT_REFS, *_AUDIT_COLUMNS, "date"))
    base = base_url(request)
    refs: dict[str, list[str]] = {}
    columns: dict[str, list[str]] = {}
    dates: list[tuple[str, str]] = []
    for key, raw in request.query_params.multi_items():
        values = [v for v in raw.split(",") if v]
        if key in _AUDIT_REFS:
            found = [_reference_value(v, base) for v in values]
            if key == "patient":
                found = [v if v.startswith("Patient/") else f"Patient/{v}" for v in found]
            refs.setdefault(key, []).extend(found)
        elif key in _AUDIT_COLUMNS:
            columns.setdefault(_AUDIT_COLUMNS[key], []).extend(v.split("|")[-1] for v in values)
        elif key == "date":
            dates.append(date_condition(raw))
    return AuditQuery(refs, columns, dates)


def _current(services: Services) -> None:
    """Read-your-audits: the views include every committed audit entry (projected off the request path)."""
    services.compliance.audit_views_current()


def _search_audit(services: Services, query: AuditQuery, count: int) -> list[tuple[str, int, bytes]]:
    _current(services)
    with services.views.read() as tx:
        return [(a.resource_id, a.notification_id, a.body) for a in search_audit(tx, query, count + 1)]


@router.get("/AuditEvent", summary="search AuditEvent")
async def audit_search(request: Request, services: ServicesDep) -> Response:
    count, before = _paging(request)
    query = _audit_query(request)
    query.before = before
    caller = caller_of(request)
    if caller is not None:
        query.policy = audit_clause(caller.viewer())
        request.state.ehr_access = "filtered"  # for the audit entry
    rows = await in_thread(_search_audit, services, query, count)
    if _patient_app(request):
        rows = [(rid, nid, _without_queries(body)) for rid, nid, body in rows]
    return _bundle(request, "AuditEvent", rows, count)


def _patient_app(request: Request) -> bool:
    """Whether the caller is a patient-facing app (patient scopes only, a patient in its token)."""
    caller = caller_of(request)
    if caller is None:
        return False
    viewer = caller.viewer()
    return viewer.types == frozenset() and viewer.patient is not None


def _without_queries(body: bytes) -> bytes:
    """The AuditEvent without ``entity.query``: a patient sees who accessed their record and when, not the
    searches staff typed (which may name other people or carry clinical terms of the search)."""
    event = orjson.loads(body)
    for entity in event.get("entity") or []:
        entity.pop("query", None)
    return orjson.dumps(event)


def _permitted(services: Services, request: Request, table: str, resource_id: str) -> None:
    """A server entry read by id follows the rule of the searches (403 otherwise)."""
    caller = caller_of(request)
    if caller is None:
        return
    viewer = caller.viewer()
    with services.views.read() as tx:
        if table == "audit_entries":
            visible = audit_entry_visible(tx, viewer, entry_id=resource_id)
        else:
            visible = provenance_visible(tx, viewer, resource_id)
        if not visible:
            raise ApiError(
                "forbidden", "this entry is about a record your institution may not read (no Consent)", "forbidden"
            )


@router.get("/AuditEvent/{resource_id}", summary="read AuditEvent")
def audit_read(resource_id: str, request: Request, services: ServicesDep) -> Response:
    _current(services)
    with services.views.read() as tx:
        stored = read_audit(tx, resource_id)
    if stored is not None:
        _permitted(services, request, "audit_entries", resource_id)
    if stored is None:
        # Not one of the server's own entries: an AuditEvent a client sent is an ordinary resource.
        return read.read("AuditEvent", resource_id, services, None, request)
    body = _without_queries(stored.body) if _patient_app(request) else stored.body
    return read.read_response(request, body, 1, stored.recorded)


# -- Provenance ------------------------------------------------------------------------------------


def _search_provenance(
    services: Services,
    refs: dict[str, list[str]],
    dates: list[tuple[str, str]],
    before: int | None,
    count: int,
    policy: tuple[str, list[Any]] | None,
) -> list[tuple[str, int, bytes]]:
    with services.views.read() as tx:
        found = search_provenance(tx, refs, dates, before, count + 1, policy)
    return [(p.resource_id, p.notification_id, p.body) for p in found]


@router.get("/Provenance", summary="search Provenance")
async def provenance_search(request: Request, services: ServicesDep) -> Response:
    _unknown(request, (*_PROVENANCE_REFS, "recorded"))
    count, before = _paging(request)
    base = base_url(request)
    refs: dict[str, list[str]] = {}
    dates: list[tuple[str, str]] = []
    for key, raw in request.query_params.multi_items():
        if key in _PROVENANCE_REFS:
            found = [_reference_value(v, base) for v in raw.split(",") if v]
            if key == "patient":
                found = [v if v.startswith("Patient/") else f"Patient/{v}" for v in found]
            refs.setdefault(key, []).extend(found)
        elif key == "recorded":
            dates.append(date_condition(raw))
    caller = caller_of(request)
    policy = provenance_clause(caller.viewer()) if caller is not None else None
    if policy is not None:
        request.state.ehr_access = "filtered"  # for the audit entry
    rows = await in_thread(_search_provenance, services, refs, dates, before, count, policy)
    return _bundle(request, "Provenance", rows, count)


@router.get("/Provenance/{resource_id}", summary="read Provenance")
def provenance_read(resource_id: str, request: Request, services: ServicesDep) -> Response:
    with services.views.read() as tx:
        stored = read_provenance(tx, resource_id)
    if stored is not None:
        _permitted(services, request, "provenance", resource_id)
    if stored is None:
        # Not derived from the log: a Provenance a client sent (with a signed document, say) is ordinary.
        return read.read("Provenance", resource_id, services, None, request)
    return read.read_response(request, stored.body, 1, stored.recorded)


def _server_written(services: Services, resource_type: str, resource_id: str) -> bool:
    with services.views.read() as tx:
        found = read_audit(tx, resource_id) if resource_type == "AuditEvent" else read_provenance(tx, resource_id)
    return found is not None


for _type in ("AuditEvent", "Provenance"):

    async def _guard(resource_id: str, request: Request, services: ServicesDep, _name: str = _type) -> Response:
        """A client's own AuditEvent/Provenance is an ordinary resource, but never under a server entry's id."""
        if await in_thread(_server_written, services, _name, resource_id):
            raise Conflict(f"{_name}/{resource_id} is written by the server from its logs and cannot be changed")
        handler = {"PUT": update.update, "PATCH": patch.patch, "DELETE": delete.delete}[request.method]
        return await handler(_name, resource_id, request, services)

    router.add_api_route(
        f"/{_type}/{{resource_id}}", _guard, methods=["PUT", "PATCH", "DELETE"], include_in_schema=False
    )
