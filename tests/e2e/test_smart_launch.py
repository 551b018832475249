"""SMART App Launch against a real server process (SQLite, authentication on), the clients and users
registered with the ``ehr`` command: a standalone launch with the patient picker, an EHR launch, a refresh
token that survives a server restart, and ``ehr clients disable`` stopping a running server's tokens."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from tests.support.oauth import PASSWORD, REDIRECT, authorize, exchange
from tests.support.server import ehr, running_server

pytestmark = pytest.mark.e2e


def test_standalone_and_ehr_launch_across_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "ehr-data"
    ehr(data, "users", "add", "dra.lopez", "--institution", "IMSS", "--unit", "DFIMS000020", "--role", "physician",
         "--practitioner", "pr-lopez", "--password", PASSWORD)  # fmt: skip
    client_id = ehr(data, "clients", "add", "--institution", "IMSS", "--redirect-uri", REDIRECT, "--public")
    assert client_id in ehr(data, "clients", "list")
    staff = ehr(data, "token", "--institution", "IMSS", "--user", "dr.x", "--scope", "user/*.cruds")
    env = {"EHR_AUTH": "required"}
    with running_server(data, env) as (fhir, _):
        root = fhir.removesuffix("/fhir")
        with httpx.Client(base_url=root, timeout=30) as http:
            for patient in ("p1", "p2"):
                answer = http.put(
                    f"/fhir/Patient/{patient}",
                    json={"resourceType": "Patient", "id": patient},
                    headers={"Authorization": f"Bearer {staff}"},
                )
                assert answer.status_code in (200, 201), answer.text
            config = http.get("/fhir/.well-known/smart-configuration").json()
            assert config["authorization_endpoint"] == f"{root}/oauth/authorize"
            # Standalone launch: the user picks p1 among IMSS's patients.
            verifier = secrets.token_urlsafe(48)
            scope = "launch/patient patient/*.rs openid fhirUser offline_access"
            code = authorize(http, client_id, scope, verifier, fhir, patient="p1")
            token = exchange(http, client_id, code, verifier).json()
            bearer = {"Authorization": f"Bearer {token['access_token']}"}
            assert http.get("/fhir/Patient/p1", headers=bearer).status_code == 200
            assert http.get("/fhir/Patient/p2", headers=bearer).status_code == 403
            # EHR launch: the web view's context names p2; the app never picks.
            assert http.post("/oauth/launch", data={"patient": "p2"}).status_code == 401
            launched = http.post("/oauth/launch", data={"patient": "p2"}, headers={"Authorization": f"Bearer {staff}"})
            launched = launched.json()
            assert launched["iss"] == fhir
            verifier = secrets.token_urlsafe(48)
            code = authorize(http, client_id, "launch patient/*.rs", verifier, fhir, launch=launched["launch"])
            ehr_token = exchange(http, client_id, code, verifier).json()
            assert ehr_token["patient"] == "p2"
            ehr_bearer = {"Authorization": f"Bearer {ehr_token['access_token']}"}
            assert http.get("/fhir/Patient/p2", headers=ehr_bearer).status_code == 200
    # The refresh token, the client and the signing keys outlive the process.
    with running_server(data, env) as (fhir, _), httpx.Client(base_url=fhir.removesuffix("/fhir"), timeout=30) as http:
        form = {"grant_type": "refresh_token", "client_id": client_id, "refresh_token": token["refresh_token"]}
        refreshed = http.post("/oauth/token", data=form)
        assert refreshed.status_code == 200, refreshed.text
        bearer = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
        assert http.get("/fhir/Patient/p1", headers=bearer).status_code == 200
        # Disabled by another process: the running server refuses the client's tokens at the next request.
        ehr(data, "clients", "disable", client_id)
        refused = http.get("/fhir/Patient/p1", headers=bearer)
        assert refused.status_code == 401 and refused.json()["resourceType"] == "OperationOutcome"
