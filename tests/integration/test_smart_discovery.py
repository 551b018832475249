"""Discovery says exactly what works, behind a reverse proxy (``EHR_PUBLIC_URL``), on both backends:
``.well-known/smart-configuration`` (SMART App Launch 2.x §Conformance), the CapabilityStatement's
``rest.security`` (its ``oauth-uris`` and ``cors``), and the issuer's OpenID Connect discovery document name
the public URL; every endpoint they name answers; what they leave out is refused; a token minted through
the public URL is accepted; a browser app's preflight is answered (CORS)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.oauth import oauth_store
from fhir_api.oauth.routes import JWT_BEARER
from projections.oauth import Client
from tests.support.oauth import REDIRECT, Backend, challenge

PUBLIC = "https://ehr.example.org"


def _local(url: str) -> str:
    """The path the proxy forwards ``url`` to (the test client speaks to the server directly)."""
    assert url.startswith(f"{PUBLIC}/"), url
    return url.removeprefix(PUBLIC)


def _registered(http: TestClient) -> Backend:
    backend = Backend("ES384")
    store = oauth_store(http.app)
    store.add_client(Client("app", "IMSS", "Growth chart", [REDIRECT], None, None, True, False), 0)
    store.add_client(Client("svc", "IMSS", "Registry", [], backend.jwks, None, False, False), 0)
    return backend


def test_discovery_names_the_public_url_and_only_what_answers(secured_client: tuple[TestClient, Settings]) -> None:
    http, settings = secured_client
    settings.public_url = f"{PUBLIC}/"
    backend = _registered(http)
    config: dict[str, Any] = http.get("/fhir/.well-known/smart-configuration").json()
    assert config["issuer"] == f"{PUBLIC}/oauth"
    metadata = http.get("/fhir/metadata")
    assert metadata.status_code == 200, metadata.text
    security = metadata.json()["rest"][0]["security"]
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris == {
        "authorize": config["authorization_endpoint"],
        "token": config["token_endpoint"],
        "introspect": config["introspection_endpoint"],
        "revoke": config["revocation_endpoint"],
    }
    assert security["cors"] is True
    openid = http.get(_local(f"{config['issuer']}/.well-known/openid-configuration")).json()
    assert (openid["issuer"], openid["jwks_uri"], openid["token_endpoint"]) == (
        config["issuer"],
        config["jwks_uri"],
        config["token_endpoint"],
    )
    # Every endpoint named answers at its path.
    assert http.get(_local(config["jwks_uri"])).json()["keys"]
    assert http.get(_local(config["authorization_endpoint"])).status_code == 400  # no client: an error page
    for name in ("introspection_endpoint", "revocation_endpoint"):
        assert http.post(_local(config[name])).json()["error"] == "invalid_client"
    token_endpoint = _local(config["token_endpoint"])
    for grant in config["grant_types_supported"]:
        answer = http.post(token_endpoint, data={"grant_type": grant, "client_id": "app"}).json()
        assert answer["error"] != "unsupported_grant_type", (grant, answer)
    # What is left out is refused: other grants, plain PKCE, POST to the authorization endpoint, secrets.
    password = http.post(token_endpoint, data={"grant_type": "password", "client_id": "app"}).json()
    assert password["error"] == "unsupported_grant_type"
    assert config["code_challenge_methods_supported"] == ["S256"]
    plain = {
        "response_type": "code",
        "client_id": "app",
        "redirect_uri": REDIRECT,
        "state": "s",
        "aud": f"{PUBLIC}/fhir",
        "code_challenge": challenge("v" * 43),
        "code_challenge_method": "plain",
    }
    refused = http.get(_local(config["authorization_endpoint"]), params=plain, follow_redirects=False)
    assert refused.status_code == 302 and "error=invalid_request" in refused.headers["location"]
    assert "authorize-post" not in config["capabilities"]
    assert http.post(_local(config["authorization_endpoint"]), data=plain).status_code == 405
    assert "client-confidential-symmetric" not in config["capabilities"]
    assert "client_secret_basic" not in config["token_endpoint_auth_methods_supported"]
    secret = http.post(token_endpoint, data={"grant_type": "client_credentials"}, auth=("svc", "a-secret"))
    assert secret.json()["error"] == "invalid_client"
    # A backend service gets a token through the public URL; its iss and aud are the public ones, accepted.
    form = {
        "grant_type": "client_credentials",
        "scope": "system/Patient.rs",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": backend.assertion("svc", config["token_endpoint"], jti=uuid.uuid4().hex),
    }
    token = http.post(token_endpoint, data=form)
    assert token.status_code == 200, token.text
    introspected = http.post(
        _local(config["introspection_endpoint"]),
        data={
            "token": token.json()["access_token"],
            "client_assertion_type": JWT_BEARER,
            "client_assertion": backend.assertion("svc", config["token_endpoint"]),
        },
    ).json()
    assert (introspected["iss"], introspected["aud"]) == (config["issuer"], f"{PUBLIC}/fhir")
    assert introspected["exp"] > time.time() - 60
    read = http.get("/fhir/Patient", headers={"Authorization": f"Bearer {token.json()['access_token']}"})
    assert read.status_code == 200, read.text
    assert read.json()["link"][0]["url"].startswith(f"{PUBLIC}/fhir/Patient")


def test_a_browser_apps_preflight_is_answered(secured_client: tuple[TestClient, Settings]) -> None:
    http, _ = secured_client
    asked = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    for path in ("/fhir/Patient/p1", "/oauth/token", "/fhir/.well-known/smart-configuration"):
        preflight = http.options(path, headers=asked)
        assert preflight.status_code == 200, (path, preflight.text)
        assert preflight.headers["access-control-allow-origin"] == "*"
    answer = http.get("/fhir/Patient/p1", headers={"Origin": "https://app.example"})
    assert answer.status_code == 401 and answer.headers["access-control-allow-origin"] == "*"
    assert "www-authenticate" in answer.headers["access-control-expose-headers"].lower()


def test_with_authentication_disabled_discovery_names_nothing_to_launch(client: TestClient) -> None:
    config = client.get("/fhir/.well-known/smart-configuration").json()
    assert config["capabilities"] == [] and config["authentication"] == "disabled-for-development"
    assert not {"authorization_endpoint", "token_endpoint"} & set(config)
    security = client.get("/fhir/metadata").json()["rest"][0]["security"]
    assert "service" not in security and "extension" not in security
