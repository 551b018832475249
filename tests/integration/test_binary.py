"""Binary in its native form (R4 binary.html, http.html "Support for Binary resources"), both backends:
native content in and out, the FHIR representation on request, X-Security-Context and the access policy."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.services import Services
from tests.support.access import consent, staff_headers

FHIR = {"Content-Type": "application/fhir+json"}
ACCEPT_FHIR = {"Accept": "application/fhir+json"}
# Not a valid PDF's worth of structure, but its bytes: every byte value, so nothing may be re-encoded.
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 4


def _outcome(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body


def _post_pdf(client: TestClient, headers: dict[str, str] | None = None, content: bytes = PDF) -> str:
    response = client.post(
        "/fhir/Binary", content=content, headers={"Content-Type": "application/pdf", **(headers or {})}
    )
    assert response.status_code == 201, response.text
    location = response.headers["location"]
    assert "/fhir/Binary/" in location and location.endswith("/_history/1")
    return location.split("/fhir/Binary/")[1].split("/")[0]


def test_native_content_round_trip(client: TestClient) -> None:
    binary_id = _post_pdf(client)

    raw = client.get(f"/fhir/Binary/{binary_id}", headers={"Accept": "application/pdf"})
    assert raw.status_code == 200
    assert raw.content == PDF
    assert raw.headers["content-type"] == "application/pdf"
    assert raw.headers["etag"] == 'W/"1"'
    assert raw.headers["last-modified"]
    assert raw.headers["x-content-type-options"] == "nosniff"
    # No FHIR type asked for (*/*): the content too (R4 binary.html).
    assert client.get(f"/fhir/Binary/{binary_id}", headers={"Accept": "*/*"}).content == PDF

    resource = client.get(f"/fhir/Binary/{binary_id}", headers=ACCEPT_FHIR)
    assert resource.status_code == 200
    assert resource.headers["content-type"].startswith("application/fhir+json")
    stored = resource.json()
    assert stored["resourceType"] == "Binary" and stored["id"] == binary_id
    assert stored["contentType"] == "application/pdf"
    assert base64.b64decode(stored["data"]) == PDF
    assert stored["meta"]["versionId"] == "1"
    assert "securityContext" not in stored
    assert client.get(f"/fhir/Binary/{binary_id}?_format=json").json()["id"] == binary_id

    # Conditional read of the content: the same validators as any read.
    assert client.get(f"/fhir/Binary/{binary_id}", headers={"If-None-Match": 'W/"1"'}).status_code == 304

    # Update with other native content: a new version; vread serves each version's own bytes.
    updated = client.put(f"/fhir/Binary/{binary_id}", content=PNG, headers={"Content-Type": "image/png"})
    assert updated.status_code == 200, updated.text
    assert updated.json()["meta"]["versionId"] == "2"
    latest = client.get(f"/fhir/Binary/{binary_id}")
    assert latest.content == PNG and latest.headers["content-type"] == "image/png"
    assert latest.headers["etag"] == 'W/"2"'
    first = client.get(f"/fhir/Binary/{binary_id}/_history/1")
    assert first.content == PDF and first.headers["content-type"] == "application/pdf"
    assert first.headers["etag"] == 'W/"1"'
    assert client.get(f"/fhir/Binary/{binary_id}/_history/1", headers=ACCEPT_FHIR).json()["contentType"] == (
        "application/pdf"
    )
    history = client.get(f"/fhir/Binary/{binary_id}/_history")
    assert history.status_code == 200
    assert [e["resource"]["meta"]["versionId"] for e in history.json()["entry"]] == ["2", "1"]

    # Create-on-update with a client id, and If-Match on native content.
    created = client.put("/fhir/Binary/scan-1", content=PNG, headers={"Content-Type": "image/png"})
    assert created.status_code == 201
    stale = client.put(
        "/fhir/Binary/scan-1", content=PDF, headers={"Content-Type": "application/pdf", "If-Match": 'W/"7"'}
    )
    assert stale.status_code in (409, 412)
    assert client.get("/fhir/Binary/scan-1").content == PNG

    # Deleted: 410 for the content as for the resource.
    assert client.delete(f"/fhir/Binary/{binary_id}").status_code in (200, 204)
    _outcome(client.get(f"/fhir/Binary/{binary_id}", headers={"Accept": "application/pdf"}), 410)
    _outcome(client.get("/fhir/Binary/nobody", headers={"Accept": "application/pdf"}), 404)


def test_binary_resource_body_still_a_resource(client: TestClient) -> None:
    """A FHIR body to POST /Binary is a Binary resource (R4 binary.html), not content to wrap."""
    data = base64.b64encode(b"hola").decode()
    body = {"resourceType": "Binary", "contentType": "text/plain", "data": data}
    created = client.post("/fhir/Binary", json=body, headers=FHIR)
    assert created.status_code == 201
    binary_id = created.json()["id"]
    raw = client.get(f"/fhir/Binary/{binary_id}")
    assert raw.content == b"hola" and raw.headers["content-type"] == "text/plain"
    # The header belongs with native content: with a resource body, the resource says it.
    _outcome(client.post("/fhir/Binary", json=body, headers=FHIR | {"X-Security-Context": "Patient/p"}), 400)


@pytest.mark.parametrize(
    "header", ["Patient", "Patient/", "patient/123", "Nonsense/123", "Patient/1/_history/2", "Patient/a b", "x" * 300]
)
def test_malformed_security_context_is_400(client: TestClient, header: str) -> None:
    response = client.post(
        "/fhir/Binary", content=PDF, headers={"Content-Type": "application/pdf", "X-Security-Context": header}
    )
    outcome = _outcome(response, 400)
    assert "X-Security-Context" in outcome["issue"][0]["diagnostics"]
    assert client.get("/fhir/Binary", headers=ACCEPT_FHIR).json().get("total", 0) == 0  # nothing stored


def test_security_context_header_is_stored(client: TestClient) -> None:
    client.put("/fhir/Patient/p1", json={"resourceType": "Patient", "id": "p1"}, headers=FHIR)
    binary_id = _post_pdf(client, {"X-Security-Context": "Patient/p1"})
    stored = client.get(f"/fhir/Binary/{binary_id}", headers=ACCEPT_FHIR).json()
    assert stored["securityContext"] == {"reference": "Patient/p1"}
    # In the patient's compartment, so with the rest of the record ($everything).
    everything = client.get("/fhir/Patient/p1/$everything").json()
    assert f"Binary/{binary_id}" in {
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in everything.get("entry", [])
    }


@pytest.fixture
def small_client(settings: Settings) -> Iterator[TestClient]:
    services = Services.open(settings.model_copy(update={"max_body_bytes": 4096}))
    try:
        with TestClient(create_app(services=services)) as test_client:
            yield test_client
    finally:
        services.close()


def test_body_over_the_limit_is_413(small_client: TestClient) -> None:
    outcome = _outcome(
        small_client.post("/fhir/Binary", content=b"x" * 5000, headers={"Content-Type": "image/png"}), 413
    )
    assert outcome["issue"][0]["code"] == "too-costly"
    put = small_client.put("/fhir/Binary/big", content=b"x" * 5000, headers={"Content-Type": "image/png"})
    _outcome(put, 413)
    # Streamed without a Content-Length: counted as it arrives.
    chunks = iter([b"x" * 3000, b"x" * 3000])
    _outcome(small_client.post("/fhir/Binary", content=chunks, headers={"Content-Type": "image/png"}), 413)
    assert (
        small_client.post("/fhir/Binary", content=b"x" * 4000, headers={"Content-Type": "image/png"}).status_code == 201
    )


def test_access_policy_follows_the_security_context(secured_client: tuple[TestClient, Settings]) -> None:
    """A Binary whose securityContext is a patient is read by another institution with that patient's
    Consent, as the patient's record is; without a securityContext only its recorder reads it."""
    client, settings = secured_client
    imss, issste = staff_headers(settings, "IMSS"), staff_headers(settings, "ISSSTE")
    patient = client.post(
        "/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Ruiz"}]}, headers=FHIR | imss
    )
    assert patient.status_code == 201
    pid = patient.json()["id"]
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "glucosa"},
        "subject": {"reference": f"Patient/{pid}"},
    }
    oid = client.post("/fhir/Observation", json=observation, headers=FHIR | imss).json()["id"]
    of_patient = _post_pdf(client, imss | {"X-Security-Context": f"Patient/{pid}"})
    of_observation = _post_pdf(client, imss | {"X-Security-Context": f"Observation/{oid}"})
    of_nobody = _post_pdf(client, imss)

    for binary_id in (of_patient, of_observation, of_nobody):
        own = client.get(f"/fhir/Binary/{binary_id}", headers=imss | {"Accept": "application/pdf"})
        assert own.status_code == 200 and own.content == PDF
        for path in (f"/fhir/Binary/{binary_id}", f"/fhir/Binary/{binary_id}/_history/1"):
            _outcome(client.get(path, headers=issste | {"Accept": "application/pdf"}), 403)
            _outcome(client.get(path, headers=issste | ACCEPT_FHIR), 403)

    assert client.post("/fhir/Consent", json=consent(pid, "ISSSTE"), headers=FHIR | imss).status_code == 201
    for binary_id in (of_patient, of_observation):
        shared = client.get(f"/fhir/Binary/{binary_id}", headers=issste | {"Accept": "application/pdf"})
        assert shared.status_code == 200 and shared.content == PDF
        assert client.get(f"/fhir/Binary/{binary_id}/_history/1", headers=issste).content == PDF
    # Outside every compartment: the recorder's alone, whatever the patient consented to.
    _outcome(client.get(f"/fhir/Binary/{of_nobody}", headers=issste), 403)
    # Search and history are filtered the same way.
    listed = client.get("/fhir/Binary", headers=issste | ACCEPT_FHIR).json()
    assert {e["resource"]["id"] for e in listed.get("entry", [])} == {of_patient, of_observation}
    # Only the recorder changes it (the write policy), native content or not.
    refused = client.put(f"/fhir/Binary/{of_patient}", content=PNG, headers=issste | {"Content-Type": "image/png"})
    _outcome(refused, 403)

    # Each read is audited, the patient named even though the content names nobody.
    audit = client.get(f"/fhir/AuditEvent?entity=Binary/{of_patient}&_count=100", headers=imss).json()
    reads = [
        e["resource"]
        for e in audit.get("entry", [])
        if e["resource"].get("subtype", [{}])[0].get("code") == "read"
        and any(a.get("who", {}).get("identifier", {}).get("value") == "ISSSTE" for a in e["resource"]["agent"])
    ]
    assert reads, audit
    outcomes = {event["outcome"] for event in reads}
    assert outcomes == {"0", "4"}  # refused before the Consent, served after it
    patients = {
        entity["what"]["reference"]
        for event in reads
        for entity in event["entity"]
        if entity["what"].get("reference", "").startswith("Patient/")
    }
    assert patients == {f"Patient/{pid}"}
