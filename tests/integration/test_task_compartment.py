"""A Task for a patient is in that patient's compartment (R4 compartmentdefinition-patient.json lists Task by
``patient`` = ``Task.for`` and ``focus``): sealed under the patient's data key, returned by the patient's
``$everything``, and unreadable once ``ehr shred`` destroyed that key. Both backends."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.encryption import stored_key_id
from ehr_core.keys import SYSTEM, Erased
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.cli import main
from fhir_api.services import Services

FHIR = {"Content-Type": "application/fhir+json", "X-EHR-Institution": "IMSS"}


def _stored_key(services: Services, resource_type: str, resource_id: str) -> bytes:
    stream = services.application.stream(resource_type, resource_id)
    assert stream is not None
    notifications = services.application.recorder.select_notifications(start=1, limit=1_000_000)
    states = [n.state for n in notifications if n.originator_id == stream.id]
    assert len(states) == 1
    return stored_key_id(states[0])


def _task(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {"text": "Toma de muestra de glucosa en ayuno"},
        "for": {"reference": f"Patient/{patient}"},
    }


def test_a_task_for_a_patient_is_sealed_returned_and_shredded_with_the_patient(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = Services.open(settings)
    try:
        with TestClient(create_app(services=services)) as client:
            created = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Tarea"}]},
                                  headers=FHIR)  # fmt: skip
            assert created.status_code == 201, created.text
            pid = created.json()["id"]
            other = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Otra"}]},
                                headers=FHIR).json()["id"]  # fmt: skip
            task = client.post("/fhir/Task", json=_task(pid), headers=FHIR)
            assert task.status_code == 201, task.text
            task_id = task.json()["id"]

            keys = services.application.keys
            patient_key = keys.key_id_of(pid)
            assert patient_key is not None and patient_key != keys.key_id_of(SYSTEM)
            assert _stored_key(services, "Task", task_id) == patient_key

            services.projector.catch_up()
            everything = client.get(f"/fhir/Patient/{pid}/$everything")
            assert everything.status_code == 200, everything.text
            found = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in everything.json().get("entry", [])}
            assert ("Task", task_id) in found and ("Patient", pid) in found
            elsewhere = client.get(f"/fhir/Patient/{other}/$everything").json().get("entry", [])
            assert ("Task", task_id) not in {(e["resource"]["resourceType"], e["resource"]["id"]) for e in elsewhere}
    finally:
        services.close()

    # The command an operator runs (forced: the record is within NOM-004 retention).
    monkeypatch.setenv("EHR_DATA_DIR", str(settings.data_dir.resolve()))
    if settings.database_url:
        monkeypatch.setenv("EHR_DATABASE_URL", str(settings.database_url))
        monkeypatch.setenv("EHR_POSTGRES_SCHEMA", settings.postgres_schema)
    assert main(["shred", "--patient", pid, "--legal-basis", "orden judicial 12/2026", "--force"]) == 0

    services = Services.open(settings)
    try:
        with pytest.raises(Erased):
            services.application.stream("Task", task_id)
        with TestClient(create_app(services=services)) as client:
            services.projector.catch_up()
            assert client.get(f"/fhir/Task/{task_id}").status_code == 410
            assert "Tarea" not in client.get("/fhir/Task").text
            assert task_id not in client.get("/fhir/Task").text
    finally:
        services.close()
