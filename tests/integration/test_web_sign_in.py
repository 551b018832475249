"""Signing in to the web view through this server's authorization server, on both backends: "Entrar / Sign
in" → ``/oauth/authorize`` as the first-party client ``ehr-web`` (code + PKCE) → the development user store,
or the institution's OpenID Connect provider (tests/support/oidc_provider.py: a real provider on a real
port) → back to ``/web/callback`` → a session holding the issued access token, whose claims (institution,
unit, user, role) decide what the record pages show. The callback needs this browser's ``state``; and in
production the pasted development token is refused."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.oauth import oauth_store
from projections.oauth import User
from tests.support.access import staff_headers
from tests.support.oauth import PASSWORD
from tests.support.oidc_provider import IMSS_CLAIMS, imss_provider, running_provider

CALLBACK = "http://testserver/web/callback"


@pytest.fixture
def world(secured_client: tuple[TestClient, Settings]) -> tuple[TestClient, Settings]:
    """IMSS holds Patient p1, ISSSTE holds Patient p2; dra.lopez is an IMSS user of the development store."""
    client, settings = secured_client
    for patient, institution in (("p1", "IMSS"), ("p2", "ISSSTE")):
        body = {"resourceType": "Patient", "id": patient, "name": [{"family": f"Paciente{patient.upper()}"}]}
        answer = client.put(f"/fhir/Patient/{patient}", json=body, headers=staff_headers(settings, institution))
        assert answer.status_code in (200, 201), answer.text
    user = User("dra.lopez", "IMSS", "DFIMS000020", "physician", "pr-lopez", PasswordHasher().hash(PASSWORD))
    oauth_store(client.app).add_user(user)
    return client, settings


def _start(http: TestClient, next_page: str) -> str:
    """The login page's "Entrar / Sign in": the authorization request it sends the browser to (URL)."""
    page = http.get("/web/login", params={"next": next_page})
    assert page.status_code == 200 and 'action="/web/signin"' in page.text, page.text
    started = http.post("/web/signin", data={"next": next_page}, follow_redirects=False)
    assert started.status_code == 303, started.text
    location = str(started.headers["location"])
    asked = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert urlsplit(location).path == "/oauth/authorize"
    assert asked["client_id"] == "ehr-web" and asked["redirect_uri"] == CALLBACK
    assert asked["code_challenge_method"] == "S256" and asked["state"]
    return location


def _local_sign_in(http: TestClient, next_page: str, password: str = PASSWORD) -> httpx.Response:
    """Through the development user store: the authorize page's form; the redirect to the callback."""
    location = _start(http, next_page)
    page = http.get(location)
    assert page.status_code == 200 and "Development only" in page.text, page.text
    params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    answer: httpx.Response = http.post(
        "/oauth/authorize/login", data={**params, "username": "dra.lopez", "password": password}, follow_redirects=False
    )
    return answer


def _claims_shown(page: str) -> str:
    found = re.search(r'<span class="who">([^<]+)</span>', page)
    assert found is not None, page
    return html.unescape(found.group(1))


def test_signing_in_through_the_development_user_store(world: tuple[TestClient, Settings]) -> None:
    http, _ = world
    assert http.get("/web/patients/p1", follow_redirects=False).status_code == 303  # to the login page
    back = _local_sign_in(http, "/web/patients/p1")
    assert back.status_code == 302, back.text  # no consent screen: the web view is the EHR itself
    callback = urlsplit(back.headers["location"])
    assert f"{callback.scheme}://{callback.netloc}{callback.path}" == CALLBACK
    landed = http.get(f"{callback.path}?{callback.query}")
    assert landed.status_code == 200 and 'url=/web/patients/p1"' in landed.text, landed.text
    record = http.get("/web/patients/p1")
    assert record.status_code == 200 and "PacienteP1" in record.text
    assert _claims_shown(record.text) == "dra.lopez · IMSS · DFIMS000020"
    # As an IMSS user: another institution's record is the access-denied page (the API's policy decided).
    denied = http.get("/web/patients/p2")
    assert 'data-testid="access-choices"' in denied.text and "PacienteP2" not in denied.text
    # The code was used once: the same callback again (no sign-in under way) is refused.
    assert http.get(f"{callback.path}?{callback.query}").status_code == 400
    # Signing out revokes the token: the kept cookie no longer opens the record.
    token = http.cookies.get("ehr_token")
    assert token
    assert http.post("/web/logout", follow_redirects=False).status_code == 303
    http.cookies.set("ehr_token", token)
    assert http.get("/web/patients/p1", follow_redirects=False).status_code == 303


def test_a_wrong_password_signs_no_one_in(world: tuple[TestClient, Settings]) -> None:
    http, _ = world
    refused = _local_sign_in(http, "/web/", password="not the password")
    assert refused.status_code == 401
    assert "ehr_token" not in http.cookies


def test_the_callback_needs_the_browser_that_started_the_sign_in(world: tuple[TestClient, Settings]) -> None:
    """RFC 6749 §10.12: a code obtained elsewhere (an attacker's own sign-in) does not sign this browser in."""
    http, _ = world
    back = _local_sign_in(http, "/web/")
    callback = urlsplit(back.headers["location"])
    http.cookies.clear()  # another browser: without the sign-in's state cookie
    refused = http.get(f"{callback.path}?{callback.query}")
    assert refused.status_code == 400 and "state" in refused.text
    assert "ehr_token" not in http.cookies


def test_signing_in_with_the_institutions_openid_connect_provider(world: tuple[TestClient, Settings]) -> None:
    http, settings = world
    with running_provider(dict(IMSS_CLAIMS)) as provider:
        settings.oidc_providers["IMSS"] = imss_provider(provider)
        page = http.get(_start(http, "/web/patients/p1"))
        found = re.search(r'href="(/oauth/authorize/openid\?[^"]+)"[^>]*>Entrar con IMSS Digital', page.text)
        assert found is not None, page.text
        to_provider = http.get(html.unescape(found.group(1)), follow_redirects=False)
        assert to_provider.status_code == 302 and to_provider.headers["location"].startswith(provider.issuer)
        at_provider = httpx.get(to_provider.headers["location"], follow_redirects=False)  # the browser there
        assert at_provider.status_code == 302, at_provider.text
        openid_callback = urlsplit(at_provider.headers["location"])
        back = http.get(f"{openid_callback.path}?{openid_callback.query}", follow_redirects=False)
        assert back.status_code == 302, back.text
        callback = urlsplit(back.headers["location"])
        assert f"{callback.scheme}://{callback.netloc}{callback.path}" == CALLBACK
        assert http.get(f"{callback.path}?{callback.query}").status_code == 200
    record = http.get("/web/patients/p1")
    assert record.status_code == 200 and "PacienteP1" in record.text
    assert _claims_shown(record.text) == "dra.garcia · IMSS · DFIMS000020"
    denied = http.get("/web/patients/p2")
    assert 'data-testid="access-choices"' in denied.text and "PacienteP2" not in denied.text


def test_production_refuses_the_pasted_token(world: tuple[TestClient, Settings]) -> None:
    http, settings = world
    token = staff_headers(settings, "IMSS")["Authorization"].split()[1]
    # Outside production the development form is offered, announced, and works.
    page = http.get("/web/login")
    assert 'data-testid="token"' in page.text and "Solo para desarrollo" in page.text
    assert http.post("/web/login", data={"token": token}, follow_redirects=False).status_code == 303
    assert http.get("/web/patients/p1").status_code == 200
    http.cookies.clear()
    http.app.state.services.settings.env = "production"  # type: ignore[attr-defined]
    page = http.get("/web/login")
    assert 'action="/web/signin"' in page.text and 'data-testid="token"' not in page.text
    refused = http.post("/web/login", data={"token": token}, follow_redirects=False)
    assert refused.status_code == 403 and "ehr_token" not in http.cookies
    # Nor is such a token accepted as a session cookie set by other means.
    http.cookies.set("ehr_token", token)
    assert http.get("/web/patients/p1", follow_redirects=False).status_code == 303
