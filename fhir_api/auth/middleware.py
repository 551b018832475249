"""The authentication middleware: 401 without a valid bearer token (RFC 6750 §3: ``WWW-Authenticate:
Bearer``), 403 when no scope covers the interaction or the access policy refuses; the caller's claims go to
``request.state``.

**Off switch.** ``EHR_AUTH=disabled-for-development`` (refused with ``EHR_ENV=production``): no token is
asked for, the ``X-EHR-*`` headers name the caller, and every response carries ``X-EHR-Auth:
disabled-for-development``.
"""

from __future__ import annotations

import sys
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ehr_core.application import UNKNOWN_INSTITUTION
from ehr_core.errors import Issue, RecordError
from ehr_core.settings import Settings
from fhir_api.auth.decision import Caller, scope_refusal
from fhir_api.auth.issuers import Issuers
from fhir_api.auth.needs import need_of
from fhir_api.auth.pending import PendingDecision, pending
from fhir_api.auth.scopes import constraint_holds, covered, parse_scopes
from fhir_api.auth.tokens import Issuer, TokenError, claimed_issuer, verify_token
from fhir_api.errors import headers_of, outcome_response, status_of
from fhir_api.threads import in_thread

__all__ = ["DISABLED", "AuthMiddleware"]

DISABLED = "disabled-for-development"
_PUBLIC = ("/fhir/metadata", "/fhir/.well-known/smart-configuration")


def _query(scope: Scope) -> dict[str, list[str]]:
    from urllib.parse import parse_qs

    return parse_qs(scope.get("query_string", b"").decode(), keep_blank_values=True)


class AuthMiddleware:
    """401 without a valid bearer token, 403 when no scope covers the interaction; claims → request.state."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.disabled = settings.auth_disabled
        if self.disabled and settings.production:
            raise RuntimeError("EHR_AUTH=disabled-for-development is refused with EHR_ENV=production")
        if not self.disabled and settings.auth not in ("required", ""):
            raise RuntimeError(f"EHR_AUTH={settings.auth!r}: use 'required' or '{DISABLED}'")
        self.issuers: Issuers | None = None if self.disabled else Issuers.configured(settings)
        if self.disabled:
            print(
                "ehr: WARNING — AUTHENTICATION IS DISABLED (EHR_AUTH=disabled-for-development): every caller is "
                "trusted, X-EHR-* headers name them. Never with real data.",
                file=sys.stderr,
                flush=True,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.disabled:

            async def announce(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), (b"x-ehr-auth", DISABLED.encode())]
                await send(message)

            await self.app(scope, receive, announce)
            return
        path = str(scope.get("path", ""))
        if not path.startswith("/fhir") or path in _PUBLIC:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await self._refuse(scope, receive, send, 401, "login", "a bearer token is required (Authorization: Bearer)")
            return
        assert self.issuers is not None
        try:
            # A token seen before is checked here, on the event loop (its signature was verified once; times,
            # audience, institution and scope are checked again now); only a new token, or one of this
            # server's own authorization server (its revocation is read from the database on every request),
            # goes to a worker thread.
            claims = self.issuers.verified_before(token.strip())
            if claims is None:
                claims = await in_thread(self._verify, request, token.strip())
        except TokenError as error:
            await self._refuse(scope, receive, send, 401, "login", f"invalid bearer token: {error}")
            return
        if str(claims.get("institution")) == UNKNOWN_INSTITUTION:
            # The name the domain gives a writer without an institution, never held to the write policy.
            await self._refuse(scope, receive, send, 401, "login", "the token names no institution")
            return
        grants = parse_scopes(str(claims["scope"]))
        query_string = scope.get("query_string", b"").decode()
        need = need_of(str(scope["method"]), path, query_string)
        searched = _query(scope) if scope["method"] == "GET" else None
        held = frozenset(g.resource_type for g in grants if g.constraints and constraint_holds(g, need, searched))
        caller = Caller(claims, grants, held)
        scope.setdefault("state", {})["ehr_caller"] = caller
        wide = [g for g in caller.grants if g.context in ("user", "system")]
        refusal = None
        if not covered(wide, need):  # only patient scopes may still cover it: that asks the views
            refusal = await in_thread(
                scope_refusal, request.app.state.services, caller, need, _query(scope), str(scope["method"])
            )
        if refusal is not None:
            await self._refuse(scope, receive, send, 403, "forbidden", refusal)
            return
        if not need.write and (need.target is not None or need.patient_operation is not None):
            reason = request.headers.get("x-ehr-break-glass", "").strip() or None
            due = PendingDecision(scope, caller, need, reason)
            entered = pending.set(due)
            try:
                await self.app(scope, receive, _decided(due, scope, receive, send))
            finally:
                pending.reset(entered)
            return
        await self.app(scope, receive, send)

    def _verify(self, request: Request, token: str) -> dict[str, Any]:
        """The token's claims: from a trusted issuer, or from this server's own authorization server
        (``/oauth``: its signing keys, ``aud`` = this FHIR base URL, and its client still enabled and the
        token not revoked, read at every request so a disabled client's tokens stop at once)."""
        from fhir_api.oauth.routes import base_of, issuer_of, oauth_store, signing_keys

        assert self.issuers is not None
        own = issuer_of(request)
        if claimed_issuer(token) != own:
            # A trusted issuer's token: its keys are read at start-up and never change under a running
            # server, so its signature is verified once and remembered (Issuers.verify).
            return self.issuers.verify(token)
        issuer = Issuer(own, "*", signing_keys(request.app).public(), f"{base_of(request)}/fhir")
        claims = verify_token(token, {own: issuer})
        refusal = oauth_store(request.app).access_refused(
            str(claims.get("client_id")), claims.get("jti"), claims.get("family")
        )
        if refusal is not None:
            raise TokenError(refusal)
        return claims

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="ehr-core"'} if status == 401 else None
        response = outcome_response(status, [Issue(code, message)], headers)
        await response(scope, receive, send)


def _decided(due: PendingDecision, scope: Scope, receive: Receive, send: Send) -> Send:
    """``send`` that lets no answer under 400 out before the access policy's decision: the route took it
    before reading (fhir_api/auth/pending.py), or it is taken here, before the first byte; refused, the answer
    is replaced by the refusal. A break-the-glass answer says so (``X-EHR-Break-Glass: granted``)."""
    replaced = False

    async def decided(message: Message) -> None:
        nonlocal replaced
        if replaced:
            return
        if message["type"] == "http.response.start":
            if int(message["status"]) < 400 and not due.decided:
                try:
                    await due.settled()
                except RecordError as error:
                    replaced = True
                    await outcome_response(status_of(error), error.issues, headers_of(error))(scope, receive, send)
                    return
            if due.decision is not None and due.decision.basis == "break-the-glass":
                message["headers"] = [*message.get("headers", []), (b"x-ehr-break-glass", b"granted")]
        await send(message)

    return decided
