"""Static files, and signing in and out (a development token with auth on; a name with auth off)."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from fhir_api.auth import TokenError
from fhir_api.web import session as sessions
from fhir_api.web.pages import render_page, safe_next, same_origin, services_of, session_of_request
from fhir_api.web.render import static_file

__all__ = ["router"]

router = APIRouter(prefix="/web", include_in_schema=False)


@router.get("/static/{name}")
def static(name: str) -> Response:
    return static_file(name)


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    session = session_of_request(request)
    return render_page(request, session, "login.html", next=safe_next(next), refused=None)


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
    session = session_of_request(request)
    target = safe_next(next)
    if not same_origin(request):
        return render_page(request, session, "login.html", status=403, next=target, refused="cross-site form")
    response = RedirectResponse(target, status_code=303)
    if session.auth_disabled:
        sessions.remember_developer(
            response, request, {"user": user, "institution": institution, "unit": unit, "role": role}
        )
        return response
    try:
        claims = await run_in_threadpool(sessions.login_claims, request, services_of(request).settings, token)
    except TokenError as error:
        # Shown again with the reason, as a form to correct (200: not a failed page load).
        return render_page(request, session, "login.html", next=target, refused=str(error))
    sessions.remember_token(response, request, token.strip(), claims)
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse("/web/login", status_code=303)
    sessions.forget(response)
    return response
