"""read and vread: ``GET [base]/[type]/[id]`` and ``.../_history/[vid]`` (R4 §3.1.0.2, §3.1.0.3).

Both serve the stored bytes as they are: no model, no re-serialisation, unless the client asks for part of
the resource with ``_summary`` or ``_elements`` (R4 search.html §3.1.1.5.8-9, "may also be used on read"):
then the same subsetting as search reshapes it and tags it ``SUBSETTED``.

Conditional read (R4 http.html#cread): ``If-None-Match`` with the current ``ETag`` (or ``*``), or
``If-Modified-Since`` at or after ``Last-Modified``, answers 304 Not Modified with no body. ``If-None-Match``
decides alone when both are sent (RFC 9110 §13.2.2); tags compare weakly (RFC 9110 §8.8.3.2), so ``"3"`` and
``W/"3"`` both match version 3. An unparseable ``If-Modified-Since`` is ignored (RFC 9110 §13.1.3).
"""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import Deleted, InvalidResource, Issue, NotFound
from ehr_core.numbers import parse_int
from ehr_core.resources import json as fhir_json
from fhir_api.request import ServicesDep, require_type
from fhir_api.responses import etag, fhir_response, http_date
from fhir_api.services import Services
from projections.asof import normalise_instant, read_as_of
from projections.resources import ResourceViews, StoredResource
from projections.search.query import SUMMARY_VALUES
from projections.search.subset import subset

__all__ = ["current", "lookup", "lookup_version", "not_modified", "read", "read_response", "router"]

router = APIRouter()

#: ``_summary=count`` asks for a count of matches: meaningless for one resource.
READ_SUMMARIES = SUMMARY_VALUES - {"count"}


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def not_modified(request: Request | None, version: int, last_updated: str) -> bool:
    """Whether the client's copy is current (R4 http.html#cread)."""
    if request is None:
        return False
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        current = _opaque(etag(version))
        return any(tag.strip() == "*" or _opaque(tag) == current for tag in if_none_match.split(","))
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None:
        return False
    modified = datetime.fromisoformat(last_updated)
    # HTTP dates have whole seconds: the stored instant is compared at that precision.
    return int(modified.timestamp()) <= int(since.timestamp())


def _part(request: Request | None, body: bytes) -> bytes:
    """``body``, or the part ``_summary``/``_elements`` ask for (tagged SUBSETTED)."""
    if request is None:
        return body
    summary = request.query_params.get("_summary")
    elements_value = request.query_params.get("_elements")
    if summary is not None and summary not in READ_SUMMARIES:
        allowed = ", ".join(sorted(READ_SUMMARIES))
        raise InvalidResource([Issue("invalid", f"_summary on a read takes one of {allowed}", "_summary")])
    elements = [item.strip() for item in elements_value.split(",") if item.strip()] if elements_value else None
    if summary in (None, "false") and elements is None:
        return body
    part = subset(fhir_json.loads(body), summary, elements)
    return body if part is None else fhir_json.dumps(part)


def read_response(request: Request | None, body: bytes, version: int, last_updated: str) -> Response:
    """The answer to a read of a current resource: 304 when the client's copy is current, else its body."""
    if not_modified(request, version, last_updated):
        return Response(status_code=304, headers={"ETag": etag(version), "Last-Modified": http_date(last_updated)})
    return fhir_response(_part(request, body), version=version, last_updated=last_updated)


def current(stored: StoredResource | None, what: str) -> StoredResource:
    """``stored``, or NotFound (never written) / Deleted (410 with the deleted version's ETag)."""
    if stored is None:
        raise NotFound(f"{what} is not known")
    if stored.deleted or stored.body is None:  # 410 with the deleted version's ETag (fhir_api/errors.py)
        version, deleted = stored.version, stored.last_updated
        raise Deleted(f"{what} was deleted (version {version})", version=version, last_updated=deleted)
    return stored


def _served(stored: StoredResource | None, what: str, request: Request | None) -> Response:
    found = current(stored, what)
    assert found.body is not None
    return read_response(request, found.body, found.version, found.last_updated)


@router.get("/{resource_type}/{resource_id}", summary="read")
def read_route(resource_type: str, resource_id: str, request: Request, services: ServicesDep) -> Response:
    return read(resource_type, resource_id, services, request.query_params.get("_at"), request)


def read(
    resource_type: str,
    resource_id: str,
    services: Services,
    at: str | None = None,
    request: Request | None = None,
) -> Response:
    return _served(*lookup(services, resource_type, resource_id, at), request)


def lookup(
    services: Services, resource_type: str, resource_id: str, at: str | None = None
) -> tuple[StoredResource | None, str]:
    """The current version of ``Type/id`` (or, with ``at``, the one current at that recorded instant), and
    how to name it in an error."""
    require_type(resource_type)
    if at is None:
        with services.views.read() as tx:
            return ResourceViews.read(tx, resource_type, resource_id), f"{resource_type}/{resource_id}"
    # As-of read, ``GET [type]/[id]?_at=instant`` (see projections/asof.py)
    try:
        instant = normalise_instant(at)
    except ValueError:
        raise InvalidResource(
            [Issue("invalid", f"_at must be an instant with a time zone, got {at!r}", "_at")]
        ) from None
    with services.views.read() as tx:
        stored = read_as_of(tx, resource_type, resource_id, instant)
    return stored, f"{resource_type}/{resource_id} at {instant}"


def lookup_version(
    services: Services, resource_type: str, resource_id: str, version_id: str
) -> tuple[StoredResource | None, str]:
    """Version ``version_id`` of ``Type/id`` (vread), and how to name it in an error."""
    require_type(resource_type)
    version = parse_int(version_id)  # Beyond 64 bits, a version that does not exist
    if version is None:
        raise InvalidResource([Issue("invalid", f"version id must be a number, got {version_id!r}")])
    with services.views.read() as tx:
        stored = ResourceViews.vread(tx, resource_type, resource_id, version)
    return stored, f"{resource_type}/{resource_id}/_history/{version_id}"


@router.get("/{resource_type}/{resource_id}/_history/{version_id}", summary="vread")
def vread(resource_type: str, resource_id: str, version_id: str, request: Request, services: ServicesDep) -> Response:
    return _served(*lookup_version(services, resource_type, resource_id, version_id), request)
