"""The record's contract, run against every backend (SQLite and PostgreSQL) through the HTTP API."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.context import WriteContext
from ehr_core.errors import Conflict, PreconditionFailed
from fhir_api.services import Services

FHIR = {"content-type": "application/fhir+json"}


def _exact(body: bytes) -> Any:
    """Parse keeping decimal text, so 1.50 and 1.5 compare different."""
    return json.loads(body, parse_float=lambda text: ("decimal", text))


def _create(client: TestClient, resource: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    response = client.post(f"/fhir/{resource['resourceType']}", content=json.dumps(resource), headers=FHIR)
    assert response.status_code == 201, response.text
    return response.headers["location"].split("/fhir/")[1].split("/_history")[0], response.json()


def test_create_then_read_returns_what_was_sent(client: TestClient) -> None:
    raw = (
        b'{"resourceType":"Observation","status":"final","code":{"text":"glucosa"},'
        b'"effectiveDateTime":"2024-04-09T10:00:00+00:00","valueQuantity":{"value":1.50,"unit":"mmol/L"},'
        b'"component":[{"code":{"text":"x"},"valueQuantity":{"value":-1e+245}}]}'
    )
    response = client.post("/fhir/Observation", content=raw, headers=FHIR)
    assert response.status_code == 201, response.text
    assert response.headers["etag"] == 'W/"1"'
    location = response.headers["location"]
    assert "/_history/1" in location and "Last-Modified" in response.headers
    path = location.split("/fhir/")[1].split("/_history")[0]
    read = client.get(f"/fhir/{path}")
    assert read.status_code == 200
    assert read.headers["content-type"].startswith("application/fhir+json")
    stored = _exact(read.content)
    sent = _exact(raw)
    assert stored["meta"]["versionId"] == "1"
    assert stored["valueQuantity"]["value"] == ("decimal", "1.50")
    assert stored["component"][0]["valueQuantity"]["value"] == ("decimal", "-1e+245")
    assert stored["effectiveDateTime"] == "2024-04-09T10:00:00+00:00"
    for key in ("meta", "id"):
        stored.pop(key)
    assert stored == sent


def test_update_versions_and_identical_content_adds_no_version(client: TestClient) -> None:
    path, body = _create(client, {"resourceType": "Patient", "name": [{"family": "Gómez"}]})
    body["active"] = True
    second = client.put(f"/fhir/{path}", json=body)
    assert second.status_code == 200 and second.headers["etag"] == 'W/"2"'
    again = client.put(f"/fhir/{path}", json=second.json())
    assert again.status_code == 200 and again.headers["etag"] == 'W/"2"'
    history = client.get(f"/fhir/{path}/_history").json()
    assert history["total"] == 2
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']
    assert client.get(f"/fhir/{path}/_history/1").json()["meta"]["versionId"] == "1"
    assert "active" not in client.get(f"/fhir/{path}/_history/1").json()


def test_create_on_update_with_client_id(client: TestClient) -> None:
    response = client.put("/fhir/Patient/curp-1", json={"resourceType": "Patient", "id": "curp-1"})
    assert response.status_code == 201
    assert response.json()["id"] == "curp-1"
    assert client.get("/fhir/Patient/curp-1").status_code == 200


def test_stale_if_match_is_412(client: TestClient) -> None:
    path, body = _create(client, {"resourceType": "Patient"})
    body["active"] = True
    assert client.put(f"/fhir/{path}", json=body, headers={"If-Match": 'W/"1"'}).status_code == 200
    body["active"] = False
    stale = client.put(f"/fhir/{path}", json=body, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"


def test_two_writers_on_one_version_exactly_one_wins(services: Services) -> None:
    written = services.application.create({"resourceType": "Patient"}, WriteContext())
    resource_id = written.resource_id
    barrier = threading.Barrier(2)

    def writer(flag: bool) -> str:
        barrier.wait()
        try:
            services.application.update(
                "Patient",
                resource_id,
                {"resourceType": "Patient", "id": resource_id, "active": flag},
                WriteContext(),
                if_match=1,
            )
        except (Conflict, PreconditionFailed) as error:
            return type(error).__name__
        return "won"

    for _ in range(5):
        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(writer, [True, False]))
        assert outcomes.count("won") == 1, outcomes
        stream = services.application.stream("Patient", resource_id)
        assert stream is not None and stream.version == 2
        # Reset for the next round: a fresh resource at version 1.
        resource_id = services.application.create({"resourceType": "Patient"}, WriteContext()).resource_id


def test_delete_is_a_tombstone(client: TestClient) -> None:
    path, body = _create(client, {"resourceType": "Patient", "active": True})
    assert client.delete(f"/fhir/{path}").status_code == 204
    gone = client.get(f"/fhir/{path}")
    assert gone.status_code == 410 and gone.headers["etag"] == 'W/"2"'
    assert gone.json()["issue"][0]["code"] == "deleted"
    assert client.delete(f"/fhir/{path}").status_code == 204  # idempotent, no new version
    history = client.get(f"/fhir/{path}/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    assert client.get(f"/fhir/{path}/_history/1").status_code == 200
    assert client.get(f"/fhir/{path}/_history/2").status_code == 410
    body.pop("meta")
    back = client.put(f"/fhir/{path}", json=body)
    assert back.status_code == 201 and back.headers["etag"] == 'W/"3"'


def test_history_pages_stay_stable_while_writes_arrive(client: TestClient) -> None:
    created = [_create(client, {"resourceType": "Basic", "code": {"text": str(i)}})[0] for i in range(25)]
    page = client.get("/fhir/Basic/_history?_count=10").json()
    seen: list[str] = []
    while True:
        seen += [entry["fullUrl"].split("/fhir/")[1] for entry in page["entry"]]
        # Writes between pages must not shift what the next page holds.
        _create(client, {"resourceType": "Basic", "code": {"text": "late"}})
        next_links = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not next_links:
            break
        page = client.get(next_links[0].split("testserver")[1]).json()
    assert seen == list(reversed(created))


def test_history_levels_and_since(client: TestClient) -> None:
    first, _ = _create(client, {"resourceType": "Patient"})
    middle = client.get(f"/fhir/{first}").json()["meta"]["lastUpdated"]
    second, _ = _create(client, {"resourceType": "Organization", "name": "IMSS"})
    system = client.get("/fhir/_history").json()
    assert [e["fullUrl"].split("/fhir/")[1] for e in system["entry"]] == [second, first]
    since = client.get("/fhir/_history", params={"_since": middle}).json()
    assert {e["fullUrl"].split("/fhir/")[1] for e in since["entry"]} == {first, second}
    later = client.get("/fhir/_history", params={"_since": "2999-01-01T00:00:00Z"}).json()
    assert later["entry"] == [] and later["total"] == 0
    assert client.get("/fhir/Patient/_history").json()["total"] == 1
    assert client.get("/fhir/_history?_since=yesterday").status_code == 400
    assert client.get("/fhir/_history?_count=-1").status_code == 400


def test_read_your_writes(client: TestClient) -> None:
    for i in range(20):
        path, _ = _create(client, {"resourceType": "Patient", "name": [{"given": [str(i)]}]})
        assert client.get(f"/fhir/{path}").status_code == 200
        assert client.get(f"/fhir/{path}/_history").json()["total"] == 1


@pytest.mark.parametrize(
    ("method", "url", "body", "headers", "status"),
    [
        ("post", "/fhir/Patient", b"{not json", FHIR, 400),
        ("post", "/fhir/Patient", b'{"resourceType":"Patient","gender":5}', FHIR, 400),
        ("post", "/fhir/Patient", b'{"resourceType":"Observation","status":"final"}', FHIR, 400),
        ("post", "/fhir/Patient", b'{"resourceType":"Patient"}', {"content-type": "text/plain"}, 415),
        ("post", "/fhir/Patient", b'{"resourceType":"Patient"}', {"content-type": "application/xml"}, 400),
        ("post", "/fhir/Unicorn", b'{"resourceType":"Unicorn"}', FHIR, 404),
        ("get", "/fhir/Patient/nope", b"", {}, 404),
        ("put", "/fhir/Patient/a", b'{"resourceType":"Patient","id":"b"}', FHIR, 400),
        ("put", "/fhir/Patient/a", b'{"resourceType":"Patient"}', FHIR, 400),
        ("put", "/fhir/Patient/a", b'{"resourceType":"Patient","id":"a"}', {**FHIR, "If-Match": "junk"}, 400),
        (
            "put",
            "/fhir/Patient/a",
            b'{"resourceType":"Patient","id":"a"}',
            {**FHIR, "If-Match": 'W/"4"'},
            412,
        ),
        ("post", "/fhir/Patient", b'{"resourceType":"Patient","a":1,"a":2}', FHIR, 400),
        ("get", "/fhir/Patient/a/_history/x", b"", {}, 400),
    ],
)
def test_errors_are_operation_outcomes(
    client: TestClient, method: str, url: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    response = client.request(method.upper(), url, content=body or None, headers=headers)
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"] and outcome["issue"][0]["severity"] == "error"


def test_invalid_resource_names_the_failing_path(client: TestClient) -> None:
    response = client.post(
        "/fhir/Patient", content=b'{"resourceType":"Patient","name":[{"given":"Ana"}]}', headers=FHIR
    )
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Patient.name[0].given"]


def test_body_over_the_limit_is_413(client: TestClient, services: Services) -> None:
    services.settings.max_body_bytes = 1024
    big = {"resourceType": "Basic", "code": {"text": "x" * 2048}}
    response = client.post("/fhir/Basic", content=json.dumps(big), headers=FHIR)
    assert response.status_code == 413
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(("prefer", "has_body"), [("return=minimal", False), ("return=representation", True)])
def test_prefer_return(client: TestClient, prefer: str, has_body: bool) -> None:
    response = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers={"Prefer": prefer})
    assert response.status_code == 201 and bool(response.content) is has_body


def test_prefer_operation_outcome_and_unknown_values(client: TestClient) -> None:
    outcome = client.post(
        "/fhir/Patient", json={"resourceType": "Patient"}, headers={"Prefer": "return=OperationOutcome"}
    )
    assert outcome.json()["resourceType"] == "OperationOutcome"
    unknown = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers={"Prefer": "return=presentation"})
    assert unknown.status_code == 201 and unknown.json()["resourceType"] == "Patient"


def test_rebuild_from_zero_equals_live(services: Services, client: TestClient) -> None:
    paths = [_create(client, {"resourceType": "Patient", "birthDate": f"19{i:02d}"})[0] for i in range(30)]
    for path in paths[:10]:
        body = client.get(f"/fhir/{path}").json()
        body["active"] = True
        client.put(f"/fhir/{path}", json=body)
    for path in paths[10:15]:
        client.delete(f"/fhir/{path}")
    live = services.projector.dump()
    services.projector.reset()
    assert all(rows == [] for rows in services.projector.dump().values())
    services.projector.catch_up()
    assert services.projector.dump() == live
    assert len(live["resources"]) + len(live["resource_history"]) == 30 + 45


def test_capability_statement_lists_what_is_supported(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    assert statement["fhirVersion"] == "4.0.1"
    rest = statement["rest"][0]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    interactions = {i["code"] for i in patient["interaction"]}
    assert {"read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create"} <= interactions
    # Conditional read answers 304 on If-None-Match and If-Modified-Since (R4 http.html#cread).
    assert patient["conditionalRead"] == "full-support" and patient["conditionalDelete"] == "single"
    assert {i["code"] for i in rest["interaction"]} >= {"transaction", "batch", "history-system"}
    types = {r["type"] for r in rest["resource"]}
    # MedicinalProduct: R4, dropped by R4B, stored here (ehr_core/resources/r4_only.py); SubscriptionTopic: R4B only.
    assert "MedicinalProduct" in types and "SubscriptionTopic" not in types and "Observation" in types
