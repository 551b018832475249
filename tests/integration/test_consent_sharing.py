"""The patient's consent to share across institutions, with auth ON (both backends).

A Consent (scope patient-privacy, LOINC 59284-0, policyRule OPTIN) written by the institution that holds the
record shares it with the institutions its ``provision.actor`` names, or with every institution when it
names none. Nested ``deny`` provisions keep resources inside the recording institution by class (resource
type), code or security label (v3 ActCode ``PSY``...), on every read path and in every total. Revocation
(status inactive, or deletion) ends the sharing at once on every read path: read, search and its total,
``_include``/``_revinclude``, ``$everything``, ``$summary``, bulk export.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.services import Services
from tests.support.access import consent, secured_server, staff_headers

FHIR = {"Content-Type": "application/fhir+json"}
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OPTIN = {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]}


@pytest.fixture
def world(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Iterator[tuple[TestClient, Services, Settings]]:
    backend = "sqlite" if settings.database_url is None else "postgres"
    with secured_server(request, backend, tmp_path / "ehr-data") as opened:
        yield opened


def _create(client: TestClient, headers: dict[str, str], resource: dict[str, Any]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR | headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _search(client: TestClient, url: str, headers: dict[str, str]) -> tuple[set[str], set[str], int]:
    """(matches, includes, total) of a search, as ``Type/id``."""
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    bundle = response.json()
    found: dict[str, set[str]] = {"match": set(), "include": set()}
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        found[entry["search"]["mode"]].add(f"{resource['resourceType']}/{resource['id']}")
    return found["match"], found["include"], int(bundle["total"])


def _condition(patient: str, code: str, label: str | None = None) -> dict[str, Any]:
    condition: dict[str, Any] = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": ICD10, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
    }
    if label:
        condition["meta"] = {"security": [{"system": ACT_CODE, "code": label}]}
    return condition


def _everything(client: TestClient, patient: str, headers: dict[str, str]) -> tuple[int, set[str]]:
    response = client.get(f"/fhir/Patient/{patient}/$everything", headers=headers)
    if response.status_code != 200:
        return response.status_code, set()
    return 200, {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in response.json().get("entry", [])}


def _export(client: TestClient, headers: dict[str, str]) -> set[str]:
    kick = client.get("/fhir/Patient/$export", headers=headers | {"Prefer": "respond-async"})
    assert kick.status_code == 202, kick.text
    status_url = "/fhir" + kick.headers["content-location"].split("/fhir", 1)[1]
    deadline = time.monotonic() + 30
    while (status := client.get(status_url, headers=headers)).status_code == 202:
        assert time.monotonic() < deadline, "export did not finish"
        time.sleep(0.05)
    assert status.status_code == 200, status.text
    found: set[str] = set()
    for output in status.json()["output"]:
        file = client.get("/fhir" + output["url"].split("/fhir", 1)[1], headers=headers)
        assert file.status_code == 200
        for line in file.content.splitlines():
            resource = orjson.loads(line)
            found.add(f"{resource['resourceType']}/{resource['id']}")
    return found


def _to_everyone(patient: str) -> dict[str, Any]:
    """Consent to share with every public institution (no actor), OPTIN."""
    shared = consent(patient, "unused")
    shared["policyRule"] = OPTIN
    del shared["provision"]["actor"]
    return shared


def test_revocation_ends_access_on_every_read_path(world: tuple[TestClient, Services, Settings]) -> None:
    client, _, settings = world
    imss, issste = staff_headers(settings, "IMSS"), staff_headers(settings, "ISSSTE")
    pid = _create(client, imss, {"resourceType": "Patient", "name": [{"family": "Ramírez"}]})
    encounter = _create(
        client, imss, {"resourceType": "Encounter", "status": "finished", "subject": {"reference": f"Patient/{pid}"},
                       "class": {"system": ACT_CODE, "code": "AMB"}},
    )  # fmt: skip
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": f"Encounter/{encounter}"},
    }
    obs = _create(client, imss, observation)
    condition = _create(client, imss, _condition(pid, "E11.9"))
    consent_id = _create(client, imss, _to_everyone(pid))
    record = {f"Patient/{pid}", f"Encounter/{encounter}", f"Observation/{obs}", f"Condition/{condition}"}
    search = f"/fhir/Observation?subject=Patient/{pid}&_include=Observation:subject&_total=accurate"
    revinclude = f"/fhir/Encounter?_id={encounter}&_revinclude=Observation:encounter&_total=accurate"

    def shared() -> None:
        assert client.get(f"/fhir/Observation/{obs}", headers=issste).status_code == 200
        assert _search(client, search, issste) == ({f"Observation/{obs}"}, {f"Patient/{pid}"}, 1)
        assert _search(client, revinclude, issste) == ({f"Encounter/{encounter}"}, {f"Observation/{obs}"}, 1)
        status, found = _everything(client, pid, issste)
        assert status == 200 and record <= found
        assert client.get(f"/fhir/Patient/{pid}/$summary", headers=issste).status_code == 200
        assert record <= _export(client, issste)

    def withheld() -> None:
        assert client.get(f"/fhir/Observation/{obs}", headers=issste).status_code == 403
        assert _search(client, search, issste) == (set(), set(), 0)
        assert _search(client, revinclude, issste) == (set(), set(), 0)
        assert _everything(client, pid, issste) == (403, set())
        assert client.get(f"/fhir/Patient/{pid}/$summary", headers=issste).status_code == 403
        assert not record & _export(client, issste)
        # The recording institution keeps everything.
        assert _search(client, search, imss)[2] == 1

    shared()
    # Revoked by status: at once, every path.
    revoked = client.get(f"/fhir/Consent/{consent_id}", headers=imss).json() | {"status": "inactive"}
    assert client.put(f"/fhir/Consent/{consent_id}", json=revoked, headers=FHIR | imss).status_code == 200
    withheld()
    # Given again, then withdrawn by deletion: the same.
    again = _create(client, imss, _to_everyone(pid))
    shared()
    assert client.delete(f"/fhir/Consent/{again}", headers=imss).status_code in (200, 204)
    withheld()


def test_deny_provisions_keep_sensitive_records_inside(world: tuple[TestClient, Services, Settings]) -> None:
    client, _, settings = world
    imss, issste = staff_headers(settings, "IMSS"), staff_headers(settings, "ISSSTE")
    bienestar = staff_headers(settings, "IMSS-BIENESTAR")
    pid = _create(client, imss, {"resourceType": "Patient", "name": [{"family": "Ortega"}]})
    diabetes = _create(client, imss, _condition(pid, "E11.9"))
    depression = _create(client, imss, _condition(pid, "F32.9", label="PSY"))  # labelled mental health
    alcohol = _create(client, imss, _condition(pid, "F10.2"))  # an addiction, denied by its code
    note = _create(
        client, imss, {"resourceType": "DocumentReference", "status": "current",
                       "subject": {"reference": f"Patient/{pid}"},
                       "content": [{"attachment": {"contentType": "text/plain", "data": "bm90YQ=="}}]},
    )  # fmt: skip
    shared = consent(pid, "ISSSTE")
    shared["policyRule"] = OPTIN
    shared["provision"]["provision"] = [
        {"type": "deny", "securityLabel": [{"system": ACT_CODE, "code": "PSY"}]},
        {"type": "deny", "code": [{"coding": [{"system": ICD10, "code": "F10.2"}]}]},
        {"type": "deny", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "DocumentReference"}]},
    ]
    _create(client, imss, shared)
    hidden = {f"Condition/{depression}", f"Condition/{alcohol}", f"DocumentReference/{note}"}
    # ISSSTE sees the shared part, never the denied part — read, search, totals, _revinclude, $everything.
    assert client.get(f"/fhir/Condition/{diabetes}", headers=issste).status_code == 200
    for denied in hidden:
        assert client.get(f"/fhir/{denied}", headers=issste).status_code == 403
    assert _search(client, f"/fhir/Condition?subject=Patient/{pid}&_total=accurate", issste) == (
        {f"Condition/{diabetes}"}, set(), 1,
    )  # fmt: skip
    assert _search(client, f"/fhir/DocumentReference?subject=Patient/{pid}&_total=accurate", issste)[2] == 0
    revinclude = f"/fhir/Patient?_id={pid}&_revinclude=Condition:subject&_revinclude=DocumentReference:subject"
    assert _search(client, revinclude, issste)[1] == {f"Condition/{diabetes}"}
    include = f"/fhir/Condition?subject=Patient/{pid}&_include=Condition:subject&_total=accurate"
    assert _search(client, include, issste) == ({f"Condition/{diabetes}"}, {f"Patient/{pid}"}, 1)
    status, found = _everything(client, pid, issste)
    assert status == 200 and f"Condition/{diabetes}" in found and not hidden & found
    assert not hidden & _export(client, issste)
    # The recording institution keeps all of it; an institution the consent does not name sees nothing.
    assert _search(client, f"/fhir/Condition?subject=Patient/{pid}&_total=accurate", imss)[2] == 3
    assert _search(client, f"/fhir/Condition?subject=Patient/{pid}&_total=accurate", bienestar)[2] == 0
    # The denials are visible with the grants.
    grants = client.get(f"/fhir/Patient/{pid}/$access-grants", headers=issste).json()["parameter"]
    kinds = sorted(
        next(p["valueCode"] for p in g["part"] if p["name"] == "kind") for g in grants if g["name"] == "denial"
    )
    assert kinds == ["_security", "class", "code"]


def test_consent_by_another_institution_grants_nothing(world: tuple[TestClient, Services, Settings]) -> None:
    client, _, settings = world
    imss, issste = staff_headers(settings, "IMSS"), staff_headers(settings, "ISSSTE")
    pid = _create(client, imss, {"resourceType": "Patient", "name": [{"family": "Vega"}]})
    condition = _create(client, imss, _condition(pid, "I10"))
    # ISSSTE cannot write itself a grant to IMSS's record (DESIGN.md "Access": only the custodian grants).
    _create(client, issste, _to_everyone(pid))
    assert client.get(f"/fhir/Condition/{condition}", headers=issste).status_code == 403
    grants = client.get(f"/fhir/Patient/{pid}/$access-grants", headers=imss).json()
    assert [g for g in grants.get("parameter", []) if g["name"] == "grant"] == []
