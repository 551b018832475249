"""The unified record of one person, and the record as it was at a moment; a data steward's link actions.

Data: ``Patient/{id}/$everything`` (every linked record), the units' names (``Location`` search),
``$person`` and ``Person/$review`` (the link panel); ``$link`` / ``$unlink`` for the steward's decisions.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from fhir_api.services import Services
from fhir_api.threads import in_thread
from fhir_api.web import session as sessions
from fhir_api.web.asof import as_of, parse_moment
from fhir_api.web.charts import chart
from fhir_api.web.consents import SENSITIVE
from fhir_api.web.fhir_client import FhirAnswer, InternalFhir
from fhir_api.web.i18n import translator
from fhir_api.web.pages import (
    FHIR_ID,
    failure,
    login_redirect,
    next_query,
    patient_row,
    render_page,
    safe_next,
    same_origin,
    services_of,
    session_of_request,
)
from fhir_api.web.record import (
    CLUES_SYSTEM,
    DIASTOLIC,
    GLUCOSE,
    SYSTOLIC,
    WEIGHT,
    Record,
    arrange,
    institution_colour,
    named,
    source_of,
    unnamed_codes,
)
from fhir_api.web.referrals import PRIORITIES
from fhir_api.web.sharing import panel
from projections.terminology.displays import displays_in

__all__ = ["router"]

router = APIRouter(prefix="/web", include_in_schema=False)


TIMELINE_PAGE = 25
#: Codes looked up for their display on one page (the rest shown as the resource gives them).
MAX_LOOKUPS = 1000
MAX_EVERYTHING_PAGES = 50
ZONES = ["-06:00", "-05:00", "-07:00", "-08:00", "+00:00"]


async def _everything(
    fhir: InternalFhir, patient_id: str, reason: str | None
) -> tuple[list[dict[str, Any]], FhirAnswer | None]:
    """Every resource of the person's linked records (the API pages ``$everything`` by 1,000)."""
    resources: list[dict[str, Any]] = []
    query: str = urlencode({"_count": "1000"})
    for _ in range(MAX_EVERYTHING_PAGES):
        answer = await fhir.get(f"/fhir/Patient/{patient_id}/$everything", query, break_glass=reason)
        if not answer.ok:
            return [], answer
        bundle = answer.json() or {}
        # The record's own resources; the referenced ones (search.mode include: practitioners, organizations)
        # are not entries of the patient's timeline.
        resources.extend(
            e["resource"]
            for e in bundle.get("entry", [])
            if isinstance(e, dict) and "resource" in e and (e.get("search") or {}).get("mode", "match") == "match"
        )
        following = next_query(bundle)
        if following is None:
            break
        query = following
    return resources, None


async def _unit_names(fhir: InternalFhir, resources: list[dict[str, Any]]) -> dict[str, str]:
    """Location id and CLUES → the unit's name (Locations are outside the patient's compartment)."""
    ids: set[str] = set()
    clues: set[str] = set()
    for resource in resources:
        unit = source_of(resource)[1]
        if unit:
            clues.add(unit)
        places = resource.get("location")
        for place in places if isinstance(places, list) else [{"location": places}]:
            reference = str(((place or {}).get("location") or {}).get("reference") or "")
            if reference.startswith("Location/"):
                ids.add(reference.split("/")[1])
    searches = []
    if ids:
        searches.append(fhir.get("/fhir/Location", {"_id": ",".join(sorted(ids)), "_count": "1000"}))
    if clues:
        value = ",".join(f"{CLUES_SYSTEM}|{c}" for c in sorted(clues))
        searches.append(fhir.get("/fhir/Location", {"identifier": value, "_count": "1000"}))
    names: dict[str, str] = {}
    for answer in await asyncio.gather(*searches):
        if not answer.ok:
            continue
        for entry in (answer.json() or {}).get("entry", []):
            location = entry.get("resource") or {}
            name = location.get("name")
            if not name:
                continue
            names[str(location.get("id"))] = str(name)
            for identifier in location.get("identifier") or []:
                if identifier.get("system") == CLUES_SYSTEM and identifier.get("value"):
                    names[str(identifier["value"])] = str(name)
    return names


def _displays(services: Services, resources: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(system, code) → display from the terminology store, for the codes the resources name by no text or
    display (what ``CodeSystem/$lookup`` answers, R4 codesystem-operation-lookup; read here in one pass per
    code system: code systems are no patient data, any signed-in user may look them up). A code system the
    store does not hold, or a code it lacks, leaves the code as it is."""
    codes = unnamed_codes(resources)[:MAX_LOOKUPS]
    if not codes:
        return {}
    store = services.terminology_current()
    with store.database.read() as tx:
        return displays_in(tx, codes)


def _charts(record: Record, t: Any) -> list[Any]:
    colours = {name: institution_colour(name) for name in record.institutions}
    return [
        chart(
            t("chart.bp"),
            "mmHg",
            [
                (t("chart.systolic"), "#444", record.vitals.get(SYSTOLIC, [])),
                (t("chart.diastolic"), "#999", record.vitals.get(DIASTOLIC, [])),
            ],
            colours,
        ),
        chart(t("chart.glucose"), "mg/dL", [(t("chart.glucose"), "#444", record.vitals.get(GLUCOSE, []))], colours),
        chart(t("chart.weight"), "kg", [(t("chart.weight"), "#444", record.vitals.get(WEIGHT, []))], colours),
    ]


async def _links(fhir: InternalFhir, patient_id: str, reason: str | None) -> dict[str, Any]:
    """The link-status panel: the person, its linked records (method, score, who) and the review queue."""
    person_answer, review_answer = await asyncio.gather(
        fhir.get(f"/fhir/Patient/{patient_id}/$person", break_glass=reason), fhir.get("/fhir/Person/$review")
    )
    panel: dict[str, Any] = {"available": person_answer.ok, "problem": None, "person": None, "links": [], "review": []}
    if not person_answer.ok:
        panel["problem"] = person_answer.problem()
        return panel
    person = person_answer.json() or {}
    panel["person"] = person.get("id")
    for link in person.get("link") or []:
        extensions = {e.get("url", "").rsplit(":", 1)[-1]: e for e in link.get("extension") or []}
        panel["links"].append(
            {
                "record": str((link.get("target") or {}).get("reference", "")).removeprefix("Patient/"),
                "method": (extensions.get("link-method") or {}).get("valueCode", ""),
                "score": (extensions.get("link-score") or {}).get("valueDecimal"),
                "by": (extensions.get("linked-by") or {}).get("valueString", ""),
                "assurance": link.get("assurance", ""),
            }
        )
    if review_answer.ok:
        records = {link["record"] for link in panel["links"]}
        for parameter in (review_answer.json() or {}).get("parameter") or []:
            parts = {p.get("name"): p for p in parameter.get("part") or []}
            record = str(((parts.get("record") or {}).get("valueReference") or {}).get("reference", ""))
            person_ref = str(((parts.get("person") or {}).get("valueReference") or {}).get("reference", ""))
            if person_ref == f"Person/{panel['person']}" or record.removeprefix("Patient/") in records:
                panel["review"].append(
                    {
                        "record": record.removeprefix("Patient/"),
                        "person": person_ref.removeprefix("Person/"),
                        "score": (parts.get("score") or {}).get("valueDecimal"),
                    }
                )
    return panel


def _sources(resources: list[dict[str, Any]], patient_id: str) -> dict[str, str]:
    return {str(r.get("id")): source_of(r)[0] for r in resources if r.get("resourceType") == "Patient"}


async def _load_record(
    request: Request, session: sessions.Session, patient_id: str
) -> tuple[InternalFhir, list[dict[str, Any]], dict[str, str], FhirAnswer | None, str | None]:
    fhir = InternalFhir(request, session)
    reason = session.reason_for([patient_id])
    resources, refused = await _everything(fhir, patient_id, reason)
    if refused is not None:
        return fhir, [], {}, refused, reason
    names = await _unit_names(fhir, resources)
    displays = await in_thread(_displays, services_of(request), resources)
    return fhir, named(resources, displays), names, None, reason


def _subject(resources: list[dict[str, Any]], patient_id: str) -> dict[str, Any]:
    for resource in resources:
        if resource.get("resourceType") == "Patient" and resource.get("id") == patient_id:
            return patient_row(resource)
    return {"id": patient_id, "name": "", "birth": "", "gender": "unknown", "curp": "", "nss": ""}


def _timeline_page(record: Record, page: int) -> tuple[list[Any], int, int]:
    pages = max(1, -(-len(record.timeline) // TIMELINE_PAGE))
    page = min(max(1, page), pages)
    start = (page - 1) * TIMELINE_PAGE
    return record.timeline[start : start + TIMELINE_PAGE], page, pages


@router.get("/patients/{patient_id}")
async def record_page(request: Request, patient_id: str, page: int = 1, done: str | None = None) -> Response:
    session = session_of_request(request)
    if not session.signed_in:
        return login_redirect(request)
    fhir, resources, names, refused, reason = await _load_record(request, session, patient_id)
    if refused is not None:
        return failure(request, session, refused, patient_id)
    record = arrange(resources, names, date.today())
    links, sharing = await asyncio.gather(
        _links(fhir, patient_id, reason), panel(fhir, session, patient_id, resources, reason)
    )
    items, page, pages = _timeline_page(record, page)
    return render_page(
        request,
        session,
        "record.html",
        patient_id=patient_id,
        subject=_subject(resources, patient_id),
        record=record,
        items=items,
        page=page,
        pages=pages,
        charts=_charts(record, translator(session.lang)),
        links=links,
        sharing=sharing,
        priorities=PRIORITIES,
        sensitive=SENSITIVE,
        sources=_sources(resources, patient_id),
        colour=institution_colour,
        break_glass=reason,
        done=done,
        as_of=None,
    )


@router.get("/patients/{patient_id}/as-of")
async def as_of_page(
    request: Request, patient_id: str, at: str | None = None, zone: str = "-06:00", page: int = 1
) -> Response:
    session = session_of_request(request)
    if not session.signed_in:
        return login_redirect(request)
    zone = zone if zone in ZONES else "-06:00"
    offset = timezone(timedelta(hours=int(zone[:3]), minutes=int(zone[0] + zone[4:])))
    if not at:
        at = datetime.now(UTC).astimezone(offset).strftime("%Y-%m-%dT%H:%M:%S")
    try:
        moment = parse_moment(at, zone)
    except ValueError:
        return render_page(
            request,
            session,
            "asof.html",
            status=400,
            patient_id=patient_id,
            at=at,
            zone=zone,
            zones=ZONES,
            invalid=True,
            record=None,
            colour=institution_colour,
        )
    fhir, resources, names, refused, reason = await _load_record(request, session, patient_id)
    if refused is not None:
        return failure(request, session, refused, patient_id)
    then = await as_of(fhir, resources, moment, reason)
    displays = await in_thread(_displays, services_of(request), then.resources)
    then.resources = named(then.resources, displays)  # the versions read as of then
    record = arrange(then.resources, names, moment.date())
    items, page, pages = _timeline_page(record, page)
    return render_page(
        request,
        session,
        "asof.html",
        patient_id=patient_id,
        at=at,
        zone=zone,
        zones=ZONES,
        invalid=False,
        moment=moment.isoformat(timespec="seconds"),
        subject=_subject(then.resources, patient_id),
        then=then,
        record=record,
        items=items,
        page=page,
        pages=pages,
        charts=_charts(record, translator(session.lang)),
        colour=institution_colour,
        break_glass=reason,
    )


@router.post("/patients/{patient_id}/break-glass")
def break_glass(request: Request, patient_id: str, reason: str = Form(...), next: str = Form("")) -> Response:
    session = session_of_request(request)
    if not same_origin(request) or not reason.strip():
        return RedirectResponse(f"/web/patients/{patient_id}", status_code=303)
    response = RedirectResponse(safe_next(next) if next else f"/web/patients/{patient_id}", status_code=303)
    if not session.auth_disabled:
        sessions.remember_break_glass(response, request, patient_id, reason)
    return response


@router.post("/patients/{patient_id}/link")
async def link(request: Request, patient_id: str, record: str = Form(...), person: str = Form(...)) -> Response:
    """A data steward confirms a link: ``Patient/{record}/$link`` with ``person`` (the API's operation)."""
    session = session_of_request(request)
    if not same_origin(request) or not FHIR_ID.match(record.strip()):
        return RedirectResponse(f"/web/patients/{patient_id}", status_code=303)
    body = {"resourceType": "Parameters", "parameter": [{"name": "person", "valueString": person.strip()}]}
    # Linking into a person whose other records need the glass broken: the reason given for this page.
    reason = session.reason_for([patient_id])
    fhir = InternalFhir(request, session)
    answer = await fhir.post(f"/fhir/Patient/{record.strip()}/$link", body, break_glass=reason)
    if not answer.ok:
        return failure(request, session, answer, patient_id, reading=False)
    return RedirectResponse(f"/web/patients/{patient_id}?done=link", status_code=303)


@router.post("/patients/{patient_id}/unlink")
async def unlink(request: Request, patient_id: str, record: str = Form(...)) -> Response:
    """A data steward undoes a link: ``Patient/{record}/$unlink``."""
    session = session_of_request(request)
    if not same_origin(request) or not FHIR_ID.match(record.strip()):
        return RedirectResponse(f"/web/patients/{patient_id}", status_code=303)
    answer = await InternalFhir(request, session).post(
        f"/fhir/Patient/{record.strip()}/$unlink", {"resourceType": "Parameters"}
    )
    if not answer.ok:
        return failure(request, session, answer, patient_id, reading=False)
    stay = patient_id if record.strip() != patient_id else record.strip()
    return RedirectResponse(f"/web/patients/{stay}?done=unlink", status_code=303)
