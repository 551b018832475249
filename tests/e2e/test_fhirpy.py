"""A real FHIR client (fhirpy's ``SyncFHIRClient``) against a real server process, on each backend.

fhirpy sends ``Content-Type: application/json`` and maps 404 and 410 alike to ``ResourceNotFound``, whose
message is the response body: the OperationOutcome's issue code tells a deleted resource from a missing one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

pytestmark = pytest.mark.e2e


def _issue_codes(error: ResourceNotFound) -> list[str]:
    outcome: dict[str, Any] = json.loads(str(error))
    assert outcome["resourceType"] == "OperationOutcome", outcome
    return [issue["code"] for issue in outcome["issue"]]


def test_patient_lifecycle_with_fhirpy(fhir_server: str) -> None:
    client = SyncFHIRClient(fhir_server, requests_config={"timeout": 30})

    # create: POST, the server assigns the id.
    patient = client.resource(
        "Patient",
        name=[{"family": "Gómez", "given": ["Ana"]}],
        gender="female",
        birthDate="1980-02-03",
    )
    patient.save()
    patient_id = patient.id
    assert patient_id, f"create returned no id: {patient}"
    assert patient["meta"]["versionId"] == "1"

    # read
    read = client.reference("Patient", patient_id).to_resource()
    assert read.id == patient_id
    assert read["meta"]["versionId"] == "1"
    assert read["name"] == [{"family": "Gómez", "given": ["Ana"]}]
    assert read["birthDate"] == "1980-02-03"

    # update: PUT with the id; a change makes version 2.
    read["name"] = [{"family": "Gómez", "given": ["Ana", "María"]}]
    read["active"] = True
    read.save()
    assert read.id == patient_id
    assert read["meta"]["versionId"] == "2"
    updated = client.get("Patient", patient_id)
    assert updated["meta"]["versionId"] == "2"
    assert updated["name"][0]["given"] == ["Ana", "María"]
    assert updated["active"] is True

    # delete: version 3 is a tombstone; a read now fails with 410 "deleted", not 404 "not-found".
    client.delete("Patient", patient_id)
    with pytest.raises(ResourceNotFound) as gone:
        client.get("Patient", patient_id)
    assert _issue_codes(gone.value) == ["deleted"], str(gone.value)
    with pytest.raises(ResourceNotFound) as missing:
        client.get("Patient", "never-written")
    assert _issue_codes(missing.value) == ["not-found"], str(missing.value)

    # instance history: every version, newest first.
    history = client.execute(f"Patient/{patient_id}/_history", method="get")
    assert history["resourceType"] == "Bundle"
    assert history["type"] == "history"
    assert history["total"] == 3
    entries = history["entry"]
    assert [entry["request"]["method"] for entry in entries] == ["DELETE", "PUT", "POST"]
    assert [entry["response"]["etag"] for entry in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert "resource" not in entries[0], "a delete entry carries no resource"
    assert entries[1]["resource"]["meta"]["versionId"] == "2"
    assert entries[1]["resource"]["name"][0]["given"] == ["Ana", "María"]
    assert entries[2]["resource"]["meta"]["versionId"] == "1"
    assert entries[2]["resource"]["name"][0]["given"] == ["Ana"]
    assert all(entry["resource"]["id"] == patient_id for entry in entries[1:])
