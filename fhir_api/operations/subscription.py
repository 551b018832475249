"""``Subscription/[id]/$status`` and ``Subscription/[id]/$events`` (Subscriptions R5 Backport IG for R4 1.1.0).

Both read the subscriptions projection (``projections/subscriptions.py``): ``$status`` its counters,
``$events`` a range of its outbox, that is of the events the matcher recorded from the log, replayed with
the focus as the subscriber's institution may read it now. Only the subscription's own institution sees it
(another institution is told it does not exist, as a read would).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue, NotFound
from fhir_api.auth import viewer_of
from fhir_api.operations.definitions import by_id
from fhir_api.operations.parameters import operation_input
from fhir_api.request import ServicesDep, base_url
from fhir_api.responses import FHIR_JSON
from fhir_api.services import Services
from fhir_api.subscriptions import notification_bundle, status_parameters
from fhir_api.threads import in_thread
from projections.access import Viewer
from projections.subscriptions import SubscriptionRow, events_between, subscription_row, visible_foci

router = APIRouter()


def _subscription(services: Services, subscription_id: str, viewer: Viewer | None) -> SubscriptionRow:
    matcher = services.main_projectors.get("subscriptions")
    if matcher is not None and services.watcher is None:
        matcher.catch_up_if_behind()  # this process matches: the caller's own Subscription write is seen
    with services.views.read_primary() as tx:
        row = subscription_row(tx, subscription_id)
    if row is None or (viewer is not None and not viewer.break_glass and viewer.institution != row.institution):
        raise NotFound(f"Subscription/{subscription_id} is not known")
    return row


def _number(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not value.isdecimal():
        raise InvalidResource([Issue("invalid", f"{name} must be a non-negative event number, not {value!r}", name)])
    return int(value)


def status(services: Services, base: str, subscription_id: str, viewer: Viewer | None) -> bytes:
    row = _subscription(services, subscription_id, viewer)
    parameters = status_parameters(row, "query-status", base)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [{"fullUrl": f"urn:uuid:{parameters['id']}", "resource": parameters, "search": {"mode": "match"}}],
    }
    return orjson.dumps(bundle)


def events(
    services: Services, base: str, subscription_id: str, viewer: Viewer | None, values: dict[str, str | None]
) -> bytes:
    row = _subscription(services, subscription_id, viewer)
    since = _number(values["eventsSinceNumber"], "eventsSinceNumber") or 1
    until = _number(values["eventsUntilNumber"], "eventsUntilNumber")
    content = values["content"]
    if content is not None and content not in ("empty", "id-only", "full-resource"):
        raise InvalidResource([Issue("invalid", "content must be empty, id-only or full-resource", "content")])
    with services.views.read_primary() as tx:
        found = events_between(tx, row.id, since, until)
        bodies = visible_foci(tx, [(row.institution, outbound) for outbound in found])
        replayed = [(o, bodies[(row.institution, o.focus_type, o.focus_id)]) for o in found]
    if content is not None:
        payload = dict(row.resource.get("channel") or {})
        payload["_payload"] = {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content",
                    "valueCode": content,
                }
            ]
        }
        row = replace(row, resource={**row.resource, "channel": payload})
    return orjson.dumps(notification_bundle(row, "query-event", base, replayed))


@router.get("/Subscription/{subscription_id}/$status", summary="Subscription $status (backport IG)")
@router.post("/Subscription/{subscription_id}/$status", summary="Subscription $status (POST)")
async def subscription_status(subscription_id: str, request: Request, services: ServicesDep) -> Response:
    await operation_input(request, by_id("subscription-status"))
    body = await in_thread(status, services, base_url(request), subscription_id, viewer_of(request))
    return Response(body, media_type=FHIR_JSON)


@router.get("/Subscription/{subscription_id}/$events", summary="Subscription $events (backport IG)")
@router.post("/Subscription/{subscription_id}/$events", summary="Subscription $events (POST)")
async def subscription_events(subscription_id: str, request: Request, services: ServicesDep) -> Response:
    given = await operation_input(request, by_id("subscription-events"))
    values = {name: given.first(name) for name in ("eventsSinceNumber", "eventsUntilNumber", "content")}
    body = await in_thread(events, services, base_url(request), subscription_id, viewer_of(request), values)
    return Response(body, media_type=FHIR_JSON)
