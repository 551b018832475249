"""What every page shares: the user's session, rendering with the status and language cookie, the login
redirect, the same-origin check for forms, and showing what the API refused (with break-the-glass when the
API's policy allows it)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fhir_api.services import Services
from fhir_api.web import session as sessions
from fhir_api.web.fhir_client import FhirAnswer
from fhir_api.web.record import CURP_SYSTEM, NSS_SYSTEM
from fhir_api.web.render import render

__all__ = [
    "FHIR_ID",
    "failure",
    "login_redirect",
    "next_query",
    "patient_row",
    "render_page",
    "safe_next",
    "same_origin",
    "services_of",
    "session_of_request",
]

#: FHIR R4 id (§2.24.0.1 "id"): what a form may name as a Patient record
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
#: An institution's own record numbers (ehr_core/demo/people.py INSTITUTION_SYSTEMS)
RECORD_SYSTEM = re.compile(r"^urn:ehr-core:sid:([a-z-]+):expediente$")


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def session_of_request(request: Request) -> sessions.Session:
    return sessions.session_of(request, services_of(request).settings)


def render_page(
    request: Request, session: sessions.Session, template: str, status: int = 200, **context: Any
) -> Response:
    response = HTMLResponse(render(template, request=request, session=session, **context), status_code=status)
    lang = request.query_params.get("lang")
    if lang in sessions.LANGUAGES:
        sessions.remember_language(response, lang)
    return response


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/web/login?{urlencode({'next': target})}", status_code=303)


def same_origin(request: Request) -> bool:
    """Forms post only from our own pages (with the SameSite=Strict cookie, a guard against forged posts)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True
    return urlsplit(origin).netloc == request.headers.get("host")


def safe_next(target: str | None) -> str:
    return target if target and target.startswith("/web/") and not target.startswith("//") else "/web/"


def failure(
    request: Request,
    session: sessions.Session,
    answer: FhirAnswer,
    patient_id: str | None = None,
    reading: bool = True,
) -> Response:
    """What the API refused or failed, said on a page: 401 → sign in; 403 on a patient → break the glass.

    A refused *read* of a patient's record (``reading``) is the access-denied page: said in the reader's
    language, with the ways in (consent, referral, break the glass); a refused write shows the API's reason."""
    if answer.status == 401:
        return login_redirect(request)
    can_break_glass = answer.status == 403 and not session.auth_disabled and patient_id is not None
    # The break-the-glass prompt is a form to fill in, not a failed page (a 403 page logs a console error).
    status = 200 if can_break_glass else answer.status if 400 <= answer.status < 600 else 502
    return render_page(
        request,
        session,
        "error.html",
        status=status,
        problem=answer.problem(),
        answer_status=answer.status,
        patient_id=patient_id,
        can_break_glass=can_break_glass,
        access_denied=can_break_glass and reading,
    )


def next_query(bundle: dict[str, Any]) -> str | None:
    """The query of a Bundle's ``next`` link (the API's own paging cursor), to carry in the page's link."""
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return urlsplit(str(link["url"])).query
    return None


def institution_of_identifier(system: str) -> str | None:
    match = RECORD_SYSTEM.match(system)
    return match.group(1).upper() if match else None


def patient_row(patient: dict[str, Any]) -> dict[str, Any]:
    names = patient.get("name") or [{}]
    name = names[0] if isinstance(names[0], dict) else {}
    identifiers = [i for i in patient.get("identifier") or [] if isinstance(i, dict)]
    records = []
    institutions = []
    for identifier in identifiers:
        system = str(identifier.get("system", ""))
        institution = institution_of_identifier(system)
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
