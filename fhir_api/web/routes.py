"""The web view's pages (``/web/...``): server-rendered HTML over the FHIR API, in Spanish or English.

Every page gets its data through :class:`~fhir_api.web.fhir_client.InternalFhir` — the FHIR API itself,
with the signed-in user's token — so the pages obey exactly the API's access rules and every look at a
patient is in the audit log. Long lists are paged on the server; charts are inline SVG.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fhir_api.auth import TokenError
from fhir_api.services import Services
from fhir_api.web import compliance
from fhir_api.web import session as sessions
from fhir_api.web.asof import as_of, parse_moment
from fhir_api.web.charts import chart
from fhir_api.web.fhir_client import FhirAnswer, InternalFhir
from fhir_api.web.record import (
    CLUES_SYSTEM,
    CURP_SYSTEM,
    DIASTOLIC,
    GLUCOSE,
    NSS_SYSTEM,
    SYSTOLIC,
    WEIGHT,
    Record,
    arrange,
    institution_colour,
)
from fhir_api.web.render import render, static_file

__all__ = ["install", "router"]

router = APIRouter(prefix="/web", include_in_schema=False)

TIMELINE_PAGE = 25
AUDIT_PAGE = 50
MAX_EVERYTHING_PAGES = 50
_CURP = re.compile(r"^[A-Z]{4}\d{6}[HMX][A-Z]{5}[A-Z0-9]\d$")
#: FHIR R4 id (§2.24.0.1 "id"): what a form may name as a Patient record
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_RECORD_SYSTEM = re.compile(r"^urn:ehr-core:sid:([a-z-]+):expediente$")
ZONES = ["-06:00", "-05:00", "-07:00", "-08:00", "+00:00"]


def install(app: FastAPI) -> None:
    """Mount the web view on the app (the FHIR API stays under ``/fhir``)."""
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/web/", status_code=307)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _session(request: Request) -> sessions.Session:
    return sessions.session_of(request, _services(request).settings)


def _page(request: Request, session: sessions.Session, template: str, status: int = 200, **context: Any) -> Response:
    response = HTMLResponse(render(template, request=request, session=session, **context), status_code=status)
    lang = request.query_params.get("lang")
    if lang in sessions.LANGUAGES:
        sessions.remember_language(response, lang)
    return response


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/web/login?{urlencode({'next': target})}", status_code=303)


def _same_origin(request: Request) -> bool:
    """Forms post only from our own pages (with the SameSite=Strict cookie, a guard against forged posts)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True
    return urlsplit(origin).netloc == request.headers.get("host")


def _safe_next(target: str | None) -> str:
    return target if target and target.startswith("/web/") and not target.startswith("//") else "/web/"


def _failure(
    request: Request, session: sessions.Session, answer: FhirAnswer, patient_id: str | None = None
) -> Response:
    if answer.status == 401:
        return _login_redirect(request)
    can_break_glass = answer.status == 403 and not session.auth_disabled and patient_id is not None
    # The break-the-glass prompt is a form to fill in, not a failed page (a 403 page logs a console error).
    status = 200 if can_break_glass else answer.status if 400 <= answer.status < 600 else 502
    return _page(
        request,
        session,
        "error.html",
        status=status,
        problem=answer.problem(),
        answer_status=answer.status,
        patient_id=patient_id,
        can_break_glass=can_break_glass,
    )


# -- static files, language, login ------------------------------------------------------------------


@router.get("/static/{name}")
def static(name: str) -> Response:
    return static_file(name)


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    session = _session(request)
    return _page(request, session, "login.html", next=_safe_next(next), refused=None)


@router.post("/login")
async def login(
    request: Request,
    token: str = Form(""),
    next: str = Form("/web/"),
    user: str = Form(""),
    institution: str = Form(""),
    unit: str = Form(""),
    role: str = Form(""),
) -> Response:
    session = _session(request)
    target = _safe_next(next)
    if not _same_origin(request):
        return _page(request, session, "login.html", status=403, next=target, refused="cross-site form")
    response = RedirectResponse(target, status_code=303)
    if session.auth_disabled:
        sessions.remember_developer(
            response, request, {"user": user, "institution": institution, "unit": unit, "role": role}
        )
        return response
    try:
        claims = await run_in_threadpool(sessions.login_claims, request, _services(request).settings, token)
    except TokenError as error:
        # Shown again with the reason, as a form to correct (200: not a failed page load).
        return _page(request, session, "login.html", next=target, refused=str(error))
    sessions.remember_token(response, request, token.strip(), claims)
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse("/web/login", status_code=303)
    sessions.forget(response)
    return response


# -- search ------------------------------------------------------------------------------------------


def search_parameters(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(how, FHIR search parameters) for what was typed: a CURP, an identifier (NSS, record number), a name."""
    value = text.strip()
    upper = value.upper()
    if _CURP.match(upper):
        return "curp", [("identifier", f"{CURP_SYSTEM}|{upper}")]
    if " " not in value and any(c.isdigit() for c in value):
        return "identifier", [("identifier", value)]
    return "name", [("name", value)]


def _institution_of_identifier(system: str) -> str | None:
    match = _RECORD_SYSTEM.match(system)
    return match.group(1).upper() if match else None


def _patient_row(patient: dict[str, Any]) -> dict[str, Any]:
    names = patient.get("name") or [{}]
    name = names[0] if isinstance(names[0], dict) else {}
    identifiers = [i for i in patient.get("identifier") or [] if isinstance(i, dict)]
    records = []
    institutions = []
    for identifier in identifiers:
        system = str(identifier.get("system", ""))
        institution = _institution_of_identifier(system)
        if institution:
            institutions.append(institution)
            records.append((institution, str(identifier.get("value"))))
    return {
        "id": patient.get("id"),
        "name": " ".join([*(name.get("given") or []), str(name.get("family") or "")]).strip(),
        "birth": patient.get("birthDate", ""),
        "gender": patient.get("gender", "unknown"),
        "curp": next((i.get("value") for i in identifiers if i.get("system") == CURP_SYSTEM), ""),
        "nss": next((i.get("value") for i in identifiers if i.get("system") == NSS_SYSTEM), ""),
        "records": records,
        "institutions": institutions,
    }


@router.get("/")
async def search_page(request: Request, q: str = "", cursor: str | None = None) -> Response:
    session = _session(request)
    if not session.signed_in:
        return _login_redirect(request)
    how, rows, more = None, None, None
    if q.strip():
        how, params = search_parameters(q)
        query = cursor if cursor else urlencode([*params, ("_count", "20")])
        answer = await InternalFhir(request, session).get("/fhir/Patient", query)
        if not answer.ok:
            return _failure(request, session, answer)
        bundle = answer.json() or {}
        rows = [
            _patient_row(e["resource"])
            for e in bundle.get("entry", [])
            if isinstance(e, dict) and (e.get("resource") or {}).get("resourceType") == "Patient"
        ]
        more = _next_query(bundle)
    return _page(request, session, "search.html", q=q, how=how, rows=rows, more=more, colour=institution_colour)


def _next_query(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return urlsplit(str(link["url"])).query
    return None


# -- the unified record --------------------------------------------------------------------------------


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
        resources.extend(e["resource"] for e in bundle.get("entry", []) if isinstance(e, dict) and "resource" in e)
        following = _next_query(bundle)
        if following is None:
            break
        query = following
    return resources, None


async def _unit_names(fhir: InternalFhir, resources: list[dict[str, Any]]) -> dict[str, str]:
    """Location id and CLUES → the unit's name (Locations are outside the patient's compartment)."""
    from fhir_api.web.record import source_of

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
    from fhir_api.web.record import source_of

    return {str(r.get("id")): source_of(r)[0] for r in resources if r.get("resourceType") == "Patient"}


async def _load_record(
    request: Request, session: sessions.Session, patient_id: str
) -> tuple[InternalFhir, list[dict[str, Any]], dict[str, str], FhirAnswer | None, str | None]:
    fhir = InternalFhir(request, session)
    reason = session.reason_for([patient_id])
    resources, failure = await _everything(fhir, patient_id, reason)
    if failure is not None:
        return fhir, [], {}, failure, reason
    names = await _unit_names(fhir, resources)
    return fhir, resources, names, None, reason


def _subject(resources: list[dict[str, Any]], patient_id: str) -> dict[str, Any]:
    for resource in resources:
        if resource.get("resourceType") == "Patient" and resource.get("id") == patient_id:
            return _patient_row(resource)
    return {"id": patient_id, "name": "", "birth": "", "gender": "unknown", "curp": "", "nss": ""}


def _timeline_page(record: Record, page: int) -> tuple[list[Any], int, int]:
    pages = max(1, -(-len(record.timeline) // TIMELINE_PAGE))
    page = min(max(1, page), pages)
    start = (page - 1) * TIMELINE_PAGE
    return record.timeline[start : start + TIMELINE_PAGE], page, pages


@router.get("/patients/{patient_id}")
async def record_page(request: Request, patient_id: str, page: int = 1, done: str | None = None) -> Response:
    session = _session(request)
    if not session.signed_in:
        return _login_redirect(request)
    fhir, resources, names, failure, reason = await _load_record(request, session, patient_id)
    if failure is not None:
        return _failure(request, session, failure, patient_id)
    record = arrange(resources, names, date.today())
    links = await _links(fhir, patient_id, reason)
    items, page, pages = _timeline_page(record, page)
    from fhir_api.web.i18n import translator

    return _page(
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
    session = _session(request)
    if not session.signed_in:
        return _login_redirect(request)
    zone = zone if zone in ZONES else "-06:00"
    offset = timezone(timedelta(hours=int(zone[:3]), minutes=int(zone[0] + zone[4:])))
    if not at:
        at = datetime.now(UTC).astimezone(offset).strftime("%Y-%m-%dT%H:%M:%S")
    try:
        moment = parse_moment(at, zone)
    except ValueError:
        return _page(
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
    fhir, resources, names, failure, reason = await _load_record(request, session, patient_id)
    if failure is not None:
        return _failure(request, session, failure, patient_id)
    then = await as_of(fhir, resources, moment, reason)
    record = arrange(then.resources, names, moment.date())
    items, page, pages = _timeline_page(record, page)
    from fhir_api.web.i18n import translator

    return _page(
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
    session = _session(request)
    if not _same_origin(request) or not reason.strip():
        return RedirectResponse(f"/web/patients/{patient_id}", status_code=303)
    response = RedirectResponse(_safe_next(next) if next else f"/web/patients/{patient_id}", status_code=303)
    if not session.auth_disabled:
        sessions.remember_break_glass(response, request, patient_id, reason)
    return response


@router.post("/patients/{patient_id}/link")
async def link(request: Request, patient_id: str, record: str = Form(...), person: str = Form(...)) -> Response:
    """A data steward confirms a link: ``Patient/{record}/$link`` with ``person`` (the API's operation)."""
    session = _session(request)
    if not _same_origin(request) or not _FHIR_ID.match(record.strip()):
        return RedirectResponse(f"/web/patients/{patient_id}", status_code=303)
    body = {"resourceType": "Parameters", "parameter": [{"name": "person", "valueString": person.strip()}]}
    answer = await InternalFhir(request, session).post(f"/fhir/Patient/{record.strip()}/$link", body)
    if not answer.ok:
        return _failure(request, session, answer, patient_id)
    return RedirectResponse(f"/web/patients/{patient_id}?done=link", status_code=303)


@router.post("/patients/{patient_id}/unlink")
async def unlink(request: Request, patient_id: str, record: str = Form(...)) -> Response:
    """A data steward undoes a link: ``Patient/{record}/$unlink``."""
    session = _session(request)
    if not _same_origin(request) or not _FHIR_ID.match(record.strip()):
        return RedirectResponse(f"/web/patients/{patient_id}", status_code=303)
    answer = await InternalFhir(request, session).post(f"/fhir/Patient/{record.strip()}/$unlink", {})
    if not answer.ok:
        return _failure(request, session, answer, patient_id)
    stay = patient_id if record.strip() != patient_id else record.strip()
    return RedirectResponse(f"/web/patients/{stay}?done=unlink", status_code=303)


# -- compliance ---------------------------------------------------------------------------------------


def _access_row(event: dict[str, Any]) -> dict[str, Any]:
    agents: list[dict[str, Any]] = event.get("agent") or []
    client: dict[str, Any] = next((a for a in agents if a.get("requestor")), {})
    organization: dict[str, Any] = next(
        (a for a in agents if not a.get("requestor") and (a.get("who") or {}).get("identifier")), {}
    )
    server: dict[str, Any] = next((a for a in agents if (a.get("network") or {}).get("type") == "5"), {})
    references = [
        str((e.get("what") or {}).get("reference"))
        for e in event.get("entity") or []
        if (e.get("what") or {}).get("reference")
    ]
    subtypes = [str(c.get("code")) for c in event.get("subtype") or []]
    return {
        "recorded": str(event.get("recorded", "")),
        "user": str(client.get("altId") or client.get("name") or ""),
        "role": ((client.get("role") or [{}])[0]).get("text", ""),
        "institution": str(((organization.get("who") or {}).get("identifier") or {}).get("value", "")),
        "unit": str(((client.get("location") or {}).get("identifier") or {}).get("value", "")),
        "address": str((client.get("network") or {}).get("address", "")),
        "purpose": ",".join(
            str(c.get("code")) for p in client.get("purposeOfUse") or [] for c in (p.get("coding") or [])
        ),
        "what": " ".join(subtypes),
        "path": str((server.get("network") or {}).get("address", "")),
        "references": references,
        "action": event.get("action", ""),
        "outcome": str(event.get("outcome", "")),
        "outcome_text": event.get("outcomeDesc", ""),
        "break_glass": None,
    }


def _change_row(provenance: dict[str, Any]) -> dict[str, Any]:
    agent = (provenance.get("agent") or [{}])[0]
    who = agent.get("who") or {}
    on_behalf = agent.get("onBehalfOf") or {}
    return {
        "recorded": str(provenance.get("recorded", "")),
        "targets": [str(t.get("reference")) for t in provenance.get("target") or []],
        "activity": ((provenance.get("activity") or {}).get("coding") or [{}])[0].get("code", ""),
        "user": str(who.get("display") or (who.get("identifier") or {}).get("value") or ""),
        "institution": str(on_behalf.get("display") or (on_behalf.get("identifier") or {}).get("value") or ""),
        "unit": str(
            ((provenance.get("location") or {}).get("identifier") or {}).get("value")
            or (provenance.get("location") or {}).get("display")
            or ""
        ),
        "reason": ",".join(str(c.get("code")) for r in provenance.get("reason") or [] for c in (r.get("coding") or [])),
    }


def _cursor(query: str | None, name: str) -> str | None:
    if not query:
        return None
    return dict(parse_qsl(query)).get(name)


@router.get("/patients/{patient_id}/audit")
async def audit_page(
    request: Request,
    patient_id: str,
    before: str | None = None,
    changes_before: str | None = None,
    verify: str | None = None,
) -> Response:
    session = _session(request)
    if not session.signed_in:
        return _login_redirect(request)
    fhir = InternalFhir(request, session)
    reason = session.reason_for([patient_id])
    person = await fhir.get(f"/fhir/Patient/{patient_id}/$person", break_glass=reason)
    records = [patient_id]
    if person.ok:
        for link in (person.json() or {}).get("link") or []:
            record = str((link.get("target") or {}).get("reference", "")).removeprefix("Patient/")
            if record and record not in records:
                records.append(record)
    patients = ",".join(records)
    access_params = [("patient", patients), ("_count", str(AUDIT_PAGE))]
    change_params = [("patient", patients), ("_count", str(AUDIT_PAGE))]
    if before and before.lstrip("-").isdigit():
        access_params.append(("_page_before", before))
    if changes_before and changes_before.lstrip("-").isdigit():
        change_params.append(("_page_before", changes_before))
    accesses, changes, record_head, audit_head = await asyncio.gather(
        fhir.get("/fhir/AuditEvent", access_params),
        fhir.get("/fhir/Provenance", change_params),
        fhir.get("/fhir/$ledger-head"),
        fhir.get("/fhir/$ledger-head", {"log": "audit"}),
    )
    if not accesses.ok:
        return _failure(request, session, accesses, patient_id)
    services = _services(request)
    decisions = await run_in_threadpool(compliance.break_glass_for, services, records)
    access_bundle = accesses.json() or {}
    rows = [_access_row(e["resource"]) for e in access_bundle.get("entry", []) if "resource" in e]
    for row in rows:
        row["break_glass"] = compliance.is_break_glass(row, decisions)
    change_bundle = changes.json() if changes.ok else {}
    change_rows = [_change_row(e["resource"]) for e in (change_bundle or {}).get("entry", []) if "resource" in e]
    ledger_allowed = record_head.status != 403
    ledgers = []
    if ledger_allowed:
        fresh = verify == "now"
        for name, head in (("ledger", record_head), ("audit_ledger", audit_head)):
            status = await run_in_threadpool(compliance.ledger_status, services, name, fresh)
            checked = datetime.fromtimestamp(status.checked_at, UTC).isoformat(timespec="seconds")
            ledgers.append(
                {"name": name, "status": status, "head": head.json() if head.ok else None, "checked": checked}
            )
    return _page(
        request,
        session,
        "audit.html",
        patient_id=patient_id,
        records=records,
        rows=rows,
        decisions=decisions,
        more=_cursor(_next_query(access_bundle), "_page_before"),
        change_rows=change_rows,
        changes_problem=None if changes.ok else changes.problem(),
        more_changes=_cursor(_next_query(change_bundle or {}), "_page_before"),
        ledgers=ledgers,
        ledger_allowed=ledger_allowed,
        before=before,
        break_glass=reason,
        now=datetime.now(UTC),
    )
