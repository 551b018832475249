"""A tiny OpenID Connect provider on a loopback port, standing in for an institution's: discovery
(``/.well-known/openid-configuration``), an authorization endpoint where its one user is already signed in
(it redirects back at once with a code), a token endpoint (``client_secret_basic``, PKCE S256 checked,
codes used once) answering an RS256 ``id_token``, and its JWK Set. Real HTTP and real signatures: the server
under test fetches and verifies everything itself.

``claims`` are what the id_token says about the user; ``id_token_overrides`` replace any claim (a wrong
``aud`` or ``nonce``), ``sign_with_stranger`` signs with a key the JWK Set does not publish."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import orjson
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from ehr_core.settings import OpenIDProvider
from tests.support.smart_app import serving

__all__ = ["IMSS_CLAIMS", "Provider", "imss_provider", "running_provider"]

#: What IMSS's provider says about its signed-in physician: the claim names ``imss_provider`` maps.
IMSS_CLAIMS = {
    "sub": "8f2c0e",
    "preferred_username": "dra.garcia",
    "https://imss.gob.mx/institucion": "IMSS",
    "clues": "DFIMS000020",
    "rol": "physician",
    "practitioner": "pr-garcia",
}


def _key(kid: str) -> RSAKey:
    return RSAKey.import_key(rsa.generate_private_key(public_exponent=65537, key_size=2048), {"kid": kid})


@dataclass
class Provider:
    issuer: str
    client_id: str = "ehr-core"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    claims: dict[str, Any] = field(default_factory=dict)
    id_token_overrides: dict[str, Any] = field(default_factory=dict)
    sign_with_stranger: bool = False
    key: RSAKey = field(default_factory=lambda: _key("idp-1"))
    stranger: RSAKey = field(default_factory=lambda: _key("idp-1"))
    #: code -> the authorization request it answers (redirect_uri, nonce, code_challenge)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    #: every authorization request's parameters, in order
    authorizations: list[dict[str, str]] = field(default_factory=list)

    def id_token(self, request: dict[str, str]) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.client_id, "iat": now, "exp": now + 300, "nonce": request["nonce"]}
        claims |= self.claims | self.id_token_overrides
        key = self.stranger if self.sign_with_stranger else self.key
        return jwt.encode({"alg": "RS256", "kid": "idp-1"}, claims, key, algorithms=["RS256"])


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, provider: Provider, *args: Any) -> None:
        self.provider = provider
        super().__init__(*args)

    def _json(self, body: dict[str, Any], status: int = 200) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        provider, url = self.provider, urlsplit(self.path)
        if url.path == "/.well-known/openid-configuration":
            self._json(
                {
                    "issuer": provider.issuer,
                    "authorization_endpoint": f"{provider.issuer}/authorize",
                    "token_endpoint": f"{provider.issuer}/token",
                    "jwks_uri": f"{provider.issuer}/jwks",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                    "code_challenge_methods_supported": ["S256"],
                }
            )
        elif url.path == "/jwks":
            self._json({"keys": [provider.key.as_dict(private=False) | {"use": "sig", "alg": "RS256"}]})
        elif url.path == "/authorize":
            query = dict(parse_qsl(url.query))
            provider.authorizations.append(query)
            if query.get("client_id") != provider.client_id or query.get("code_challenge_method") != "S256":
                self._json({"error": "invalid_request"}, 400)
                return
            code = secrets.token_urlsafe(16)
            provider.codes[code] = query
            back = urlencode({"code": code, "state": query["state"]})
            self.send_response(302)
            self.send_header("Location", f"{query['redirect_uri']}?{back}")
            self.end_headers()
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        provider = self.provider
        if urlsplit(self.path).path != "/token":
            self.send_error(404)
            return
        form = dict(parse_qsl(self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()))
        scheme, _, credentials = self.headers.get("Authorization", "").partition(" ")
        client_id, _, secret = base64.b64decode(credentials or "").decode().partition(":")
        if scheme != "Basic" or (unquote(client_id), unquote(secret)) != (provider.client_id, provider.client_secret):
            self._json({"error": "invalid_client"}, 401)
            return
        request = provider.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if (
            request is None
            or form.get("redirect_uri") != request["redirect_uri"]
            or digest != request["code_challenge"]
        ):
            self._json({"error": "invalid_grant"}, 400)
            return
        access = secrets.token_urlsafe(16)
        self._json({"access_token": access, "token_type": "Bearer", "id_token": provider.id_token(request)})

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def running_provider(claims: dict[str, Any]) -> Iterator[Provider]:
    """The provider on a free loopback port until the block ends."""
    holder: list[Provider] = []
    with serving(lambda *args: _Handler(holder[0], *args)) as origin:
        holder.append(Provider(origin, claims=claims))
        yield holder[0]


def imss_provider(provider: Provider) -> OpenIDProvider:
    """IMSS's configuration (``EHR_OIDC_PROVIDERS``) naming the running ``provider`` and its claims."""
    return OpenIDProvider(
        issuer=provider.issuer,
        client_id=provider.client_id,
        client_secret=provider.client_secret,
        display_name="IMSS Digital",
        user_claim="preferred_username",
        institution_claim="https://imss.gob.mx/institucion",
        unit_claim="clues",
        role_claim="rol",
        practitioner_claim="practitioner",
    )
