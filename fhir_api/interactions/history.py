"""history: instance, type and system level (R4 §3.1.0.11), newest first.

Pages are cut by notification id, not offset: the ``next`` link carries ``_page_before=N`` (entries
older than N), so a page shows the same entries however many writes arrive while a client pages.
``_at`` keeps the versions current at some point during the period it names (R4 http.html#history,
:func:`projections.resources.current_during`).

Access: instance history is decided for its one resource by the auth middleware; type and system
history list only the versions of resources the caller may see (the policy's SQL predicate joins the page
query and its ``total``). Break-the-glass is not offered here: it grants access to a patient's records in an
emergency, not a browse of every institution's log.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from ehr_core.application import format_instant
from ehr_core.errors import InvalidResource, Issue
from ehr_core.numbers import parse_int
from fhir_api.auth import caller_of
from fhir_api.limits import clamp_count
from fhir_api.request import ServicesDep, base_url, require_type
from fhir_api.responses import FHIR_JSON, etag, http_date
from projections.access import count_visible_history, visible_history
from projections.asof import period_of
from projections.resources import HistoryEntry, Period, ResourceViews

router = APIRouter()

DEFAULT_COUNT = 50

_STATUS = {"POST": "201 Created", "PUT": "200 OK", "PATCH": "200 OK", "DELETE": "204 No Content"}


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdecimal():
        raise InvalidResource([Issue("invalid", f"_count must be a non-negative integer, got {value!r}", "_count")])
    return int(value)


def parse_since(value: str | None) -> str | None:
    """A ``_since`` instant in the stored ``lastUpdated`` form (so text comparison orders correctly)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidResource([Issue("invalid", f"_since must be a FHIR instant, got {value!r}", "_since")]) from None
    if moment.tzinfo is None:
        raise InvalidResource([Issue("invalid", "_since must include a time zone", "_since")])
    return format_instant(moment.astimezone(UTC))


def parse_at(value: str | None) -> Period | None:
    """A history ``_at`` (R4 http.html#history): a FHIR date, dateTime or instant, read as a period."""
    if value is None:
        return None
    try:
        return period_of(value)
    except ValueError:
        raise InvalidResource(
            [Issue("invalid", f"_at must be a FHIR date, dateTime or instant, got {value!r}", "_at")]
        ) from None


def _cursor(value: str | None) -> int | None:
    if value is None:
        return None
    cursor = parse_int(value)  # Beyond 64 bits it still means "before everything"
    if cursor is None:
        raise InvalidResource([Issue("invalid", f"invalid page cursor {value!r}", "_page_before")])
    return cursor


def _entry(base: str, item: HistoryEntry) -> dict[str, Any]:
    full_url = f"{base}/{item.resource_type}/{item.resource_id}"
    request_url = item.resource_type if item.method == "POST" else f"{item.resource_type}/{item.resource_id}"
    entry: dict[str, Any] = {"fullUrl": full_url}
    if item.body is not None:
        entry["resource"] = orjson.Fragment(item.body)
    entry["request"] = {"method": item.method, "url": request_url}
    entry["response"] = {
        "status": _STATUS[item.method] if item.version > 1 or item.method != "PUT" else "201 Created",
        "etag": etag(item.version),
        "lastModified": item.last_updated,
    }
    return entry


def _history(
    request: Request,
    services: ServicesDep,
    path: str,
    count: str | None,
    since: str | None,
    page_before: str | None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    at: str | None = None,
) -> Response:
    limit = clamp_count(_count(count), DEFAULT_COUNT, services.settings)  # EHR_MAX_COUNT
    since_at, before, period = parse_since(since), _cursor(page_before), parse_at(at)
    shown = {"_since": since, "_at": at}
    base = base_url(request)
    caller = caller_of(request)
    if caller is not None and resource_id is None:
        viewer = caller.viewer()
        request.state.ehr_access = "filtered"  # for the audit entry
        with services.views.read() as tx:
            dialect = services.views.dialect
            total = count_visible_history(
                tx, viewer, resource_type=resource_type, before=before, since=since_at, dialect=dialect, at=period
            )
            items = visible_history(
                tx,
                viewer,
                resource_type=resource_type,
                before=before,
                since=since_at,
                limit=limit + 1,
                dialect=dialect,
                at=period,
            )
        return _bundle(base, path, limit, shown, before, total, items)
    with services.views.read() as tx:
        total = ResourceViews.count_history(
            tx, resource_type=resource_type, resource_id=resource_id, before=before, since=since_at, at=period
        )
        items = ResourceViews.history(
            tx,
            resource_type=resource_type,
            resource_id=resource_id,
            before=before,
            since=since_at,
            limit=limit + 1,
            at=period,
        )
    return _bundle(base, path, limit, shown, before, total, items)


def _bundle(
    base: str,
    path: str,
    limit: int,
    shown: dict[str, str | None],
    before: int | None,
    total: int,
    items: list[HistoryEntry],
) -> Response:
    has_next, items = len(items) > limit, items[:limit]
    params: dict[str, str] = {"_count": str(limit)}
    params.update({name: value for name, value in shown.items() if value is not None})
    self_params = dict(params, **({"_page_before": str(before)} if before is not None else {}))
    links = [{"relation": "self", "url": f"{base}/{path}?{urlencode(self_params)}"}]
    if has_next and items:
        next_params = dict(params, _page_before=str(items[-1].notification_id))
        links.append({"relation": "next", "url": f"{base}/{path}?{urlencode(next_params)}"})
    bundle = {
        "resourceType": "Bundle",
        "type": "history",
        "total": total,
        "link": links,
        "entry": [_entry(base, item) for item in items],
    }
    headers = {"Last-Modified": http_date(items[0].last_updated)} if items else {}
    return Response(orjson.dumps(bundle), media_type=FHIR_JSON, headers=headers)


Count = Annotated[str | None, Query(alias="_count")]
Since = Annotated[str | None, Query(alias="_since")]
PageBefore = Annotated[str | None, Query(alias="_page_before")]
At = Annotated[str | None, Query(alias="_at")]


@router.get("/_history", summary="history-system")
def history_system(
    request: Request,
    services: ServicesDep,
    count: Count = None,
    since: Since = None,
    page: PageBefore = None,
    at: At = None,
) -> Response:
    return _history(request, services, "_history", count, since, page, at=at)


@router.get("/{resource_type}/_history", summary="history-type")
def history_type(
    resource_type: str,
    request: Request,
    services: ServicesDep,
    count: Count = None,
    since: Since = None,
    page: PageBefore = None,
    at: At = None,
) -> Response:
    require_type(resource_type)
    return _history(request, services, f"{resource_type}/_history", count, since, page, resource_type, at=at)


@router.get("/{resource_type}/{resource_id}/_history", summary="history-instance")
def history_instance(
    resource_type: str,
    resource_id: str,
    request: Request,
    services: ServicesDep,
    count: Count = None,
    since: Since = None,
    page: PageBefore = None,
    at: At = None,
) -> Response:
    require_type(resource_type)
    path = f"{resource_type}/{resource_id}/_history"
    return _history(request, services, path, count, since, page, resource_type, resource_id, at)
