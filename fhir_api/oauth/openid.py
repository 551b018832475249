"""Users sign in at their institution's OpenID Connect provider: the production path of the login page
(the local user store is for development only). OpenID Connect Core 1.0 §3.1, the authorization code flow:

- ``GET /oauth/authorize/openid?provider=KEY&<the app's authorization request>``: the app's request is
  checked as at ``/oauth/authorize``, kept under a fresh ``state`` with a ``nonce`` and a PKCE verifier
  (RFC 7636), and the browser goes to the provider's ``authorization_endpoint``, found in its discovery
  document ``{issuer}/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §4; its ``issuer``
  must be the configured one, §4.3).
- ``GET /oauth/openid/callback?code&state``: the ``state`` is used once; the code is exchanged at the
  provider's ``token_endpoint`` with this server's client secret (``client_secret_basic``, Core §9); the
  ``id_token`` is verified (Core §3.1.3.7): signature against the provider's ``jwks_uri`` (asymmetric algs
  only), ``iss``, ``aud`` naming this client (and ``azp`` when several), ``exp``, ``iat``, ``nonce``. Its
  claims become the user's token claims: the configured claims carrying the user, institution (a provider
  vouches only for its own institution), unit (CLUES), role and Practitioner. Then the consent screen.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from joserfc import jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet

from ehr_core.settings import OpenIDProvider
from fhir_api.oauth.pages import error_page
from fhir_api.oauth.routes import (
    AUTHORIZE_FIELDS,
    REQUEST_SECONDS,
    base_of,
    check_authorize,
    consent_screen,
    oauth_store,
    pkce_challenge,
    serves,
)

__all__ = ["router"]

router = APIRouter(prefix="/oauth", include_in_schema=False)

#: Asymmetric signatures only (Core §3.1.3.7 item 6 allows HS* with the client secret; not accepted here).
ID_TOKEN_ALGS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
#: How long a provider's discovery document and keys are kept before they are fetched again.
CACHE_SECONDS = 3600
LEEWAY_SECONDS = 60
_FETCH_TIMEOUT = 10
_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_cache_lock = threading.Lock()


class ProviderError(Exception):
    """The provider could not be reached or answered something this server does not accept."""


def _fetch_json(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url, data=data, headers={"Accept": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=_FETCH_TIMEOUT) as answer:
            body = orjson.loads(answer.read(1 << 20))
    except (OSError, ValueError) as error:
        raise ProviderError(f"{url}: {error}") from None
    if not isinstance(body, dict):
        raise ProviderError(f"{url}: not a JSON object")
    return body


def _cached(url: str, refresh: bool = False) -> dict[str, Any]:
    now = time.monotonic()
    with _cache_lock:
        kept = _cache.get(url)
    if kept is not None and not refresh and now - kept[0] < CACHE_SECONDS:
        return kept[1]
    body = _fetch_json(url)
    with _cache_lock:
        _cache[url] = (now, body)
    return body


def discovery(provider: OpenIDProvider) -> dict[str, Any]:
    """The provider's metadata (OpenID Connect Discovery 1.0 §4), its issuer checked (§4.3)."""
    issuer = provider.issuer.rstrip("/")
    metadata = _cached(f"{issuer}/.well-known/openid-configuration")
    if metadata.get("issuer") != provider.issuer:
        raise ProviderError(f"the discovery document names issuer {metadata.get('issuer')!r}, not {provider.issuer}")
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(metadata.get(name), str):
            raise ProviderError(f"the discovery document has no {name}")
    return metadata


def _key_set(metadata: dict[str, Any], refresh: bool) -> KeySet:
    jwks = _cached(str(metadata["jwks_uri"]), refresh=refresh)
    try:
        return KeySet.import_key_set(jwks)  # type: ignore[arg-type]  # a JWK Set parsed from JSON
    except (JoseError, ValueError, KeyError, TypeError) as error:
        raise ProviderError(f"the provider's JWK Set is not usable: {error}") from None


def _decode(metadata: dict[str, Any], id_token: str, kid: str | None) -> jwt.Token:
    """The id_token decoded with the provider's JWK Set, fetched again once if the kept set may be stale: it
    lacks the key the token names (a rotation), or the signature does not verify with it (a key replaced
    under the same ``kid``, or another provider now at the same address): the kept set is up to
    ``CACHE_SECONDS`` old."""
    kept = _key_set(metadata, refresh=False)
    if _holds(kept, kid):
        try:
            return jwt.decode(id_token, kept, algorithms=ID_TOKEN_ALGS)
        except BadSignatureError:
            pass
    fetched = _key_set(metadata, refresh=True)
    if not _holds(fetched, kid):
        raise ProviderError(f"the provider's JWK Set has no key {kid!r}")
    return jwt.decode(id_token, fetched, algorithms=ID_TOKEN_ALGS)


def _holds(keys: KeySet, kid: str | None) -> bool:
    return kid is None or any(key.kid == kid for key in keys.keys)


def verify_id_token(provider: OpenIDProvider, metadata: dict[str, Any], id_token: str, nonce: str) -> dict[str, Any]:
    """The id_token's claims once Core §3.1.3.7 holds (else ProviderError)."""
    try:
        header = orjson.loads(base64.urlsafe_b64decode(id_token.split(".")[0] + "=="))
        kid = header.get("kid") if isinstance(header, dict) else None
        token = _decode(metadata, id_token, kid)
        registry = jwt.JWTClaimsRegistry(
            leeway=LEEWAY_SECONDS,
            iss={"essential": True, "value": provider.issuer},
            aud={"essential": True, "value": provider.client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        registry.validate(token.claims)
    except (JoseError, ValueError, IndexError) as error:
        raise ProviderError(f"the id_token does not verify: {error}") from None
    claims: dict[str, Any] = dict(token.claims)
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != provider.client_id:
        raise ProviderError("the id_token names several audiences and azp is not this client")
    return claims


def signed_in_user(institution: str, provider: OpenIDProvider, claims: dict[str, Any]) -> dict[str, Any]:
    """The id_token's claims as this server's token claims (what ``ehr token`` and the local store give)."""

    def claim(name: str | None) -> str | None:
        value = claims.get(name) if name else None
        return str(value) if isinstance(value, str | int) and str(value) else None

    if provider.institution_claim is not None and claim(provider.institution_claim) != institution:
        raise ProviderError(f"the provider of {institution} may not vouch for {claim(provider.institution_claim)!r}")
    user = claim(provider.user_claim)
    if user is None:
        raise ProviderError(f"the id_token has no {provider.user_claim!r} claim naming the user")
    values = {"institution": institution, "unit": claim(provider.unit_claim), "user": user}
    values["role"] = claim(provider.role_claim)
    token_claims = {"sub": user, "purpose": "TREAT", **{k: v for k, v in values.items() if v}}
    return {"claims": token_claims, "practitioner": claim(provider.practitioner_claim), "development": False}


def _callback_url(request: Request) -> str:
    return f"{base_of(request)}/oauth/openid/callback"


def _refused(description: str, status: int = 400) -> HTMLResponse:
    return HTMLResponse(error_page("access_denied", description), status, headers={"Cache-Control": "no-store"})


@router.get("/authorize/openid")
def sign_in(request: Request) -> Response:
    params = {k: v for k, v in request.query_params.items() if k in AUTHORIZE_FIELDS}
    client, refusal = check_authorize(request, params)
    if refusal is not None:
        return refusal
    assert client is not None
    key = request.query_params.get("provider", "")
    provider = request.app.state.services.settings.oidc_providers.get(key)
    if provider is None or not serves(client, key):
        return _refused(f"no OpenID Connect provider {key!r} for {client.institution}")
    try:
        metadata = discovery(provider)
    except ProviderError as error:
        return _refused(f"the OpenID Connect provider of {key} cannot be used: {error}", 502)
    state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
    pending = {"params": params, "provider": key, "nonce": nonce, "verifier": verifier}
    oauth_store(request.app).put("oauth_requests", f"openid:{state}", pending, int(time.time()) + REQUEST_SECONDS)
    query = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": _callback_url(request),
        "scope": provider.scope,
        "state": state,
        "nonce": nonce,
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
    }
    endpoint = str(metadata["authorization_endpoint"])
    return RedirectResponse(f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(query)}", 302)


@router.get("/openid/callback")
def callback(request: Request) -> Response:
    store = oauth_store(request.app)
    pending = store.take("oauth_requests", f"openid:{request.query_params.get('state', '')}", int(time.time()))
    if pending is None:
        return _refused("unknown, used or expired sign-in (state)")
    params: dict[str, str] = pending["params"]
    client, refusal = check_authorize(request, params)
    if refusal is not None:
        return refusal
    assert client is not None
    key: str = pending["provider"]
    provider = request.app.state.services.settings.oidc_providers.get(key)
    if provider is None:
        return _refused(f"no OpenID Connect provider {key!r}")
    if request.query_params.get("error") or not request.query_params.get("code"):
        reason = request.query_params.get("error") or "no code"
        return _refused(f"the OpenID Connect provider of {key} did not sign the user in: {reason}", 403)
    try:
        metadata = discovery(provider)
        form = {
            "grant_type": "authorization_code",
            "code": request.query_params["code"],
            "redirect_uri": _callback_url(request),
            "code_verifier": pending["verifier"],
        }
        # RFC 6749 §2.3.1: client id and secret form-urlencoded, then HTTP Basic.
        secret = provider.secret() or ""
        basic = base64.b64encode(f"{quote(provider.client_id, safe='')}:{quote(secret, safe='')}".encode()).decode()
        answer = _fetch_json(
            str(metadata["token_endpoint"]),
            urlencode(form).encode(),
            {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
        )
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise ProviderError("the token response has no id_token")
        claims = verify_id_token(provider, metadata, id_token, pending["nonce"])
        signed_in = signed_in_user(key, provider, claims)
    except ProviderError as error:
        return _refused(str(error), 403)
    if not serves(client, key):
        return _refused(f"{client.name} belongs to {client.institution}, not {key}", 403)
    return consent_screen(request, params, client, signed_in)
