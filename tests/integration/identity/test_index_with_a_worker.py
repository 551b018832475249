"""The master patient index read through an API process while an ``ehr project`` worker projects.

The worker applies the resource views first and the index (links, and who wrote each entry) after them, batch
by batch; a write other than a Patient's waits for the resource views only. A unified record read between
the two batches must wait for the index, or it would attribute the new entry to an unknown institution.
"""

from __future__ import annotations

import threading
from pathlib import Path

import orjson
import pytest

from ehr_core.context import WriteContext
from ehr_core.settings import Settings
from fhir_api.operations.everything import everything
from fhir_api.operations.unified import source_uri
from fhir_api.services import Services

pytestmark = pytest.mark.postgres

WRITER = WriteContext(institution="ISSSTE", unit="DFIST000011", user="dra-lopez")


def test_the_unified_record_waits_for_the_index_to_name_who_wrote_an_entry(
    postgres_settings: Settings, tmp_path: Path
) -> None:
    settings = postgres_settings.model_copy(
        update={"data_dir": tmp_path / "ehr-data", "projection": "worker", "projection_wait_seconds": 30.0}
    )
    worker = Services.open(settings, follow=False)  # projects only when told to, below
    api = Services.open(settings)  # waits for the worker's announcements
    try:
        assert api.watcher is not None
        patient = api.application.create({"resourceType": "Patient", "name": [{"family": "Ortega"}]}, WRITER)
        worker.projector.catch_up()
        worker.identity.catch_up()
        api.wait_until_visible(patient)
        glucose = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
            "subject": {"reference": f"Patient/{patient.resource_id}"},
            "valueQuantity": {"value": 212, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
        }
        written = api.application.create(glucose, WRITER)
        worker.projector.catch_up()  # the resource views only: the index is one batch behind
        api.wait_until_visible(written)

        answer: list[bytes] = []
        reader = threading.Thread(
            target=lambda: answer.append(everything(api, "http://x/fhir", patient.resource_id, None, None, 50, 0))
        )
        reader.start()
        reader.join(0.5)  # the read is under way (or, before it waited for the index, already answered)
        worker.identity.catch_up()
        reader.join(30)

        assert answer, "the unified record did not answer once the index caught up"
        entries = orjson.loads(answer[0])["entry"]
        sources = {e["resource"]["resourceType"]: e["resource"]["meta"]["source"] for e in entries}
        assert sources == {
            "Patient": source_uri("ISSSTE", "DFIST000011"),
            "Observation": source_uri("ISSSTE", "DFIST000011"),
        }
    finally:
        api.close()
        worker.close()
