"""Bulk Data $export: kick-off, status, manifest, files, cancel; and a round trip into an empty store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.context import WriteContext
from ehr_core.importing import Importer
from ehr_core.settings import Settings
from fhir_api.resolver import ViewResolver
from fhir_api.services import Services
from tests.conftest import CORPUS

ASYNC = {"Prefer": "respond-async"}


def _wait(client: TestClient, status_url: str) -> dict[str, Any]:
    path = status_url.split("testserver")[1]
    for _ in range(600):
        response = client.get(path)
        if response.status_code == 200:
            manifest: dict[str, Any] = response.json()
            return manifest
        assert response.status_code == 202, response.text
        assert "X-Progress" in response.headers
        time.sleep(0.05)
    raise AssertionError("export did not finish")


def _files(client: TestClient, manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    files = {}
    for output in manifest["output"]:
        response = client.get(output["url"].split("testserver")[1])
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [json.loads(line) for line in response.content.splitlines()]
        assert len(lines) == output["count"]
        files[output["type"]] = lines
    return files


def _load(client: TestClient) -> None:
    client.put("/fhir/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    client.put("/fhir/Patient/p2", json={"resourceType": "Patient", "id": "p2"})
    for patient in ("p1", "p2"):
        observation = {
            "resourceType": "Observation",
            "id": f"o-{patient}",
            "status": "final",
            "code": {"text": "peso"},
            "subject": {"reference": f"Patient/{patient}"},
        }
        client.put(f"/fhir/Observation/o-{patient}", json=observation)
    client.put("/fhir/Organization/imss", json={"resourceType": "Organization", "id": "imss", "name": "IMSS"})
    group = {
        "resourceType": "Group",
        "id": "g",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": "Patient/p2"}}],
    }
    client.put("/fhir/Group/g", json=group)
    client.delete("/fhir/Patient/p1")


def test_system_export(client: TestClient) -> None:
    _load(client)
    kick_off = client.get("/fhir/$export", headers=ASYNC)
    assert kick_off.status_code == 202
    manifest = _wait(client, kick_off.headers["content-location"])
    files = _files(client, manifest)
    assert sorted(files) == ["Group", "Observation", "Organization", "Patient"]
    assert [p["id"] for p in files["Patient"]] == ["p2"]  # deleted resources are not exported
    assert manifest["requiresAccessToken"] is False and manifest["transactionTime"]


def test_patient_group_type_and_since(client: TestClient) -> None:
    _load(client)
    patient = _files(
        client, _wait(client, client.get("/fhir/Patient/$export", headers=ASYNC).headers["content-location"])
    )
    # Group is in the Patient compartment (member.entity, R4 CompartmentDefinition "patient").
    assert sorted(patient) == ["Group", "Observation", "Patient"]
    group = _files(
        client, _wait(client, client.get("/fhir/Group/g/$export", headers=ASYNC).headers["content-location"])
    )
    assert [o["id"] for o in group["Observation"]] == ["o-p2"]
    typed = client.get("/fhir/$export?_type=Organization", headers=ASYNC)
    assert sorted(_files(client, _wait(client, typed.headers["content-location"]))) == ["Organization"]
    later = client.get("/fhir/$export?_since=2999-01-01T00:00:00Z", headers=ASYNC)
    assert _wait(client, later.headers["content-location"])["output"] == []


def test_export_errors_and_cancel(client: TestClient) -> None:
    assert client.get("/fhir/$export").status_code == 400  # no Prefer: respond-async
    assert client.get("/fhir/$export?_type=Unicorn", headers=ASYNC).status_code == 404
    assert client.get("/fhir/$export?_outputFormat=text/csv", headers=ASYNC).status_code == 400
    assert client.get("/fhir/Group/none/$export", headers=ASYNC).status_code == 404
    assert client.get("/fhir/$export-status/unknown").status_code == 404
    status_url = client.get("/fhir/$export", headers=ASYNC).headers["content-location"]
    path = status_url.split("testserver")[1]
    assert client.delete(path).status_code == 202
    assert client.get(path).status_code == 404


@pytest.mark.slow
def test_export_then_import_into_an_empty_store_gives_the_same_resources(
    client: TestClient, services: Services, tmp_path: Path
) -> None:
    importer = Importer(services.application, ViewResolver(services), services.projector.wait_until)
    report = importer.run(importer.sources([CORPUS / "synthea" / "smart-r4-2019"]))
    assert report.stored == 3507 and not report.rejected
    files = _files(client, _wait(client, client.get("/fhir/$export", headers=ASYNC).headers["content-location"]))
    exported = tmp_path / "export"
    exported.mkdir()
    for resource_type, resources in files.items():
        (exported / f"{resource_type}.ndjson").write_text("\n".join(json.dumps(r) for r in resources) + "\n")
    fresh = Services.open(Settings(data_dir=tmp_path / "fresh"), follow=False)
    try:
        second = Importer(fresh.application, ViewResolver(fresh), fresh.projector.wait_until, WriteContext())
        report = second.run(second.sources([exported]))
        assert report.stored == 3507 and not report.rejected
        for resource_type, resources in files.items():
            for original in resources:
                stream = fresh.application.stream(resource_type, original["id"])
                assert stream is not None and stream.resource is not None
                copy = json.loads(stream.resource)
                for resource in (copy, original):
                    resource["meta"].pop("versionId")
                    resource["meta"].pop("lastUpdated")
                assert copy == original
    finally:
        fresh.close()
