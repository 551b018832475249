"""The unified record's "launch app" action: an EHR launch (SMART App Launch §EHR launch) of a SMART app
with the patient (and encounter) the user has open. The app gets ``launch`` and ``iss`` in its launch URL,
and at the authorization server a user of the same institution gets a token in that context."""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from fhir_api.oauth.routes import base_of, create_launch
from fhir_api.web.pages import login_redirect, same_origin, session_of_request

__all__ = ["router"]

router = APIRouter(prefix="/web", include_in_schema=False)


@router.post("/patients/{patient_id}/launch")
def launch_app(request: Request, patient_id: str, app: str = Form(...), encounter: str | None = Form(None)) -> Response:
    session = session_of_request(request)
    if not session.signed_in:
        return login_redirect(request)
    institution = session.who.get("institution")
    target = urlsplit(app)
    if not same_origin(request) or not institution or target.scheme not in ("http", "https") or not target.netloc:
        return Response("launch refused: a same-origin post naming an http(s) app URL", 400)
    launch_id = create_launch(request.app, institution, patient_id, encounter)
    query = urlencode({"launch": launch_id, "iss": f"{base_of(request)}/fhir"})
    return RedirectResponse(f"{app}{'&' if target.query else '?'}{query}", 303)
