"""Users signing in at their institution's OpenID Connect provider, on both backends: the login page's
"sign in with IMSS", the provider found by discovery, the code exchanged with a client secret and PKCE, the
id_token verified against the provider's JWK Set (tests/support/oidc_provider.py: a real provider on a real
port, not a mock), its claims becoming the token's institution, unit, user, role and fhirUser; and each
id_token this server must refuse (OpenID Connect Core 1.0 §3.1.3.7)."""

from __future__ import annotations

import base64
import html
import re
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.oauth import oauth_store
from projections.oauth import Client
from tests.support.access import staff_headers
from tests.support.oauth import REDIRECT, challenge, exchange
from tests.support.oidc_provider import IMSS_CLAIMS, Provider, imss_provider, running_provider

FHIR_BASE = "http://testserver/fhir"


@pytest.fixture
def world(secured_client: tuple[TestClient, Settings]) -> Iterator[tuple[TestClient, Provider]]:
    """IMSS holds Patient p1, a public app of IMSS, and IMSS's OpenID Connect provider configured."""
    client, settings = secured_client
    answer = client.put(
        "/fhir/Patient/p1", json={"resourceType": "Patient", "id": "p1"}, headers=staff_headers(settings, "IMSS")
    )
    assert answer.status_code in (200, 201), answer.text
    oauth_store(client.app).add_client(Client("app", "IMSS", "Growth chart", [REDIRECT], None, None, True, False), 0)
    with running_provider(dict(IMSS_CLAIMS)) as provider:
        settings.oidc_providers["IMSS"] = imss_provider(provider)
        yield client, provider


def _authorization(verifier: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "app",
        "redirect_uri": REDIRECT,
        "scope": "launch/patient patient/*.rs openid fhirUser",
        "state": secrets.token_urlsafe(8),
        "aud": FHIR_BASE,
        "code_challenge": challenge(verifier),
        "code_challenge_method": "S256",
    }


def _to_provider_and_back(http: TestClient, provider: Provider, params: dict[str, str]) -> str:
    """The login page's "sign in with" link, the provider (where the user is signed in), back: the
    callback URL (path and query) the provider sent the browser to."""
    page = http.get("/oauth/authorize", params=params)
    assert page.status_code == 200, page.text
    found = re.search(r'href="(/oauth/authorize/openid\?[^"]+)"[^>]*>Entrar con IMSS Digital / Sign in with', page.text)
    assert found is not None, page.text
    to_provider = http.get(html.unescape(found.group(1)), follow_redirects=False)
    assert to_provider.status_code == 302, to_provider.text
    location = to_provider.headers["location"]
    assert location.startswith(f"{provider.issuer}/authorize?")
    asked = provider_request = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert asked["redirect_uri"] == "http://testserver/oauth/openid/callback"
    assert asked["code_challenge_method"] == "S256" and asked["nonce"] and asked["state"]
    back = httpx.get(location, follow_redirects=False)  # the browser at the provider: a real HTTP request
    assert back.status_code == 302, back.text
    callback = urlsplit(back.headers["location"])
    assert parse_qs(callback.query)["state"] == [provider_request["state"]]
    return f"{callback.path}?{callback.query}"


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def test_sign_in_with_the_institutions_provider(world: tuple[TestClient, Provider]) -> None:
    http, provider = world
    verifier = secrets.token_urlsafe(48)
    params = _authorization(verifier)
    callback = _to_provider_and_back(http, provider, params)
    consent = http.get(callback)
    assert consent.status_code == 200, consent.text
    assert "Development only" not in consent.text  # a real user, not the development store's
    assert "Patient/p1" in consent.text  # the standalone launch's patient picker
    request_id = re.search(r'name="request_id" value="([^"]+)"', consent.text)
    assert request_id is not None
    # The provider's state is used once: the same callback again is refused.
    assert http.get(callback).status_code == 400
    answer = http.post(
        "/oauth/authorize/consent",
        data={"request_id": request_id.group(1), "decision": "allow", "patient": "p1"},
        follow_redirects=False,
    )
    assert answer.status_code == 302, answer.text
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    token = exchange(http, "app", code, verifier).json()
    claims = _claims(token["access_token"])
    mapped = {k: claims.get(k) for k in ("institution", "unit", "user", "role", "patient")}
    assert mapped == {
        "institution": "IMSS",
        "unit": "DFIMS000020",
        "user": "dra.garcia",
        "role": "physician",
        "patient": "p1",
    }
    assert claims["fhirUser"] == f"{FHIR_BASE}/Practitioner/pr-garcia"
    assert _claims(token["id_token"])["fhirUser"] == claims["fhirUser"]
    read = http.get("/fhir/Patient/p1", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert read.status_code == 200, read.text


@pytest.mark.parametrize(
    "tampered",
    [
        {"aud": "another-client"},
        {"nonce": "not-the-one-sent"},
        {"iss": "https://idp.example.org"},
        {"exp": 1_000_000_000},
        {"https://imss.gob.mx/institucion": "ISSSTE"},
        {"preferred_username": None},
        "stranger",
    ],
    ids=["aud", "nonce", "iss", "expired", "other-institution", "no-user", "unknown-key"],
)
def test_an_id_token_that_does_not_hold_is_refused(world: tuple[TestClient, Provider], tampered: Any) -> None:
    http, provider = world
    if tampered == "stranger":
        provider.sign_with_stranger = True  # same kid, a key the provider's JWK Set does not hold
    else:
        provider.id_token_overrides = {k: v for k, v in tampered.items() if v is not None}
        if None in tampered.values():
            provider.claims = {k: v for k, v in provider.claims.items() if k not in tampered}
    callback = _to_provider_and_back(http, provider, _authorization(secrets.token_urlsafe(48)))
    refused = http.get(callback)
    assert refused.status_code == 403, refused.text
    assert "request_id" not in refused.text  # no consent screen, no code


def test_a_key_replaced_under_the_same_kid_is_fetched_again(world: tuple[TestClient, Provider]) -> None:
    """The provider's JWK Set is kept for a while: a provider that replaced its signing key keeping its
    ``kid`` (or another provider now at the same address) must not lock its users out until then."""
    http, provider = world
    first = http.get(_to_provider_and_back(http, provider, _authorization(secrets.token_urlsafe(48))))
    assert first.status_code == 200 and "request_id" in first.text, first.text
    provider.key, provider.stranger = provider.stranger, provider.key  # published and signing: the new key
    again = http.get(_to_provider_and_back(http, provider, _authorization(secrets.token_urlsafe(48))))
    assert again.status_code == 200 and "request_id" in again.text, again.text


def test_a_wrong_client_secret_gets_no_id_token(world: tuple[TestClient, Provider]) -> None:
    http, provider = world
    provider.client_secret = "rotated-at-the-provider"
    callback = _to_provider_and_back(http, provider, _authorization(secrets.token_urlsafe(48)))
    refused = http.get(callback)
    assert refused.status_code == 403 and "401" in refused.text


def test_providers_are_configured_per_institution_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = "https://idp.imss.example"
    configured = {"IMSS": {"issuer": issuer, "client_id": "ehr", "client_secret": "s3cret", "unit_claim": "clues"}}
    monkeypatch.setenv("EHR_OIDC_PROVIDERS", orjson.dumps(configured).decode())
    provider = Settings().oidc_providers["IMSS"]
    assert (provider.issuer, provider.client_id, provider.secret(), provider.unit_claim) == (
        issuer,
        "ehr",
        "s3cret",
        "clues",
    )
    assert "s3cret" not in repr(provider)  # a secret is never printed


def test_production_offers_only_the_institutions_provider(world: tuple[TestClient, Provider]) -> None:
    http, _ = world
    http.app.state.services.settings.env = "production"  # type: ignore[attr-defined]
    params = _authorization(secrets.token_urlsafe(48))
    page = http.get("/oauth/authorize", params=params)
    assert page.status_code == 200, page.text
    assert "Sign in with IMSS Digital" in page.text
    assert 'name="password"' not in page.text and "Development only" not in page.text
    login = http.post("/oauth/authorize/login", data={**params, "username": "dra.lopez", "password": "x"})
    assert login.status_code == 403  # the development user store does not exist in production
