"""Unmodified SMART clients against a real server process (authentication on, each backend), registered with
``ehr clients add`` as public clients and signing users in with the development user store:

- the SMART JS client (npm ``fhirclient``, its browser bundle) in a tiny static app served from loopback
  (tests/e2e/smart_app), in headless Chromium: a standalone launch (login page, consent screen with the
  patient picker, code exchange with PKCE S256, a patient-scoped token, a read of that patient), and an EHR
  launch from the web view's record page ("launch app") naming the patient the user has open;
- Python's ``fhirclient`` (PyPI): its authorize URL from the CapabilityStatement's ``oauth-uris``, the
  browser's part scripted with httpx, ``handle_callback`` exchanging the code, a read of the patient.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from tests.e2e.web.conftest import Console, shoot
from tests.support.oauth import PASSWORD, sign_in
from tests.support.server import ehr, running_server
from tests.support.smart_app import SmartApp, serving_app

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.xdist_group("smart-apps")]

PATIENTS = {"p1": "Hernández", "p2": "Ramírez"}


@dataclass
class World:
    root: str  # http://127.0.0.1:PORT
    data_dir: Path
    app: SmartApp
    client_id: str

    @property
    def fhir(self) -> str:
        return f"{self.root}/fhir"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, backend: dict[str, str], node_clients: Path) -> Iterator[World]:
    data = tmp_path_factory.mktemp("smart") / "ehr-data"
    staff = ehr(data, "token", "--institution", "IMSS", "--user", "registro", "--scope", "user/*.cruds", env=backend)
    with (
        serving_app(node_clients / "node_modules") as app,
        running_server(data, backend | {"EHR_AUTH": "required"}) as (fhir, _log),
        httpx.Client(timeout=30) as http,
    ):
        # Registered while the server runs (it made the schema): it reads clients and users at each request.
        ehr(data, "users", "add", "dra.lopez", "--institution", "IMSS", "--unit", "DFIMS000020", "--role",
            "physician", "--practitioner", "pr-lopez", "--password", PASSWORD, env=backend)  # fmt: skip
        client_id = ehr(data, "clients", "add", "--institution", "IMSS", "--redirect-uri", app.redirect_uri,
                        "--public", "--name", "Expediente de bolsillo", env=backend)  # fmt: skip
        app.config["clientId"] = client_id
        for patient, family in PATIENTS.items():
            resource = {"resourceType": "Patient", "id": patient, "name": [{"family": family, "given": ["Ana"]}]}
            answer = http.put(f"{fhir}/Patient/{patient}", json=resource, headers={"Authorization": f"Bearer {staff}"})
            assert answer.status_code in (200, 201), answer.text
        yield World(fhir.removesuffix("/fhir"), data, app, client_id)


def _sign_in_and_allow(page: Any, patient: str | None) -> None:
    """The user's part at the authorization server: the development login page, then the consent screen."""
    assert "Development only" in page.inner_text("body")
    page.get_by_label("Usuario / User").fill("dra.lopez")
    page.get_by_label("Contraseña / Password").fill(PASSWORD)
    page.get_by_role("button", name="Entrar / Sign in").click()
    page.wait_for_load_state()
    assert "patient/*.rs" in page.inner_text("body")  # the consent screen lists the scopes asked for
    if patient is not None:
        page.get_by_label("Paciente / Patient").select_option(patient)
    shoot(page, "30-smart-consent" if patient else "32-smart-ehr-consent")
    page.get_by_role("button", name="Permitir / Allow").click()


def _app_answer(page: Any) -> dict[str, str]:
    page.wait_for_function(
        "document.getElementById('patient')?.textContent || document.getElementById('error')?.textContent"
    )
    fields = ("context", "patient", "name", "user", "scope", "error")
    return {name: page.locator(f"#{name}").inner_text() for name in fields}


def _token_requests(page: Any) -> tuple[list[str], list[str]]:
    """The authorization requests' URLs and the token requests' bodies, as the browser sent them."""
    authorizations: list[str] = []
    exchanges: list[str] = []

    def seen(request: Any) -> None:
        if "/oauth/authorize?" in request.url:
            authorizations.append(request.url)
        elif request.url.endswith("/oauth/token") and request.method == "POST":
            exchanges.append(request.post_data or "")

    page.on("request", seen)
    return authorizations, exchanges


def test_js_client_standalone_launch_in_the_browser(page: Any, console: Console, world: World) -> None:
    authorizations, exchanges = _token_requests(page)
    page.goto(f"{world.app.origin}/launch.html?iss={world.fhir}")
    page.wait_for_url(f"{world.root}/oauth/authorize?*")
    shoot(page, "29-smart-login")
    _sign_in_and_allow(page, "p2")
    page.wait_for_url(f"{world.app.redirect_uri}*")
    answer = _app_answer(page)
    assert answer["error"] == ""
    assert (answer["context"], answer["patient"], answer["name"]) == ("p2", "p2", PATIENTS["p2"])
    assert answer["user"] == "Practitioner/pr-lopez"  # the id_token's fhirUser, as the client reads it
    assert set(answer["scope"].split()) == {"launch/patient", "patient/*.rs", "openid", "fhirUser"}
    shoot(page, "31-smart-app")
    # PKCE S256 on the way out, its verifier in the code exchange.
    asked = dict(parse_qsl(urlsplit(authorizations[0]).query))
    assert asked["code_challenge_method"] == "S256" and asked["aud"] == world.fhir
    assert len(exchanges) == 1 and "code_verifier=" in exchanges[0]
    # A patient-scoped token: the other patient is refused.
    other = page.evaluate("smart.request('Patient/p1').then(() => 'read', (e) => String(e.status || e))")
    assert other == "403"
    assert all("403" in e for e in console.errors), console.errors  # the refused read only


def test_js_client_ehr_launch_from_the_web_view(page: Any, console: Console, world: World) -> None:
    # A clinician opens p1's record, signs in to the web view at the authorization server (the development
    # user store; no consent screen for the EHR's own client), is back on the record, and launches the app.
    page.goto(f"{world.root}/web/patients/p1")
    page.get_by_test_id("sign-in").click()
    page.wait_for_url(f"{world.root}/oauth/authorize?*")
    page.get_by_label("Usuario / User").fill("dra.lopez")
    page.get_by_label("Contraseña / Password").fill(PASSWORD)
    page.get_by_role("button", name="Entrar / Sign in").click()
    page.wait_for_url(f"{world.root}/web/patients/p1")
    assert "dra.lopez · IMSS · DFIMS000020" in page.inner_text("header")
    launch = page.get_by_test_id("launch-app")
    launch.locator("input[name=app]").fill(f"{world.app.origin}/launch.html")
    launch.get_by_role("button").click()
    page.wait_for_url(f"{world.root}/oauth/authorize?*")
    asked = dict(parse_qsl(urlsplit(page.url).query))
    assert asked["launch"] and "launch" in asked["scope"].split()
    _sign_in_and_allow(page, None)  # no patient picker: the launch names the patient
    page.wait_for_url(f"{world.app.redirect_uri}*")
    answer = _app_answer(page)
    assert answer["error"] == ""
    assert (answer["context"], answer["patient"], answer["name"]) == ("p1", "p1", PATIENTS["p1"])
    shoot(page, "33-smart-ehr-launch")
    assert console.errors == []


def test_python_fhirclient_standalone_launch(world: World) -> None:
    from fhirclient import client
    from fhirclient.models.patient import Patient

    settings = {
        "app_id": world.client_id,
        "api_base": world.fhir,
        "redirect_uri": world.app.redirect_uri,
        "scope": "launch/patient patient/*.rs openid fhirUser",
    }
    smart = client.FHIRClient(settings=settings)
    url = smart.authorize_url  # from the CapabilityStatement's rest.security oauth-uris
    assert url is not None and url.startswith(f"{world.root}/oauth/authorize?")
    params = dict(parse_qsl(urlsplit(url).query))
    assert params["code_challenge_method"] == "S256" and params["aud"] == world.fhir
    with httpx.Client(base_url=world.root, timeout=30) as http:
        callback = sign_in(http, params, "dra.lopez", patient="p1")
    assert callback.startswith(world.app.redirect_uri)
    smart.handle_callback(callback)
    assert smart.ready and smart.patient_id == "p1"
    patient = Patient.read("p1", smart.server)
    assert patient.id == "p1" and patient.name[0].family == PATIENTS["p1"]
    with pytest.raises(Exception, match="403"):
        Patient.read("p2", smart.server)  # the token is the picked patient's only
    # A state the app did not send is refused by the client, whatever code comes with it.
    forged = re.sub(r"state=[^&]+", f"state={uuid.uuid4().hex}", callback)
    with pytest.raises(Exception, match="Invalid state"):
        client.FHIRClient(settings=settings, state=smart.state).handle_callback(forged)
