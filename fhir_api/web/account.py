"""Static files, and signing in and out.

With auth on, "Entrar / Sign in" goes to this server's authorization server as its first-party client
``ehr-web`` (RFC 6749 §4.1, authorization code with PKCE S256, RFC 7636): there the user signs in at their
institution's OpenID Connect provider (production) or, in development, the local user store; the code comes
back to ``/web/callback``, is exchanged at the token endpoint (in process, as any client would), and the
access token becomes the session, its claims saying the user's institution, unit and role. Outside
production a pasted development token (``ehr token``) is accepted too, announced as development-only; in
production that form is refused. With auth off, the user may give a name.
"""

from __future__ import annotations

import secrets
import time
from html import escape
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fhir_api.auth import TokenError
from fhir_api.oauth.routes import (
    REQUEST_SECONDS,
    WEB_CLIENT_ID,
    WEB_REDIRECT_PATH,
    WEB_SCOPE,
    base_of,
    oauth_store,
    own_token_claims,
    pkce_challenge,
)
from fhir_api.threads import in_thread
from fhir_api.web import session as sessions
from fhir_api.web.fhir_client import InternalFhir
from fhir_api.web.pages import render_page, safe_next, same_origin, services_of, session_of_request
from fhir_api.web.render import static_file

__all__ = ["router"]

router = APIRouter(prefix="/web", include_in_schema=False)


@router.get("/static/{name}")
def static(name: str) -> Response:
    return static_file(name)


def _login(request: Request, next: str, refused: str | None = None, status: int = 200) -> Response:
    session = session_of_request(request)
    pasted = not services_of(request).settings.production
    return render_page(request, session, "login.html", status=status, next=next, refused=refused, pasted=pasted)


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    return _login(request, safe_next(next))


@router.post("/signin")
def sign_in(request: Request, next: str = Form("/web/")) -> Response:
    """To the authorization server with a fresh ``state`` (bound to this browser by a cookie) and a PKCE
    verifier kept on the server until the callback uses it once."""
    target = safe_next(next)
    if not same_origin(request):
        return _login(request, target, "cross-site form", 403)
    state, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(48)
    pending = {"verifier": verifier, "next": target}
    oauth_store(request.app).put("oauth_requests", f"web:{state}", pending, int(time.time()) + REQUEST_SECONDS)
    base = base_of(request)
    query = {
        "response_type": "code",
        "client_id": WEB_CLIENT_ID,
        "redirect_uri": f"{base}{WEB_REDIRECT_PATH}",
        "scope": WEB_SCOPE,
        "state": state,
        "aud": f"{base}/fhir",
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
    }
    response = RedirectResponse(f"/oauth/authorize?{urlencode(query)}", status_code=303)
    sessions.remember_sign_in(response, request, state, REQUEST_SECONDS)
    return response


@router.get("/callback")
async def callback(request: Request) -> Response:
    query = request.query_params
    state, expected = query.get("state", ""), request.cookies.get(sessions.SIGN_IN_COOKIE, "")
    pending: dict[str, Any] | None = None
    if state and expected and secrets.compare_digest(state, expected):
        pending = await in_thread(oauth_store(request.app).take, "oauth_requests", f"web:{state}", int(time.time()))
    if pending is None:
        return _login(request, "/web/", "unknown, used or expired sign-in (state)", 400)
    target = safe_next(pending.get("next"))
    if query.get("error") or not query.get("code"):
        reason = f"{query.get('error', 'no code')}: {query.get('error_description', '')}"
        return _login(request, target, reason, 403)
    form = {
        "grant_type": "authorization_code",
        "code": query["code"],
        "redirect_uri": f"{base_of(request)}{WEB_REDIRECT_PATH}",
        "client_id": WEB_CLIENT_ID,
        "code_verifier": str(pending["verifier"]),
    }
    lang = session_of_request(request).lang
    answer = await InternalFhir(request, sessions.Session(False, lang)).call("POST", "/oauth/token", form=form)
    body = answer.json() if answer.ok else None
    token = body.get("access_token") if isinstance(body, dict) else None
    claims = await in_thread(own_token_claims, request, token) if isinstance(token, str) else None
    if token is None or claims is None:
        return _login(request, target, f"token endpoint: {answer.problem()} {answer.body[:200]!r}", 403)
    # A page, not a redirect: after a hop through another site (the provider), a browser sends no
    # SameSite=Strict cookie on the rest of that redirect chain; a navigation from this page does.
    page = (
        f'<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,">'
        f'<meta http-equiv="refresh" content="0;url={escape(target)}">'
        f'<a href="{escape(target)}">Continuar / Continue</a>'
    )
    response = HTMLResponse(page, headers={"Cache-Control": "no-store"})
    sessions.remember_token(response, request, token, claims)
    sessions.forget_sign_in(response)
    return response


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
        return _login(request, target, "cross-site form", 403)
    response = RedirectResponse(target, status_code=303)
    if session.auth_disabled:
        sessions.remember_developer(
            response, request, {"user": user, "institution": institution, "unit": unit, "role": role}
        )
        return response
    if services_of(request).settings.production:
        # Pasted tokens are for development (like the development master key): users sign in above.
        return _login(request, target, "pasted tokens are off in production: sign in", 403)
    try:
        claims = await in_thread(sessions.login_claims, request, services_of(request).settings, token)
    except TokenError as error:
        # Shown again with the reason, as a form to correct (200: not a failed page load).
        return _login(request, target, str(error))
    sessions.remember_token(response, request, token.strip(), claims)
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """Signs out, and revokes the access token this server issued (RFC 7009 §2: it stops working at once)."""
    session = session_of_request(request)
    response = RedirectResponse("/web/login", status_code=303)
    if same_origin(request) and session.token and session.claims and session.claims.get("jti"):
        claims = own_token_claims(request, session.token)
        if claims is not None:
            oauth_store(request.app).revoke_access(str(claims["jti"]), int(claims["exp"]))
    sessions.forget(response)
    return response
