"""The authorization server's endpoints, under ``/oauth`` (outside ``/fhir``: no bearer token asked for).

- ``GET /oauth/authorize`` (RFC 6749 §4.1.1, SMART App Launch 2.x §App Launch): ``response_type=code``,
  a registered ``client_id`` and one of its ``redirect_uri`` values exactly, ``state``, ``aud`` = this server's
  FHIR base URL, PKCE ``code_challenge`` with ``code_challenge_method=S256`` (RFC 7636; required, ``plain``
  refused). Errors about the client or the redirect URI are shown, never redirected (RFC 6749 §4.1.2.1);
  others go back to the redirect URI with ``error`` and ``state``.
- ``POST /oauth/authorize/login`` and ``/consent``: the development user store's login (or the institution's
  OpenID Connect provider, ``openid.py``), the consent screen listing the scopes, and the patient picker of a
  standalone launch asking for ``launch/patient``.
- ``GET /oauth/.well-known/openid-configuration``: OpenID Connect discovery of this issuer (its id_tokens).
- ``POST /oauth/token``: ``authorization_code`` (code once, 60 s, PKCE verifier, same client and redirect
  URI), ``refresh_token`` (rotated on every use; a used one presented again revokes its family, RFC 9700
  §4.14.2; a wider scope is ``invalid_scope``, RFC 6749 §6), ``client_credentials`` with a
  ``private_key_jwt`` assertion (SMART Backend Services: RS384 or ES384, ``iss`` = ``sub`` = client,
  ``aud`` = this endpoint, ``exp`` at most 5 minutes ahead, ``jti`` never seen before).
- ``GET /oauth/jwks``: the signing keys (old ones still listed until their tokens expire).
- ``POST /oauth/introspect`` (RFC 7662) and ``POST /oauth/revoke`` (RFC 7009).
- ``POST /oauth/launch``: an EHR launch context (patient, encounter) for the web view's "launch app".

The web view (``/web``) is this server's own first-party client, ``ehr-web``: public (it runs in this
process and keeps no secret of its own) with PKCE, its redirect URI a path on this server, serving the users
of every institution (each signs in at their own institution's provider, or the development store); being
the EHR itself, it asks no consent.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import urllib.request
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from fhir_api.auth.signing import SigningKeys
from fhir_api.auth.tokens import Issuer as TrustedIssuer
from fhir_api.auth.tokens import TokenError, verify_token
from fhir_api.oauth.pages import consent_page, error_page, login_page
from fhir_api.request import public_root
from projections.oauth import Client, OAuthStore

__all__ = [
    "ACCESS_SECONDS",
    "AUTHORIZE_FIELDS",
    "WEB_CLIENT_ID",
    "WEB_REDIRECT_PATH",
    "WEB_SCOPE",
    "check_authorize",
    "consent_screen",
    "issuer_of",
    "oauth_store",
    "pkce_challenge",
    "router",
    "serves",
    "signing_keys",
]

router = APIRouter(prefix="/oauth", include_in_schema=False)

ACCESS_SECONDS = 3600
CODE_SECONDS = 60
REFRESH_SECONDS = 24 * 3600
REQUEST_SECONDS = 600
#: SMART Backend Services: a client assertion's exp is at most five minutes in the future.
ASSERTION_MAX_SECONDS = 300
ASSERTION_ALGS = ["RS384", "ES384"]
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Scopes a user may grant an app at the consent screen (system/ scopes are for backend services only).
_CONTEXT = {"openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter", "offline_access"}
_CONTEXT |= {"online_access"}
#: The web view's client (registered at first use; ``ehr clients disable ehr-web`` stops its sessions).
WEB_CLIENT_ID = "ehr-web"
WEB_REDIRECT_PATH = "/web/callback"
#: What a clinician's web session may do: who they are (``openid fhirUser``: the id_token naming their
#: Practitioner), and read, search, create and update any record the access policy lets their institution
#: see (``user/``: not one patient's context). No delete (the web view deletes nothing), no system/ scopes,
#: no refresh (the session ends with its access token). The role is not narrowed here: it travels in the
#: token's claims, and the access policy (institution, consent, referral, break-the-glass) decides per call.
WEB_SCOPE = "openid fhirUser user/*.rs user/*.cu"
#: A client's institution that stands for "the signed-in user's own" (only the web view's).
ANY_INSTITUTION = "*"


def _now() -> int:
    return int(time.time())


def oauth_store(app: Any) -> OAuthStore:
    """The authorization server's rows, in the views' database (created on first use)."""
    store: OAuthStore | None = getattr(app.state, "oauth_store", None)
    if store is None:
        store = OAuthStore(app.state.services.views)
        web = Client(WEB_CLIENT_ID, ANY_INSTITUTION, "ehr-core web", [WEB_REDIRECT_PATH], None, None, True, False)
        store.add_client(web, _now(), keep_existing=True)
        app.state.oauth_store = store
    return store


def signing_keys(app: Any) -> SigningKeys:
    keys: SigningKeys | None = getattr(app.state, "oauth_keys", None)
    if keys is None:
        keys = SigningKeys(app.state.services.settings)
        app.state.oauth_keys = keys
    return keys


def base_of(request: Request) -> str:
    return public_root(request)


def issuer_of(request: Request) -> str:
    return f"{base_of(request)}/oauth"


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2, S256: BASE64URL(SHA256(verifier)), unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def serves(client: Client, institution: str | None) -> bool:
    """Whether ``client`` may act for a user of ``institution`` (its own; the web view's: anyone's)."""
    return client.institution in (ANY_INSTITUTION, institution)


def _error(error: str, description: str, status: int = 400) -> JSONResponse:
    """RFC 6749 §5.2: ``{"error", "error_description"}``; ``invalid_client`` is 401 (with a challenge)."""
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="ehr-core"'
    return JSONResponse({"error": error, "error_description": description}, status, headers=headers)


def _redirect_error(redirect_uri: str, state: str | None, error: str, description: str) -> RedirectResponse:
    query = {"error": error, "error_description": description, **({"state": state} if state else {})}
    return RedirectResponse(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{urlencode(query)}", 302)


# Authorization endpoint ------------------------------------------------------------------------------------
AUTHORIZE_FIELDS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
    "launch",
    "nonce",
)


def check_authorize(request: Request, params: dict[str, str]) -> tuple[Client | None, Response | None]:
    store = oauth_store(request.app)
    client = store.client(params.get("client_id", ""))
    if client is None or client.disabled:
        return None, HTMLResponse(error_page("invalid_request", "unknown or disabled client_id"), 400)
    redirect_uri = params.get("redirect_uri", "")
    # A registered path (the web view's) is on this server: its absolute URL is compared.
    registered = [uri if "://" in uri else f"{base_of(request)}{uri}" for uri in client.redirect_uris]
    if redirect_uri not in registered:  # RFC 6749 §3.1.2.3: exact match against a registered URI
        return None, HTMLResponse(error_page("invalid_request", "redirect_uri is not registered for this client"), 400)
    state = params.get("state")
    if params.get("response_type") != "code":
        return None, _redirect_error(redirect_uri, state, "unsupported_response_type", "response_type must be code")
    if not state:
        return None, _redirect_error(redirect_uri, state, "invalid_request", "state is required")
    if params.get("aud", "").rstrip("/") != f"{base_of(request)}/fhir":
        return None, _redirect_error(redirect_uri, state, "invalid_request", "aud must be this server's FHIR base URL")
    if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
        return None, _redirect_error(
            redirect_uri, state, "invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256"
        )
    if params.get("launch") and store.get("oauth_launches", params["launch"], _now()) is None:
        return None, _redirect_error(redirect_uri, state, "invalid_request", "unknown or expired launch")
    return client, None


@router.get("/authorize")
def authorize(request: Request) -> Response:
    params = {k: v for k, v in request.query_params.items() if k in AUTHORIZE_FIELDS}
    client, refusal = check_authorize(request, params)
    if refusal is not None:
        return refusal
    assert client is not None
    return HTMLResponse(_login_page(request, params, client), headers={"Cache-Control": "no-store"})


def _login_page(request: Request, params: dict[str, str], client: Client, message: str | None = None) -> str:
    """The institution's OpenID Connect providers (production), and the development user store's form
    (never in production)."""
    settings = request.app.state.services.settings
    providers = {
        key: provider.display_name or key for key, provider in settings.oidc_providers.items() if serves(client, key)
    }
    return login_page(params, client.name, message, providers, local=not settings.production)


@router.post("/authorize/login")
async def login(request: Request) -> Response:
    form = {k: str(v) for k, v in (await request.form()).items()}
    params = {k: v for k, v in form.items() if k in AUTHORIZE_FIELDS}
    client, refusal = check_authorize(request, params)
    if refusal is not None:
        return refusal
    assert client is not None
    if request.app.state.services.settings.production:
        # The local user store is development-only (like the development master key).
        return HTMLResponse(error_page("access_denied", "the development user store is off in production"), 403)
    store = oauth_store(request.app)
    user = store.user(form.get("username", ""))
    if (
        user is None
        or not _password_ok(user.password_hash, form.get("password", ""))
        or not serves(client, user.institution)
    ):
        page = _login_page(request, params, client, "Usuario o contraseña incorrectos / Wrong user or password")
        return HTMLResponse(page, 401)
    signed_in = {"claims": _user_claims(user), "practitioner": user.practitioner, "development": True}
    return consent_screen(request, params, client, signed_in)


def consent_screen(request: Request, params: dict[str, str], client: Client, signed_in: dict[str, Any]) -> Response:
    """After the user signed in (the development store, or their institution's OpenID Connect provider):
    ``signed_in`` holds the token claims that say who they are (institution, unit, user, role), their
    Practitioner id; the consent screen lists the scopes, with the patient picker of a standalone launch."""
    store = oauth_store(request.app)
    institution = signed_in["claims"]["institution"]
    scopes = _user_scopes(params.get("scope", ""))
    if client.client_id == WEB_CLIENT_ID:  # granted without a consent screen: never more than a session needs
        scopes = [item for item in scopes if item in WEB_SCOPE.split()]
    launch = store.get("oauth_launches", params["launch"], _now()) if params.get("launch") else None
    if launch is not None and launch.get("institution") != institution:
        return _redirect_error(
            params["redirect_uri"], params.get("state"), "access_denied", "launch of another institution"
        )
    body = {"params": params, **signed_in, "scopes": scopes, "launch": launch}
    if client.client_id == WEB_CLIENT_ID:
        return _issue_code(request, client, body, None)
    request_id = secrets.token_urlsafe(24)
    store.put("oauth_requests", request_id, body, _now() + REQUEST_SECONDS)
    patients = None
    if "launch/patient" in scopes and not (launch and launch.get("patient")):
        patients = store.institution_patients(institution)  # the standalone launch's patient picker
    page = consent_page(request_id, client.name, scopes, patients, signed_in.get("development", False))
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


@router.post("/authorize/consent")
async def consent(request: Request) -> Response:
    form = {k: str(v) for k, v in (await request.form()).items()}
    store = oauth_store(request.app)
    pending = store.get("oauth_requests", form.get("request_id", ""), _now())
    if pending is None or "claims" not in pending:  # (a request pending since before an upgrade: sign in again)
        return HTMLResponse(error_page("invalid_request", "unknown or expired authorization request"), 400)
    params: dict[str, str] = pending["params"]
    client, refusal = check_authorize(request, params)
    if refusal is not None:
        return refusal
    assert client is not None
    redirect_uri, state = params["redirect_uri"], params.get("state")
    if form.get("decision") != "allow":
        return _redirect_error(redirect_uri, state, "access_denied", "the user denied the request")
    return _issue_code(request, client, pending, form.get("patient"))


def _issue_code(request: Request, client: Client, pending: dict[str, Any], picked: str | None) -> Response:
    """The authorization code of an allowed request (RFC 6749 §4.1.2), back to the client's redirect URI."""
    store = oauth_store(request.app)
    params: dict[str, str] = pending["params"]
    redirect_uri, state = params["redirect_uri"], params.get("state")
    claims: dict[str, Any] = pending["claims"]
    launch = pending.get("launch") or {}
    patient = launch.get("patient")
    if "launch/patient" in pending["scopes"] and not patient:
        patient = picked
        if not patient or not store.patient_owned(claims["institution"], patient):
            return _redirect_error(redirect_uri, state, "invalid_request", "pick a patient of your institution")
    code = secrets.token_urlsafe(32)
    body = {
        "redirect_uri": redirect_uri,
        "code_challenge": params["code_challenge"],
        "scope": " ".join(pending["scopes"]),
        "nonce": params.get("nonce"),
        "family": secrets.token_urlsafe(16),
        "claims": claims,
        "practitioner": pending.get("practitioner"),
        "patient": patient,
        "encounter": launch.get("encounter") if "launch/encounter" in pending["scopes"] or launch else None,
    }
    store.add_code(code, client.client_id, body, _now() + CODE_SECONDS)
    query = urlencode({"code": code, "state": state})
    return RedirectResponse(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{query}", 302)


def _password_ok(password_hash: str, password: str) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import Argon2Error, InvalidHashError

    try:
        return PasswordHasher().verify(password_hash, password)
    except (Argon2Error, InvalidHashError):
        return False


def _user_scopes(scope: str) -> list[str]:
    """What a user may grant: patient/ and user/ scopes and the launch-context ones; never system/."""
    kept = []
    for item in scope.split():
        if (item in _CONTEXT or item.startswith(("patient/", "user/"))) and item not in kept:
            kept.append(item)
    return kept


def _user_claims(user: Any) -> dict[str, Any]:
    claims = {"institution": user.institution, "unit": user.unit, "user": user.username, "role": user.role}
    return {"sub": user.username, "purpose": "TREAT", **{k: v for k, v in claims.items() if v}}


# Token endpoint --------------------------------------------------------------------------------------------
def _client_keys(client: Client) -> KeySet | None:
    jwks = client.jwks
    if jwks is None and client.jwks_url:
        try:
            with urllib.request.urlopen(client.jwks_url, timeout=5) as answer:
                jwks = orjson.loads(answer.read(65536))
        except (OSError, ValueError):
            return None
    if not jwks:
        return None
    try:
        return KeySet.import_key_set(jwks)  # type: ignore[arg-type]  # a JWK Set parsed from JSON
    except (JoseError, ValueError, KeyError):
        return None


def _authenticate(request: Request, form: dict[str, str]) -> tuple[Client | None, JSONResponse | None]:
    """The calling client: a ``private_key_jwt`` assertion (RFC 7523 §2.2, SMART Backend Services), or a
    public client's bare ``client_id`` (RFC 6749 §2.1, only for clients registered as public)."""
    store = oauth_store(request.app)
    assertion = form.get("client_assertion")
    if assertion is None:
        client = store.client(form.get("client_id", ""))
        if client is None or client.disabled or not client.public:
            return None, _error("invalid_client", "client authentication failed (private_key_jwt required)", 401)
        return client, None
    if form.get("client_assertion_type") != JWT_BEARER:
        return None, _error("invalid_client", f"client_assertion_type must be {JWT_BEARER}", 401)
    try:
        unverified = orjson.loads(base64.urlsafe_b64decode(assertion.split(".")[1] + "=="))
        client_id = str(unverified["iss"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None, _error("invalid_client", "the client assertion is not a JWT", 401)
    client = store.client(client_id)
    if client is None or client.disabled:
        return None, _error("invalid_client", "unknown or disabled client", 401)
    keys = _client_keys(client)
    if keys is None:
        return None, _error("invalid_client", "the client has no usable public keys (jwks)", 401)
    try:
        verified = jws.deserialize_compact(assertion, keys, algorithms=ASSERTION_ALGS)
        claims = orjson.loads(verified.payload)
    except (JoseError, ValueError):
        return None, _error("invalid_client", "the client assertion's signature does not verify (RS384/ES384)", 401)
    now = _now()
    token_endpoint = f"{issuer_of(request)}/token"
    exp, jti = claims.get("exp"), claims.get("jti")
    if claims.get("sub") != client_id:
        return None, _error("invalid_client", "the client assertion's iss and sub must both be the client_id", 401)
    aud = claims.get("aud")
    if token_endpoint not in (aud if isinstance(aud, list) else [aud]):
        return None, _error("invalid_client", f"the client assertion's aud must be {token_endpoint}", 401)
    if not isinstance(exp, int) or isinstance(exp, bool) or exp < now:
        return None, _error("invalid_client", "the client assertion has expired (exp)", 401)
    if exp > now + ASSERTION_MAX_SECONDS:
        return None, _error("invalid_client", "the client assertion's exp is more than 5 minutes ahead", 401)
    if not isinstance(jti, str) or not jti:
        return None, _error("invalid_client", "the client assertion has no jti", 401)
    if not store.claim_assertion(client_id, jti, exp, now):
        return None, _error("invalid_client", "the client assertion's jti was already used (replay)", 401)
    return client, None


def _access_token(request: Request, client: Client, scope: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    now = _now()
    claims: dict[str, Any] = {
        "iss": issuer_of(request),
        "aud": f"{base_of(request)}/fhir",
        "iat": now,
        "nbf": now,
        "exp": now + ACCESS_SECONDS,
        "jti": secrets.token_urlsafe(16),
        "client_id": client.client_id,
        "scope": scope,
        **body.get("claims", {}),
    }
    for name in ("patient", "encounter", "family"):
        if body.get(name):
            claims[name] = body[name]
    if body.get("practitioner"):
        claims["fhirUser"] = f"{base_of(request)}/fhir/Practitioner/{body['practitioner']}"
    return signing_keys(request.app).sign(claims), claims


def _token_answer(request: Request, client: Client, scope: str, body: dict[str, Any]) -> JSONResponse:
    token, claims = _access_token(request, client, scope, body)
    answer: dict[str, Any] = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ACCESS_SECONDS,
        "scope": scope,
    }
    for name in ("patient", "encounter"):
        if body.get(name):
            answer[name] = body[name]
    scopes = scope.split()
    if "openid" in scopes and ("fhirUser" in scopes or "profile" in scopes):
        id_claims = {
            "iss": issuer_of(request),
            "sub": claims.get("sub"),
            "aud": client.client_id,
            "iat": claims["iat"],
            "exp": claims["exp"],
            **({"fhirUser": claims["fhirUser"]} if "fhirUser" in claims else {}),
            **({"nonce": body["nonce"]} if body.get("nonce") else {}),
        }
        answer["id_token"] = signing_keys(request.app).sign(id_claims)
    if "offline_access" in scopes or "online_access" in scopes:
        refresh = secrets.token_urlsafe(32)
        oauth_store(request.app).add_refresh(
            refresh, body["family"], client.client_id, {**body, "scope": scope}, _now() + REFRESH_SECONDS
        )
        answer["refresh_token"] = refresh
    return JSONResponse(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@router.post("/token")
async def token(request: Request) -> Response:
    form = {k: str(v) for k, v in (await request.form()).items()}
    client, refusal = _authenticate(request, form)
    if refusal is not None:
        return refusal
    assert client is not None
    store = oauth_store(request.app)
    grant = form.get("grant_type")
    if grant == "authorization_code":
        redeemed = store.redeem_code(form.get("code", ""))
        if isinstance(redeemed, str):
            return _error("invalid_grant", f"the authorization code is {redeemed} (a code is used once)")
        client_id, body, expires = redeemed
        if client_id != client.client_id:
            return _error("invalid_grant", "the code was issued to another client")
        if expires < _now():
            return _error("invalid_grant", "the authorization code has expired")
        if form.get("redirect_uri") != body["redirect_uri"]:
            return _error("invalid_grant", "redirect_uri differs from the authorization request's")
        verifier = form.get("code_verifier", "")
        if not verifier or not secrets.compare_digest(pkce_challenge(verifier), body["code_challenge"]):
            return _error("invalid_grant", "code_verifier does not match the code_challenge (PKCE, RFC 7636 §4.6)")
        return _token_answer(request, client, body["scope"], body)
    if grant == "refresh_token":
        redeemed_refresh = store.redeem_refresh(form.get("refresh_token", ""))
        if isinstance(redeemed_refresh, str):
            return _error("invalid_grant", f"the refresh token is {redeemed_refresh}")
        family, client_id, body, expires = redeemed_refresh
        if client_id != client.client_id:
            return _error("invalid_grant", "the refresh token was issued to another client")
        if expires < _now():
            return _error("invalid_grant", "the refresh token has expired")
        granted = body["scope"].split()
        asked = form.get("scope", "").split() or granted
        if not set(asked) <= set(granted):
            # RFC 6749 §6: the new scope must not include any scope not originally granted.
            return _error("invalid_scope", "a refresh cannot widen the scope originally granted")
        return _token_answer(request, client, " ".join(asked), {**body, "family": family})
    if grant == "client_credentials":
        if form.get("client_assertion") is None:
            return _error("invalid_client", "client_credentials needs a private_key_jwt client assertion", 401)
        asked = form.get("scope", "").split()
        if not asked or not all(s.startswith("system/") for s in asked):
            return _error("invalid_scope", "client_credentials grants system/ scopes only")
        claims = {"sub": client.client_id, "user": client.client_id, "institution": client.institution}
        return _token_answer(request, client, " ".join(asked), {"claims": claims})
    return _error("unsupported_grant_type", f"grant_type {grant!r} is not supported")


# JWKS, introspection, revocation, launch -------------------------------------------------------------------
@router.get("/jwks")
def jwks(request: Request) -> Response:
    return JSONResponse(signing_keys(request.app).jwks(), headers={"Cache-Control": "max-age=300"})


@router.get("/.well-known/openid-configuration")
def openid_configuration(request: Request) -> Response:
    """OpenID Connect Discovery 1.0 §4 at the issuer: SMART App Launch 2.x (scopes ``openid fhirUser``) has
    a client verify the ``id_token`` with the keys this names. Lists what the token endpoint does."""
    issuer, root = issuer_of(request), base_of(request)
    config = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": ["openid", "fhirUser", "profile", "launch", "launch/patient", "offline_access"],
        "claims_supported": ["iss", "sub", "aud", "iat", "exp", "nonce", "fhirUser"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "code_challenge_methods_supported": ["S256"],
        "service_documentation": f"{root}/fhir/.well-known/smart-configuration",
    }
    return JSONResponse(config, headers={"Cache-Control": "max-age=300"})


def own_token_claims(request: Request, token: str) -> dict[str, Any] | None:
    """The claims of an access token this server issued, still valid and not refused (client, revocation)."""
    issuer = TrustedIssuer(issuer_of(request), "*", signing_keys(request.app).public(), f"{base_of(request)}/fhir")
    try:
        claims = verify_token(token, {issuer.issuer: issuer})
    except TokenError:
        return None
    refusal = oauth_store(request.app).access_refused(
        str(claims.get("client_id")), claims.get("jti"), claims.get("family")
    )
    return None if refusal is not None else claims


@router.post("/introspect")
async def introspect(request: Request) -> Response:
    form = {k: str(v) for k, v in (await request.form()).items()}
    caller, refusal = _authenticate(request, form)
    if refusal is not None:
        return refusal
    assert caller is not None
    token = form.get("token", "")
    claims = own_token_claims(request, token)
    if claims is not None:
        keep = ("scope", "client_id", "sub", "exp", "iat", "iss", "aud", "jti", "patient", "encounter", "fhirUser")
        answer = {"active": True, "token_type": "Bearer", **{k: claims[k] for k in keep if k in claims}}
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})
    refresh = oauth_store(request.app).refresh_status(token, _now())
    if refresh is not None:
        client_id, body = refresh
        client = oauth_store(request.app).client(client_id)
        if client is not None and not client.disabled:
            return JSONResponse(
                {"active": True, "token_type": "refresh_token", "client_id": client_id, "scope": body["scope"]}
            )
    return JSONResponse({"active": False}, headers={"Cache-Control": "no-store"})  # RFC 7662 §2.2


@router.post("/revoke")
async def revoke(request: Request) -> Response:
    form = {k: str(v) for k, v in (await request.form()).items()}
    caller, refusal = _authenticate(request, form)
    if refusal is not None:
        return refusal
    assert caller is not None
    token = form.get("token", "")
    store = oauth_store(request.app)
    claims = own_token_claims(request, token)
    if claims is not None and claims.get("client_id") == caller.client_id:
        store.revoke_access(str(claims["jti"]), int(claims["exp"]))
        if claims.get("family"):
            store.revoke_refresh_family(str(claims["family"]))
    else:
        refresh = store.refresh_status(token, _now())
        if refresh is not None and refresh[0] == caller.client_id:
            store.revoke_refresh(token)
    return Response(status_code=200)  # RFC 7009 §2.2: 200 whether or not the token was known


def create_launch(app: Any, institution: str, patient: str, encounter: str | None) -> str:
    """A launch id naming ``patient`` (and ``encounter``) for an EHR launch (SMART App Launch §EHR launch);
    only a user of ``institution`` can redeem it at the login (checked there)."""
    launch_id = secrets.token_urlsafe(16)
    body = {"patient": patient, "encounter": encounter or None, "institution": institution}
    oauth_store(app).put("oauth_launches", launch_id, body, _now() + REQUEST_SECONDS)
    return launch_id


def _bearer_claims(request: Request) -> dict[str, Any] | None:
    """The caller's verified token (a trusted issuer's, or this server's own), for endpoints outside /fhir."""
    from fhir_api.auth.issuers import Issuers

    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    issuers: Issuers | None = getattr(request.app.state, "oauth_issuers", None)
    if issuers is None:
        issuers = Issuers.configured(request.app.state.services.settings)
        request.app.state.oauth_issuers = issuers
    own = issuer_of(request)
    issuer = TrustedIssuer(own, "*", signing_keys(request.app).public(), f"{base_of(request)}/fhir")
    try:
        claims = verify_token(token.strip(), {**issuers.by_iss, own: issuer})
    except TokenError:
        return None
    if claims.get("iss") == own and oauth_store(request.app).access_refused(
        str(claims.get("client_id")), claims.get("jti"), claims.get("family")
    ):
        return None
    return claims


@router.post("/launch")
async def launch(request: Request) -> Response:
    """An EHR launch context for a signed-in EHR user (a bearer token with ``user/`` scopes): the ``launch``
    value and ``iss`` an app gets in its launch URL, naming the patient (and encounter) the user has open.
    The web view's "launch app" action does the same from its session (``fhir_api/web/launch.py``)."""
    claims = _bearer_claims(request)
    if claims is None or not any(s.startswith("user/") for s in str(claims.get("scope", "")).split()):
        return _error("invalid_token", "a bearer token with user/ scopes is required", 401)
    form = {k: str(v) for k, v in (await request.form()).items()}
    if not form.get("patient"):
        return _error("invalid_request", "patient is required")
    launch_id = create_launch(request.app, str(claims["institution"]), form["patient"], form.get("encounter"))
    return JSONResponse({"launch": launch_id, "iss": f"{base_of(request)}/fhir"})
