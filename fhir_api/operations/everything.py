"""``GET|POST [base]/Patient/[id]/$everything``: the unified record across institutions (R4
patient-operation-everything).

Every current resource in the compartments of all the Patient records the master patient index links to
this one (``search.mode = match``), oldest write first, and on each page the resources those reference that
belong to no patient compartment — Practitioner, Organization, Location, Medication, a Device without a
patient… — (``search.mode = include``; the spec's "any resource referenced from those"). One level: what an
included resource references in turn is not followed. A resource referenced from several pages is included on
each of them. Another patient's resources are never included, whoever references them.

Parameters (R4): ``start``/``end``, the care date range, inclusive, compared with each resource's clinical
date (:data:`projections.identity.CLINICAL_DATE`, else its ``date`` search parameter; a resource without
one — the Patient itself — stays, and referenced resources, which have no care date, are not filtered by it);
``_since`` (last updated at or after, for matches and included resources alike); ``_type`` (for both);
``_count`` and ``next`` links that page by notification id (``_page_after``), so pages never shift while
writes arrive. ``_at`` (an instant): the record as it was then, each resource's version current at that
recorded instant (:mod:`projections.everything_asof`; not with ``_since``/``start``/``end``).
Each entry's ``meta.source`` names the institution and unit (CLUES) whose write produced it.
With auth on, every entry, included ones too, is one the caller may read (the access policy's filter).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue
from ehr_core.numbers import parse_int
from ehr_core.resources import json as fhir_json
from fhir_api.auth import viewer_of
from fhir_api.interactions.history import parse_since
from fhir_api.operations.definitions import by_id
from fhir_api.operations.parameters import operation_input
from fhir_api.operations.unified import attributed, bundle, linked_patients
from fhir_api.request import ServicesDep, base_url, require_type
from fhir_api.responses import FHIR_JSON
from fhir_api.services import Services
from fhir_api.threads import in_thread
from projections.access import Viewer
from projections.asof import normalise_instant
from projections.everything_asof import everything_as_of, referenced_as_of
from projections.identity import everything_page, referenced_resources
from projections.search.dates import MAX, MIN, date_range

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
    start: str | None = None,
    end: str | None = None,
    at: str | None = None,
) -> bytes:
    clinical = _care_range(start, end)
    instant = _instant(at)
    if instant is not None and (since is not None or clinical is not None):
        # Both filter on the current index (last update, clinical date): as of a past moment they would
        # filter on values the record did not have then.
        name = "_since" if since is not None else "start"
        raise InvalidResource([Issue("not-supported", f"{name} cannot be combined with _at", name)])
    services.identity_current()
    with services.views.read() as tx:
        patients = linked_patients(services, tx, patient_id)
        if instant is None:
            rows = everything_page(
                tx, patients, types=types, since=since, after=after, limit=count + 1, viewer=viewer, clinical=clinical
            )
        else:
            rows = everything_as_of(tx, patients, instant, types=types, after=after, limit=count + 1, viewer=viewer)
        more = len(rows) > count
        rows = rows[:count]
        listed = {(rtype, rid) for _, rtype, rid, *_ in rows}
        wanted = [key for _, _, _, body, _, _ in rows for key in _references(body, base) if key not in listed]
        if not wanted:
            included = []
        elif instant is None:
            included = referenced_resources(tx, wanted, types=types, since=since, viewer=viewer)
        else:
            included = referenced_as_of(tx, wanted, instant, types=types, viewer=viewer)
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"{base}/{rtype}/{rid}",
            "resource": orjson.Fragment(attributed(body, institution, unit)),
            "search": {"mode": mode},
        }
        for mode, found in (("match", rows), ("include", included))
        for _, rtype, rid, body, institution, unit in found
    ]
    query: dict[str, str] = {"_count": str(count)}
    if types:
        query["_type"] = ",".join(types)
    if since:
        query["_since"] = since
    if start:
        query["start"] = start
    if end:
        query["end"] = end
    if at:
        query["_at"] = at
    url = f"{base}/Patient/{patient_id}/$everything"
    links = [{"relation": "self", "url": f"{url}?{urlencode({**query, '_page_after': str(after)})}"}]
    if more and rows:
        links.append({"relation": "next", "url": f"{url}?{urlencode({**query, '_page_after': str(rows[-1][0])})}"})
    return bundle({"type": "searchset", "link": links}, entries)


def _instant(at: str | None) -> str | None:
    """``_at``: the recorded instant the record is shown as of (an instant with its zone, as a read's)."""
    if at is None:
        return None
    try:
        return normalise_instant(at)
    except ValueError:
        raise InvalidResource(
            [Issue("invalid", f"_at must be an instant with a time zone, got {at!r}", "_at")]
        ) from None


def _care_range(start: str | None, end: str | None) -> tuple[int, int] | None:
    """``start``/``end`` as one range of micros: from the start of ``start``'s day (or month, year) to the
    end of ``end``'s, both inclusive (R4 patient-operation-everything: "care date range")."""
    if start is None and end is None:
        return None
    try:
        low = date_range(start)[0] if start is not None else MIN
        high = date_range(end)[1] if end is not None else MAX
    except ValueError as error:
        name = "start" if start is not None and not _is_date(start) else "end"
        raise InvalidResource([Issue("invalid", f"{name} must be a FHIR date: {error}", name)]) from None
    if low > high:
        raise InvalidResource([Issue("invalid", "start is after end", "start")])
    return low, high


def _is_date(text: str) -> bool:
    try:
        date_range(text)
    except ValueError:
        return False
    return True


def _references(body: bytes, base: str) -> list[tuple[str, str]]:
    """(type, id) of every literal reference in a stored resource, relative or under this server's base."""
    found: list[tuple[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            reference = node.get("reference")
            if isinstance(reference, str):
                key = _key(reference, base)
                if key is not None and key not in found:
                    found.append(key)
            for value in node.values():
                if isinstance(value, dict | list):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    try:
        walk(orjson.loads(body))
    except orjson.JSONDecodeError:  # numbers beyond a double: the faithful parser reads them
        walk(fhir_json.loads(body))
    return found


def _key(reference: str, base: str) -> tuple[str, str] | None:
    if reference.startswith(f"{base}/"):
        reference = reference[len(base) + 1 :]
    parts = reference.split("/")
    if len(parts) not in (2, 4) or (len(parts) == 4 and parts[2] != "_history"):
        return None
    if not parts[0][:1].isupper() or not parts[1] or ":" in parts[0]:
        return None
    return parts[0], parts[1]


OPERATION = by_id("everything")


@router.get("/Patient/{patient_id}/$everything", summary="Patient $everything (unified across institutions)")
@router.post("/Patient/{patient_id}/$everything", summary="Patient $everything (POST, Parameters body)")
async def patient_everything(patient_id: str, request: Request, services: ServicesDep) -> Response:
    given = await operation_input(request, OPERATION)
    type_list = [t.strip() for value in given.all("_type") for t in value.split(",") if t.strip()] or None
    for resource_type in type_list or []:
        require_type(resource_type)
    size = max(1, min(_int(given.first("_count"), "_count", DEFAULT_COUNT), MAX_COUNT))
    body = await in_thread(
        everything,
        services,
        base_url(request),
        patient_id,
        type_list,
        parse_since(given.first("_since")),
        size,
        _int(given.first("_page_after"), "_page_after", 0),
        viewer_of(request),
        given.first("start"),
        given.first("end"),
        given.first("_at"),
    )
    return Response(body, media_type=FHIR_JSON)
