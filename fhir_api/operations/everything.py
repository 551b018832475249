"""``GET [base]/Patient/[id]/$everything``: the unified record across institutions (R4 Patient-everything).

Every current resource in the compartments of all the Patient records the master patient index links to
this one, oldest write first, with ``_since``, ``_type``, ``_count`` and ``next`` links that page by
notification id (``_page_after``), so pages never shift while writes arrive. Each entry's ``meta.source``
names the institution and unit (CLUES) whose write produced it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue
from ehr_core.numbers import parse_int
from fhir_api.auth import viewer_of
from fhir_api.interactions.history import parse_since
from fhir_api.operations.definitions import by_id
from fhir_api.operations.parameters import operation_input
from fhir_api.operations.unified import attributed, bundle, linked_patients
from fhir_api.request import ServicesDep, base_url, require_type
from fhir_api.responses import FHIR_JSON
from fhir_api.services import Services
from projections.access import Viewer
from projections.identity import everything_page

router = APIRouter()

DEFAULT_COUNT = 100
MAX_COUNT = 1000


def _int(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    number = parse_int(value)
    if number is None:
        raise InvalidResource([Issue("invalid", f"{name} must be a non-negative integer, got {value!r}", name)])
    return number


def everything(
    services: Services,
    base: str,
    patient_id: str,
    types: list[str] | None,
    since: str | None,
    count: int,
    after: int,
    viewer: Viewer | None = None,
) -> bytes:
    services.identity_current()
    with services.views.read() as tx:
        patients = linked_patients(services, tx, patient_id)
        rows = everything_page(tx, patients, types=types, since=since, after=after, limit=count + 1, viewer=viewer)
    more = len(rows) > count
    rows = rows[:count]
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"{base}/{rtype}/{rid}",
            "resource": orjson.Fragment(attributed(body, institution, unit)),
            "search": {"mode": "match"},
        }
        for _, rtype, rid, body, institution, unit in rows
    ]
    query: dict[str, str] = {"_count": str(count)}
    if types:
        query["_type"] = ",".join(types)
    if since:
        query["_since"] = since
    url = f"{base}/Patient/{patient_id}/$everything"
    links = [{"relation": "self", "url": f"{url}?{urlencode({**query, '_page_after': str(after)})}"}]
    if more and rows:
        links.append({"relation": "next", "url": f"{url}?{urlencode({**query, '_page_after': str(rows[-1][0])})}"})
    return bundle({"type": "searchset", "link": links}, entries)


OPERATION = by_id("everything")


@router.get("/Patient/{patient_id}/$everything", summary="Patient $everything (unified across institutions)")
@router.post("/Patient/{patient_id}/$everything", summary="Patient $everything (POST, Parameters body)")
async def patient_everything(patient_id: str, request: Request, services: ServicesDep) -> Response:
    given = await operation_input(request, OPERATION)
    type_list = [t.strip() for value in given.all("_type") for t in value.split(",") if t.strip()] or None
    for resource_type in type_list or []:
        require_type(resource_type)
    size = max(1, min(_int(given.first("_count"), "_count", DEFAULT_COUNT), MAX_COUNT))
    body = await run_in_threadpool(
        everything,
        services,
        base_url(request),
        patient_id,
        type_list,
        parse_since(given.first("_since")),
        size,
        _int(given.first("_page_after"), "_page_after", 0),
        viewer_of(request),
    )
    return Response(body, media_type=FHIR_JSON)
