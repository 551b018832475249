"""An API process beside an ``ehr project`` worker (``EHR_PROJECTION=worker``, PostgreSQL).

The worker applies the log; the API process waits for the positions it announces and never projects itself:
its CPU is the requests' (one Python process answers them all), the worker's is on another core. Read-your-
writes still holds for every kind of write: a transaction's search entries and reads after it, a batch's
entries, a conditional create that must see the resource an earlier one made, and the unified record, which
names who wrote each entry from the index the worker applies after the resource views (batch by batch).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from ehr_core.context import WriteContext
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.cli.project import follow
from fhir_api.operations.everything import everything
from fhir_api.operations.unified import source_uri
from fhir_api.services import Services

pytestmark = pytest.mark.postgres

WRITER = WriteContext(institution="ISSSTE", unit="DFIST000011", user="dra-lopez")


def _worker_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={"data_dir": tmp_path / "ehr-data", "projection": "worker", "projection_wait_seconds": 30.0}
    )


@contextmanager
def _beside_a_worker(settings: Settings) -> Iterator[Services]:
    """The API's services, an ``ehr project`` loop applying the log in a thread beside them."""
    worker = Services.open(settings, follow=False)
    api = Services.open(settings)
    stop = threading.Event()
    loop = threading.Thread(target=follow, args=(worker, stop), kwargs={"poll_seconds": 0.1}, daemon=True)
    loop.start()
    try:
        assert api.watcher is not None
        yield api
    finally:
        stop.set()
        loop.join(timeout=30)
        api.close()
        worker.close()


def _observation(patient: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": patient},
        "valueQuantity": {"value": 212, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
    }


def test_writes_are_read_back_at_once_and_the_api_process_projects_none(
    postgres_settings: Settings, tmp_path: Path
) -> None:
    with (
        _beside_a_worker(_worker_settings(postgres_settings, tmp_path)) as api,
        TestClient(create_app(services=api)) as client,
    ):
        projected = {projector.name: projector.position for projector in api.store_projectors("")}
        patient_url = "urn:uuid:6f3a4c1e-0000-4000-8000-000000000001"
        transaction = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": patient_url,
                    "resource": {"resourceType": "Patient", "name": [{"family": "Ortega"}]},
                    "request": {"method": "POST", "url": "Patient"},
                },
                {"resource": _observation(patient_url, "2339-0"), "request": {"method": "POST", "url": "Observation"}},
                {"request": {"method": "GET", "url": "Observation?code=http://loinc.org|2339-0"}},
            ],
        }
        answer = client.post(
            "/fhir", content=orjson.dumps(transaction), headers={"content-type": "application/fhir+json"}
        )
        assert answer.status_code == 200, answer.text
        entries = answer.json()["entry"]
        patient = entries[0]["response"]["location"].split("/_history")[0]
        assert entries[2]["resource"]["total"] == 1  # the search entry saw the transaction's Observation
        assert client.get(f"/fhir/{patient}").status_code == 200
        found = client.get("/fhir/Observation", params={"subject": patient}).json()
        assert found["total"] == 1

        batch = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"resource": _observation(patient, "718-7"), "request": {"method": "POST", "url": "Observation"}}
            ],
        }
        answer = client.post("/fhir", content=orjson.dumps(batch), headers={"content-type": "application/fhir+json"})
        assert answer.status_code == 200, answer.text
        created = answer.json()["entry"][0]["response"]["location"].split("/_history")[0]
        assert client.get(f"/fhir/{created}").status_code == 200

        # A conditional create matches against the views as the log stands: the second finds the first.
        organisation = {"resourceType": "Organization", "identifier": [{"system": "urn:clues", "value": "DFIST000011"}]}
        condition = {"content-type": "application/fhir+json", "If-None-Exist": "identifier=urn:clues|DFIST000011"}
        first = client.post("/fhir/Organization", content=orjson.dumps(organisation), headers=condition)
        second = client.post("/fhir/Organization", content=orjson.dumps(organisation), headers=condition)
        assert (first.status_code, second.status_code) == (201, 200)
        assert second.json()["id"] == first.json()["id"]

        assert {projector.name: projector.position for projector in api.store_projectors("")} == projected


def test_the_unified_record_waits_for_the_index_to_name_who_wrote_an_entry(
    postgres_settings: Settings, tmp_path: Path
) -> None:
    settings = _worker_settings(postgres_settings, tmp_path)
    worker = Services.open(settings, follow=False)  # projects only when told to, below
    api = Services.open(settings)  # waits for the worker's announcements
    try:
        assert api.watcher is not None
        patient = api.application.create({"resourceType": "Patient", "name": [{"family": "Ortega"}]}, WRITER)
        worker.projector.catch_up()
        worker.identity.catch_up()
        api.wait_until_visible(patient)
        written = api.application.create(_observation(f"Patient/{patient.resource_id}", "2339-0"), WRITER)
        worker.projector.catch_up()  # the resource views only: the index is one batch behind
        api.wait_until_visible(written)

        answer: list[bytes] = []
        reader = threading.Thread(
            target=lambda: answer.append(everything(api, "http://x/fhir", patient.resource_id, None, None, 50, 0))
        )
        reader.start()
        reader.join(0.5)  # the read is under way (or, had it not waited for the index, already answered)
        worker.identity.catch_up()
        reader.join(30)

        assert answer, "the unified record did not answer once the index caught up"
        entries = orjson.loads(answer[0])["entry"]
        sources = {e["resource"]["resourceType"]: e["resource"]["meta"]["source"] for e in entries}
        writer = source_uri("ISSSTE", "DFIST000011")
        assert sources == {"Patient": writer, "Observation": writer}
    finally:
        api.close()
        worker.close()
