"""Who is using the web view: the user's bearer token kept in a cookie, the language, break-the-glass.

With auth on, the user signs in at this server's authorization server (``account.py``: the web view is its
first-party client ``ehr-web``), and the access token it issues is kept in an HttpOnly, SameSite=Strict
cookie; every FHIR call the pages make carries it as ``Authorization: Bearer``, so the API's middleware
decides exactly as for any client. Outside production a pasted development token (``ehr token ...``) is
accepted too, checked with the same trusted issuers the API uses (:class:`fhir_api.auth.Issuers`).
With ``EHR_AUTH=disabled-for-development`` there is no login: the user may name themself (institution, unit,
user, role), sent as the ``X-EHR-*`` headers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ehr_core.settings import Settings
from fhir_api.auth import Issuers, TokenError
from fhir_api.oauth.routes import own_token_claims

__all__ = ["LANGUAGES", "Session", "login_claims", "session_of"]

TOKEN_COOKIE = "ehr_token"
DEVELOPER_COOKIE = "ehr_developer"
#: The ``state`` of the sign-in under way in this browser: the callback is accepted only with it (RFC 6749
#: §10.12, no signing in a victim as someone else). SameSite=Lax: the callback arrives as a top-level
#: navigation from the institution's OpenID Connect provider, another site.
SIGN_IN_COOKIE = "ehr_sign_in"
LANG_COOKIE = "ehr_lang"
BREAK_GLASS_COOKIE = "ehr_break_glass"
LANGUAGES = ("es", "en")
_BREAK_GLASS_SECONDS = 15 * 60


@dataclass(frozen=True)
class Session:
    auth_disabled: bool
    lang: str
    token: str | None = None
    claims: dict[str, Any] | None = None
    developer: dict[str, str] | None = None
    #: (patient id, reason) of the current break-the-glass access, if any
    break_glass: tuple[str, str] | None = None

    @property
    def signed_in(self) -> bool:
        return self.auth_disabled or self.claims is not None

    @property
    def who(self) -> dict[str, str]:
        source = self.claims or self.developer or {}
        return {k: str(source[k]) for k in ("user", "institution", "unit", "role") if source.get(k)}

    def development_headers(self) -> dict[str, str]:
        values = {"user": "web", **(self.developer or {})}
        return {f"x-ehr-{k}": v for k, v in values.items() if k in ("user", "institution", "unit", "role") and v}

    def reason_for(self, patient_ids: list[str]) -> str | None:
        if self.break_glass is not None and self.break_glass[0] in patient_ids:
            return self.break_glass[1]
        return None


def _issuers(request: Request, settings: Settings) -> Issuers:
    state = request.app.state
    issuers: Issuers | None = getattr(state, "web_issuers", None)
    if issuers is None:
        issuers = Issuers.configured(settings)
        state.web_issuers = issuers
    return issuers


def login_claims(request: Request, settings: Settings, token: str) -> dict[str, Any]:
    """The token's verified claims; TokenError says why it is refused (the API would refuse it too).

    In production only this server's own access tokens (a sign-in at its authorization server)."""
    own = own_token_claims(request, token.strip())
    if own is not None:
        return own
    if settings.production:
        raise TokenError("only a sign-in at this server's authorization server is accepted in production")
    try:
        return _issuers(request, settings).verify(token.strip())
    except TokenError:
        request.app.state.web_issuers = None  # an issuer added since: read the directory again, once
        return _issuers(request, settings).verify(token.strip())


def session_of(request: Request, settings: Settings) -> Session:
    lang = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE) or "es"
    lang = lang if lang in LANGUAGES else "es"
    break_glass = None
    raw = request.cookies.get(BREAK_GLASS_COOKIE)
    if raw and "\t" in unquote(raw):
        patient, reason = unquote(raw).split("\t", 1)
        break_glass = (patient, reason)
    if settings.auth_disabled:
        developer = None
        raw_dev = request.cookies.get(DEVELOPER_COOKIE)
        if raw_dev:
            try:
                value = orjson.loads(unquote(raw_dev))
                developer = {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None
            except orjson.JSONDecodeError:
                developer = None
        return Session(True, lang, developer=developer, break_glass=break_glass)
    token = request.cookies.get(TOKEN_COOKIE)
    claims = None
    if token:
        try:
            claims = login_claims(request, settings, token)
        except TokenError:
            token = None  # expired or no longer trusted: ask for a new one
    return Session(False, lang, token=token, claims=claims, break_glass=break_glass)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def remember_token(response: Response, request: Request, token: str, claims: dict[str, Any]) -> None:
    seconds = max(60, int(float(claims.get("exp", time.time() + 3600)) - time.time()))
    response.set_cookie(
        TOKEN_COOKIE, token, max_age=seconds, path="/", httponly=True, samesite="strict", secure=_secure(request)
    )


def remember_developer(response: Response, request: Request, values: dict[str, str]) -> None:
    kept = {k: v.strip()[:100] for k, v in values.items() if v and v.strip()}
    response.set_cookie(
        DEVELOPER_COOKIE, quote(orjson.dumps(kept).decode()), path="/", httponly=True, samesite="strict"
    )


def remember_sign_in(response: Response, request: Request, state: str, seconds: int) -> None:
    response.set_cookie(
        SIGN_IN_COOKIE, state, max_age=seconds, path="/web/", httponly=True, samesite="lax", secure=_secure(request)
    )


def forget_sign_in(response: Response) -> None:
    response.delete_cookie(SIGN_IN_COOKIE, path="/web/")


def forget(response: Response) -> None:
    for name in (TOKEN_COOKIE, DEVELOPER_COOKIE, BREAK_GLASS_COOKIE):
        response.delete_cookie(name, path="/")


def remember_language(response: Response, lang: str) -> None:
    response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, path="/", samesite="lax")


def remember_break_glass(response: Response, request: Request, patient_id: str, reason: str) -> None:
    """Break-the-glass lasts a short while and for one patient; every read under it is logged by the API."""
    response.set_cookie(
        BREAK_GLASS_COOKIE,
        quote(f"{patient_id}\t{reason.strip()[:500]}"),
        max_age=_BREAK_GLASS_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
