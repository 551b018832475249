"""System search (``GET [base]?_type=``, ``POST [base]/_search``) and compartment search
(``GET [base]/Patient/[id]/[type]``), R4 search.html §3.1.1.1 and http.html#search (both backends)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.auth import mint_development_token
from tests.support.access import secured_server

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
GLASS = {"X-EHR-Break-Glass": "paciente inconsciente en urgencias"}


def _observation(oid: str, patient: str, code: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "urn:test", "code": code}]},
            "subject": {"reference": f"Patient/{patient}"}}  # fmt: skip


def _load(client: TestClient, headers: dict[str, str] | None = None, prefix: str = "") -> None:
    for patient in ("p1", "p2"):
        body = {"resourceType": "Patient", "id": f"{prefix}{patient}"}
        assert client.put(f"/fhir/Patient/{prefix}{patient}", json=body, headers=headers).is_success
    for oid, patient, code in (("o1", "p1", "a"), ("o2", "p1", "b"), ("o3", "p2", "a")):
        body = _observation(f"{prefix}{oid}", f"{prefix}{patient}", code)
        assert client.put(f"/fhir/Observation/{prefix}{oid}", json=body, headers=headers).is_success


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == "match"
    ]


def _all_pages(client: TestClient, url: str, headers: dict[str, str] | None = None) -> tuple[list[str], int]:
    found: list[str] = []
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    total = int(response.json()["total"])
    while True:
        bundle = response.json()
        assert bundle["type"] == "searchset"
        found += _ids(bundle)
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            return found, total
        response = client.get(following[0].split("testserver")[1], headers=headers)
        assert response.status_code == 200, response.text


def test_system_search_across_types_with_paging(client: TestClient) -> None:
    _load(client)
    found, total = _all_pages(client, "/fhir?_type=Patient,Observation&_count=2")
    assert sorted(found) == ["Observation/o1", "Observation/o2", "Observation/o3", "Patient/p1", "Patient/p2"]
    assert len(found) == len(set(found)) == total == 5
    # A parameter every listed type has, and one given by POST as a form.
    assert _ids(client.get("/fhir", params={"_type": "Patient,Observation", "_id": "o2"}).json()) == ["Observation/o2"]
    posted = client.post("/fhir/_search", content="_type=Observation&code=urn:test|a", headers=FORM)
    assert posted.status_code == 200, posted.text
    assert sorted(_ids(posted.json())) == ["Observation/o1", "Observation/o3"]
    # Without _type: every type.
    assert _ids(client.get("/fhir", params={"_id": "p2"}).json()) == ["Patient/p2"]
    # Unknown parameters: strict by default (400), ignored and reported under handling=lenient.
    strict = client.get("/fhir", params={"_type": "Observation", "nonsense": "1"})
    assert strict.status_code == 400 and strict.json()["issue"][0]["expression"] == ["nonsense"]
    lenient = client.get(
        "/fhir", params={"_type": "Observation", "nonsense": "1"}, headers={"Prefer": "handling=lenient"}
    )
    assert lenient.status_code == 200
    assert [e["search"]["mode"] for e in lenient.json()["entry"]].count("outcome") == 1
    unknown_type = client.get("/fhir", params={"_type": "Nonsense"})
    assert unknown_type.status_code == 404 and unknown_type.json()["resourceType"] == "OperationOutcome"
    assert client.post("/fhir/_search", content=b"{}", headers={"Content-Type": "application/json"}).status_code == 415


def test_compartment_search(client: TestClient) -> None:
    _load(client)
    found, total = _all_pages(client, "/fhir/Patient/p1/Observation?_count=1")
    assert sorted(found) == ["Observation/o1", "Observation/o2"] and total == 2
    assert _ids(client.get("/fhir/Patient/p1/Observation", params={"code": "urn:test|b"}).json()) == ["Observation/o2"]
    posted = client.post("/fhir/Patient/p2/Observation/_search", content="code=urn:test|a", headers=FORM)
    assert _ids(posted.json()) == ["Observation/o3"]
    assert _ids(client.get("/fhir/Patient/p1/Patient").json()) == ["Patient/p1"]
    assert client.get("/fhir/Patient/nobody/Observation").json()["total"] == 0
    strict = client.get("/fhir/Patient/p1/Observation", params={"nonsense": "1"})
    assert strict.status_code == 400 and strict.json()["resourceType"] == "OperationOutcome"
    # Not in the Patient compartment, or not a Patient compartment: said so, never a 500.
    not_there = client.get("/fhir/Patient/p1/Organization")
    assert not_there.status_code == 400 and not_there.json()["issue"][0]["code"] == "not-supported"
    other = client.get("/fhir/Encounter/e1/Observation")
    assert other.status_code == 404 and other.json()["issue"][0]["code"] == "not-supported"
    assert client.get("/fhir/Patient/p1/Nonsense").status_code == 404
    assert client.get("/fhir/Patient/p1/$nonsense").status_code == 404


@pytest.fixture
def secured(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Iterator[tuple[TestClient, Settings]]:
    backend = "sqlite" if settings.database_url is None else "postgres"
    with secured_server(request, backend, tmp_path / "ehr-data") as (client, _, configured):
        yield client, configured


def _auth(settings: Settings, institution: str, scope: str = "user/*.cruds", **claims: str) -> dict[str, str]:
    token = {"institution": institution, "user": "dr.x", "role": "physician", "scope": scope, **claims}
    return {"Authorization": f"Bearer {mint_development_token(settings, token)}"}


def test_system_and_compartment_search_follow_the_access_policy(secured: tuple[TestClient, Settings]) -> None:
    client, settings = secured
    imss, issste = _auth(settings, "IMSS"), _auth(settings, "ISSSTE")
    _load(client, imss)
    _load(client, issste, prefix="s-")
    # A direct read of IMSS's record is refused to ISSSTE: no search path shows it either.
    assert client.get("/fhir/Observation/o1", headers=issste).status_code == 403
    found, total = _all_pages(client, "/fhir?_type=Patient,Observation&_count=2", issste)
    assert sorted(found) == ["Observation/s-o1", "Observation/s-o2", "Observation/s-o3", "Patient/s-p1", "Patient/s-p2"]
    assert total == 5
    posted = client.post("/fhir/_search", content="_type=Observation", headers=FORM | issste)
    assert sorted(_ids(posted.json())) == ["Observation/s-o1", "Observation/s-o2", "Observation/s-o3"]
    compartment = client.get("/fhir/Patient/p1/Observation", headers=issste)
    assert compartment.status_code == 200 and compartment.json()["total"] == 0 and _ids(compartment.json()) == []
    # The same as the type search it stands for.
    typed = client.get("/fhir/Observation", params={"subject": "Patient/p1"}, headers=issste).json()
    assert typed["total"] == 0
    # The recorder sees its own; break-the-glass shows the other's, flagged.
    assert sorted(_ids(client.get("/fhir/Patient/p1/Observation", headers=imss).json())) == [
        "Observation/o1", "Observation/o2"]  # fmt: skip
    glass = client.get("/fhir/Patient/p1/Observation", headers=issste | GLASS)
    assert sorted(_ids(glass.json())) == ["Observation/o1", "Observation/o2"]
    assert glass.headers["x-ehr-break-glass"] == "granted"
    system_glass = client.get("/fhir", params={"_type": "Observation", "_id": "o3"}, headers=issste | GLASS)
    assert _ids(system_glass.json()) == ["Observation/o3"] and system_glass.headers["x-ehr-break-glass"] == "granted"
    # A patient-context token reaches its own compartment only.
    own = _auth(settings, "IMSS", "patient/*.rs", patient="p1")
    assert client.get("/fhir/Patient/p1/Observation", headers=own).status_code == 200
    assert client.get("/fhir/Patient/p2/Observation", headers=own).status_code == 403
