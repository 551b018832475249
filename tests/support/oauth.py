"""What the authorization-server tests share: registering clients and users, the browser's part of an
authorization-code + PKCE flow (login form, consent form), and SMART Backend Services client assertions."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey

__all__ = ["PASSWORD", "REDIRECT", "Backend", "authorize", "challenge", "exchange", "sign_in"]

REDIRECT = "https://app.example/callback"
PASSWORD = "correct horse battery staple"


def challenge(verifier: str) -> str:
    """RFC 7636 §4.2: S256."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def authorize(
    http: httpx.Client | Any,
    client_id: str,
    scope: str,
    verifier: str,
    fhir_base: str,
    username: str = "dra.lopez",
    patient: str | None = None,
    launch: str | None = None,
) -> str:
    """The user's part: the authorize page, the login form, the consent form (allow); the code returned."""
    state = secrets.token_urlsafe(8)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": state,
        "aud": fhir_base,
        "code_challenge": challenge(verifier),
        "code_challenge_method": "S256",
        **({"launch": launch} if launch else {}),
    }
    location = urlsplit(sign_in(http, params, username, patient))
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == [state], query
    return query["code"][0]


def sign_in(http: httpx.Client | Any, params: dict[str, str], username: str, patient: str | None = None) -> str:
    """What a browser does with an authorization request's ``params``: the authorize page, the development
    login form, the consent form (allow, picking ``patient``); the redirect back to the app (its URL)."""
    page = http.get("/oauth/authorize", params=params)
    assert page.status_code == 200, page.text
    assert "Development only" in page.text
    consent = http.post("/oauth/authorize/login", data={**params, "username": username, "password": PASSWORD})
    assert consent.status_code == 200, consent.text
    for item in params["scope"].split():
        assert item in consent.text  # the consent screen lists every scope asked for
    found = re.search(r'name="request_id" value="([^"]+)"', consent.text)
    assert found is not None
    form = {"request_id": found.group(1), "decision": "allow", **({"patient": patient} if patient else {})}
    answer = http.post("/oauth/authorize/consent", data=form, follow_redirects=False)
    assert answer.status_code == 302, answer.text
    return str(answer.headers["location"])


def exchange(http: httpx.Client | Any, client_id: str, code: str, verifier: str | None) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": client_id}
    if verifier is not None:
        data["code_verifier"] = verifier
    response: httpx.Response = http.post("/oauth/token", data=data)
    return response


class Backend:
    """A SMART Backend Services client: its own key pair (RS384 or ES384), its JWK Set, its assertions."""

    def __init__(self, alg: str = "RS384") -> None:
        self.alg = alg
        if alg == "RS384":
            self.key: Any = RSAKey.import_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        else:
            self.key = ECKey.import_key(ec.generate_private_key(ec.SECP384R1()))
        self.kid = uuid.uuid4().hex
        self.jwks = {"keys": [{**self.key.as_dict(private=False), "kid": self.kid, "alg": alg}]}

    def assertion(self, client_id: str, token_url: str, jti: str | None = None, exp: int | None = None) -> str:
        now = int(time.time())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": token_url,
            "jti": jti or uuid.uuid4().hex,
            "exp": exp if exp is not None else now + 240,
        }
        header = {"alg": self.alg, "kid": self.kid, "typ": "JWT"}
        return jws.serialize_compact(header, orjson.dumps(claims), self.key, [self.alg])
