"""The authorization server (/oauth) end to end in process, on both backends: SMART App Launch 2.x
(authorization code + PKCE, refresh rotation, patient context) and SMART Backend Services (client_credentials
with private_key_jwt), introspection (RFC 7662), revocation (RFC 7009), and every refusal with its RFC 6749
error code."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.oauth import oauth_store
from projections.oauth import Client, User
from tests.support.access import staff_headers
from tests.support.oauth import PASSWORD, REDIRECT, Backend, authorize, exchange

FHIR_BASE = "http://testserver/fhir"
TOKEN_URL = "http://testserver/oauth/token"
FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def world(secured_client: tuple[TestClient, Settings]) -> Iterator[dict[str, Any]]:
    """IMSS holds Patient p1 and p2; an IMSS development user; a public browser app and a backend service."""
    client, settings = secured_client
    staff = staff_headers(settings, "IMSS")
    for patient in ("p1", "p2"):
        answer = client.put(f"/fhir/Patient/{patient}", json={"resourceType": "Patient", "id": patient}, headers=staff)
        assert answer.status_code in (200, 201), answer.text
    store = oauth_store(client.app)
    store.add_user(User("dra.lopez", "IMSS", "DFIMS000020", "physician", "pr-lopez", PasswordHasher().hash(PASSWORD)))
    store.add_client(Client("app", "IMSS", "Growth chart", [REDIRECT], None, None, True, False), 0)
    backend = Backend("RS384")
    store.add_client(Client("svc", "IMSS", "Registry", [], backend.jwks, None, False, False), 0)
    yield {"client": client, "settings": settings, "store": store, "backend": backend}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _patient_token(http: TestClient, scope: str = "launch/patient patient/*.rs offline_access") -> dict[str, Any]:
    verifier = secrets.token_urlsafe(48)
    code = authorize(http, "app", scope, verifier, FHIR_BASE, patient="p1")
    answer = exchange(http, "app", code, verifier)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_authorization_code_with_pkce_gives_a_patient_token(world: dict[str, Any]) -> None:
    http = world["client"]
    body = _patient_token(http, "launch/patient patient/*.rs openid fhirUser offline_access")
    assert body["token_type"] == "Bearer" and body["patient"] == "p1" and body["refresh_token"]
    assert set(body["scope"].split()) == {"launch/patient", "patient/*.rs", "openid", "fhirUser", "offline_access"}
    # The id_token names the Practitioner (fhirUser), signed with a key the JWKS publishes.
    from joserfc import jwt
    from joserfc.jwk import KeySet

    keys = KeySet.import_key_set(http.get("/oauth/jwks").json())
    id_token = jwt.decode(body["id_token"], keys, algorithms=["ES256"])
    assert id_token.claims["fhirUser"] == f"{FHIR_BASE}/Practitioner/pr-lopez"
    assert id_token.claims["aud"] == "app"
    assert http.get("/fhir/Patient/p1", headers=_bearer(body["access_token"])).status_code == 200
    other = http.get("/fhir/Patient/p2", headers=_bearer(body["access_token"]))
    assert other.status_code == 403, other.text
    assert other.json()["resourceType"] == "OperationOutcome"


def test_refresh_rotates_and_a_reused_refresh_token_revokes_the_family(world: dict[str, Any]) -> None:
    http = world["client"]
    first = _patient_token(http)
    data = {"grant_type": "refresh_token", "client_id": "app", "refresh_token": first["refresh_token"]}
    second = http.post("/oauth/token", data=data)
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert http.get("/fhir/Patient/p1", headers=_bearer(rotated["access_token"])).status_code == 200
    reused = http.post("/oauth/token", data=data)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    # Reuse means the refresh token leaked: every token of the grant stops working.
    later = {"grant_type": "refresh_token", "client_id": "app", "refresh_token": rotated["refresh_token"]}
    assert http.post("/oauth/token", data=later).json()["error"] == "invalid_grant"
    assert http.get("/fhir/Patient/p1", headers=_bearer(rotated["access_token"])).status_code == 401


def test_refresh_cannot_widen_the_scope(world: dict[str, Any]) -> None:
    http = world["client"]
    first = _patient_token(http)
    data = {
        "grant_type": "refresh_token",
        "client_id": "app",
        "refresh_token": first["refresh_token"],
        "scope": "launch/patient patient/*.cruds",
    }
    answer = http.post("/oauth/token", data=data)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_scope", answer.text


def test_client_credentials_with_private_key_jwt_gives_a_system_token_that_exports(world: dict[str, Any]) -> None:
    http, backend = world["client"], world["backend"]
    data = {
        "grant_type": "client_credentials",
        "scope": "system/*.rs",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": backend.assertion("svc", TOKEN_URL),
    }
    answer = http.post("/oauth/token", data=data)
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    assert "refresh_token" not in answer.json()
    kickoff = http.get(
        "/fhir/$export", headers={**_bearer(token), "Prefer": "respond-async", "Accept": "application/fhir+json"}
    )
    assert kickoff.status_code == 202, kickoff.text
    assert "Content-Location" in kickoff.headers


def _assertion_form(assertion: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "scope": "system/*.rs",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }


def test_a_replayed_client_assertion_jti_is_invalid_client(world: dict[str, Any]) -> None:
    http, backend = world["client"], world["backend"]
    assertion = backend.assertion("svc", TOKEN_URL, jti="once")
    assert http.post("/oauth/token", data=_assertion_form(assertion)).status_code == 200
    again = http.post("/oauth/token", data=_assertion_form(backend.assertion("svc", TOKEN_URL, jti="once")))
    assert again.status_code == 401 and again.json()["error"] == "invalid_client", again.text


def test_an_expired_or_too_long_client_assertion_is_invalid_client(world: dict[str, Any]) -> None:
    http, backend = world["client"], world["backend"]
    now = int(time.time())
    expired = http.post("/oauth/token", data=_assertion_form(backend.assertion("svc", TOKEN_URL, exp=now - 120)))
    assert expired.status_code == 401 and expired.json()["error"] == "invalid_client"
    too_long = http.post("/oauth/token", data=_assertion_form(backend.assertion("svc", TOKEN_URL, exp=now + 3600)))
    assert too_long.status_code == 401 and too_long.json()["error"] == "invalid_client"
    stranger = Backend("ES384")  # signed with a key the client never registered
    forged = http.post("/oauth/token", data=_assertion_form(stranger.assertion("svc", TOKEN_URL)))
    assert forged.status_code == 401 and forged.json()["error"] == "invalid_client"


def test_an_unregistered_redirect_uri_is_shown_not_followed(world: dict[str, Any]) -> None:
    http = world["client"]
    params = {
        "response_type": "code",
        "client_id": "app",
        "redirect_uri": "https://evil.example/callback",
        "scope": "patient/*.rs",
        "state": "s",
        "aud": FHIR_BASE,
        "code_challenge": "x" * 43,
        "code_challenge_method": "S256",
    }
    answer = http.get("/oauth/authorize", params=params, follow_redirects=False)
    assert answer.status_code == 400 and "invalid_request" in answer.text
    # Without PKCE, or with another aud, the error goes back to the (registered) redirect URI with the state.
    for change in ({"code_challenge_method": "plain"}, {"aud": "https://other.example/fhir"}):
        bad = http.get(
            "/oauth/authorize", params={**params, "redirect_uri": REDIRECT, **change}, follow_redirects=False
        )
        assert bad.status_code == 302
        assert "error=invalid_request" in bad.headers["location"] and "state=s" in bad.headers["location"]


def test_a_code_is_used_once_and_a_reuse_revokes_its_tokens(world: dict[str, Any]) -> None:
    http = world["client"]
    verifier = secrets.token_urlsafe(48)
    code = authorize(http, "app", "launch/patient patient/*.rs", verifier, FHIR_BASE, patient="p1")
    first = exchange(http, "app", code, verifier)
    assert first.status_code == 200
    again = exchange(http, "app", code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert http.get("/fhir/Patient/p1", headers=_bearer(first.json()["access_token"])).status_code == 401


def test_a_missing_or_wrong_pkce_verifier_is_invalid_grant(world: dict[str, Any]) -> None:
    http = world["client"]
    for sent in (None, secrets.token_urlsafe(48)):
        verifier = secrets.token_urlsafe(48)
        code = authorize(http, "app", "launch/patient patient/*.rs", verifier, FHIR_BASE, patient="p1")
        answer = exchange(http, "app", code, sent)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant", answer.text


def test_an_expired_code_is_invalid_grant(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from fhir_api.oauth import routes

    http = world["client"]
    verifier = secrets.token_urlsafe(48)
    code = authorize(http, "app", "launch/patient patient/*.rs", verifier, FHIR_BASE, patient="p1")
    later = int(time.time()) + routes.CODE_SECONDS + 60  # the token request arrives after the code's lifetime
    monkeypatch.setattr(routes, "_now", lambda: later)
    answer = exchange(http, "app", code, verifier)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant", answer.text


def test_a_disabled_clients_tokens_stop_at_once(world: dict[str, Any]) -> None:
    http, backend, store = world["client"], world["backend"], world["store"]
    token = http.post("/oauth/token", data=_assertion_form(backend.assertion("svc", TOKEN_URL))).json()["access_token"]
    patient = _patient_token(http)["access_token"]
    introspect = {"token": patient, "client_id": "app"}
    assert http.post("/oauth/introspect", data=introspect).json()["active"] is True
    assert http.get("/fhir/Patient?_id=p1", headers=_bearer(token)).status_code == 200
    assert store.disable_client("svc")
    assert http.get("/fhir/Patient?_id=p1", headers=_bearer(token)).status_code == 401
    assert store.disable_client("app")
    assert http.get("/fhir/Patient/p1", headers=_bearer(patient)).status_code == 401
    # A disabled client cannot even ask; another client's introspection says inactive (RFC 7662 §2.2).
    store.add_client(Client("rs", "IMSS", "Resource server", [REDIRECT], None, None, True, False), 0)
    assert http.post("/oauth/introspect", data={"token": patient, "client_id": "rs"}).json() == {"active": False}


def test_revocation_stops_an_access_token(world: dict[str, Any]) -> None:
    http = world["client"]
    body = _patient_token(http)
    assert http.post("/oauth/revoke", data={"token": body["access_token"], "client_id": "app"}).status_code == 200
    assert http.get("/fhir/Patient/p1", headers=_bearer(body["access_token"])).status_code == 401
    assert http.post("/oauth/introspect", data={"token": body["access_token"], "client_id": "app"}).json() == {
        "active": False
    }
    # RFC 7009 §2.2: an unknown token is answered 200 too.
    assert http.post("/oauth/revoke", data={"token": "nonsense", "client_id": "app"}).status_code == 200


def test_smart_configuration_names_the_endpoints(world: dict[str, Any]) -> None:
    http = world["client"]
    config = http.get("/fhir/.well-known/smart-configuration").json()
    assert config["authorization_endpoint"] == "http://testserver/oauth/authorize"
    assert config["token_endpoint"] == TOKEN_URL
    assert config["jwks_uri"] == "http://testserver/oauth/jwks"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert {"launch-standalone", "launch-ehr", "context-standalone-patient", "sso-openid-connect"} <= set(
        config["capabilities"]
    )


def test_the_record_pages_launch_action_starts_an_ehr_launch(world: dict[str, Any]) -> None:
    http, settings = world["client"], world["settings"]
    token = staff_headers(settings, "IMSS")["Authorization"].split()[1]
    assert http.post("/web/login", data={"token": token, "next": "/web/"}, follow_redirects=False).status_code == 303
    record = http.get("/web/patients/p2")
    assert record.status_code == 200 and 'data-testid="launch-app"' in record.text
    started = http.post(
        "/web/patients/p2/launch", data={"app": "https://app.example/launch", "encounter": "e1"}, follow_redirects=False
    )
    assert started.status_code == 303, started.text
    query = parse_qs(urlsplit(started.headers["location"]).query)
    assert query["iss"] == [FHIR_BASE]
    http.cookies.clear()  # the app's browser session: no EHR cookie
    verifier = secrets.token_urlsafe(48)
    code = authorize(http, "app", "launch patient/*.rs", verifier, FHIR_BASE, launch=query["launch"][0])
    body = exchange(http, "app", code, verifier).json()
    assert body["patient"] == "p2" and body["encounter"] == "e1"
    bearer = _bearer(body["access_token"])
    assert http.get("/fhir/Patient/p2", headers=bearer).status_code == 200
    assert http.get("/fhir/Patient/p1", headers=bearer).status_code == 403
    # A made-up launch id is refused at the authorization endpoint.
    params = {
        "response_type": "code",
        "client_id": "app",
        "redirect_uri": REDIRECT,
        "scope": "launch patient/*.rs",
        "state": "s",
        "aud": FHIR_BASE,
        "code_challenge": "x" * 43,
        "code_challenge_method": "S256",
        "launch": "made-up",
    }
    refused = http.get("/oauth/authorize", params=params, follow_redirects=False)
    assert refused.status_code == 302 and "error=invalid_request" in refused.headers["location"]
