"""issue 7: disclosure paths beyond the plain read paths, with auth ON (both backends).

- Chained parameters and ``_has`` (R4 §3.1.1.4.13-14) pass through other resources; a match through a
  resource the caller may not see would tell it what that resource contains, so the policy holds for each
  resource a chain or ``_has`` passes through.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.auth import mint_development_token
from fhir_api.services import Services

FHIR = {"Content-Type": "application/fhir+json"}
GLASS = {"X-EHR-Break-Glass": "paciente inconsciente en urgencias"}


@pytest.fixture
def secured(settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    configured = settings.model_copy(update={"auth": "required", "data_dir": tmp_path / "ehr-data"})
    services = Services.open(configured)
    try:
        with TestClient(create_app(services=services)) as client:
            yield client, configured
    finally:
        services.close()


def _auth(settings: Settings, institution: str) -> dict[str, str]:
    claims = {"institution": institution, "user": f"dr.{institution.lower()}", "role": "physician",
              "scope": "user/*.cruds"}  # fmt: skip
    return {"Authorization": f"Bearer {mint_development_token(settings, claims)}"}


def _create(client: TestClient, headers: dict[str, str], resource: dict[str, Any]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR | headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _observation(patient: str, code: str) -> dict[str, Any]:
    coding = [{"system": "urn:test", "code": code}]
    return {"resourceType": "Observation", "status": "final", "code": {"coding": coding},
            "subject": {"reference": f"Patient/{patient}"}}  # fmt: skip


def _ids(client: TestClient, url: str, headers: dict[str, str]) -> tuple[list[str], int]:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    bundle = response.json()
    ids = [e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"]
    return ids, int(bundle["total"])


def test_chain_does_not_pass_through_hidden_resources(secured: tuple[TestClient, Settings]) -> None:
    client, settings = secured
    imss, issste = _auth(settings, "IMSS"), _auth(settings, "ISSSTE")
    # IMSS's patient; ISSSTE records an Observation about them (its own, so visible to it).
    pid = _create(client, imss, {"resourceType": "Patient", "name": [{"family": "Juarez"}]})
    own = _create(client, issste, _observation(pid, "glucose"))
    url = "/fhir/Observation?subject:Patient.name=Juarez&_total=accurate"
    # ISSSTE may not read the Patient: the chain must not tell it the hidden Patient's name.
    assert client.get(f"/fhir/Patient/{pid}", headers=issste).status_code == 403
    assert _ids(client, url, issste) == ([], 0)
    assert _ids(client, "/fhir/Observation?subject:Patient.name=Other&_total=accurate", issste) == ([], 0)
    # The same search matches once the caller may see the Patient (break-the-glass lifts the rule).
    assert _ids(client, url, issste | GLASS) == ([own], 1)
    # Its own Observation stays findable by plain parameters.
    assert _ids(client, f"/fhir/Observation?subject=Patient/{pid}&_total=accurate", issste) == ([own], 1)


def test_has_does_not_pass_through_hidden_resources(secured: tuple[TestClient, Settings]) -> None:
    client, settings = secured
    imss, issste = _auth(settings, "IMSS"), _auth(settings, "ISSSTE")
    # ISSSTE's patient; IMSS records a sensitive Observation about them, which ISSSTE may not read.
    pid = _create(client, issste, {"resourceType": "Patient", "name": [{"family": "Lopez"}]})
    hidden = _create(client, imss, _observation(pid, "B20"))
    assert client.get(f"/fhir/Observation/{hidden}", headers=issste).status_code == 403
    url = "/fhir/Patient?_has:Observation:subject:code=urn:test|B20&_total=accurate"
    assert _ids(client, url, issste) == ([], 0)
    assert _ids(client, url, issste | GLASS) == ([pid], 1)
