"""``_at`` on history (R4 http.html#history): "only include resource versions that were current at some
point during the time period specified", at instance, type and system level, on every backend. The
moments are the server's own ``meta.lastUpdated`` of each version (no clock is read here)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

FHIR = {"content-type": "application/fhir+json"}


def _put(client: TestClient, resource: dict[str, Any]) -> str:
    response = client.put(
        f"/fhir/{resource['resourceType']}/{resource['id']}", content=json.dumps(resource), headers=FHIR
    )
    assert response.status_code in (200, 201), response.text
    return str(response.json()["meta"]["lastUpdated"])


def _versions(client: TestClient, path: str, at: str) -> list[str]:
    response = client.get(f"/fhir/{path}", params={"_at": at})
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "history" and bundle["total"] == len(bundle["entry"])
    assert "_at=" in bundle["link"][0]["url"]  # the self link shows what was applied
    return sorted(
        f"{e['request']['url'].split('/')[-1] if e['request']['method'] != 'POST' else '?'}@{e['response']['etag']}"
        for e in bundle["entry"]
    )


@pytest.fixture
def versions(client: TestClient) -> dict[str, str]:
    """pa: versions 1-3 then deleted (4); pb: version 1 written between pa's 2 and 3."""
    moments = {
        "pa1": _put(client, {"resourceType": "Patient", "id": "pa", "gender": "female"}),
        "pa2": _put(client, {"resourceType": "Patient", "id": "pa", "gender": "male"}),
        "pb1": _put(client, {"resourceType": "Patient", "id": "pb", "gender": "other"}),
        "pa3": _put(client, {"resourceType": "Patient", "id": "pa", "gender": "unknown"}),
    }
    deleted = client.delete("/fhir/Patient/pa")
    assert deleted.status_code in (200, 204)
    history = client.get("/fhir/Patient/pa/_history").json()
    moments["pa4"] = history["entry"][0]["response"]["lastModified"]
    return moments


def test_instance_history_at_a_moment_is_the_version_current_then(client: TestClient, versions: dict[str, str]) -> None:
    assert _versions(client, "Patient/pa/_history", versions["pa1"]) == ['pa@W/"1"']
    assert _versions(client, "Patient/pa/_history", versions["pa2"]) == ['pa@W/"2"']
    # pb was written while pa's version 2 was current.
    assert _versions(client, "Patient/pa/_history", versions["pb1"]) == ['pa@W/"2"']
    assert _versions(client, "Patient/pa/_history", versions["pa3"]) == ['pa@W/"3"']
    # After the delete, the tombstone is what was current.
    assert _versions(client, "Patient/pa/_history", versions["pa4"]) == ['pa@W/"4"']


def test_type_and_system_history_at_a_moment(client: TestClient, versions: dict[str, str]) -> None:
    assert _versions(client, "Patient/_history", versions["pa1"]) == ['pa@W/"1"']
    assert _versions(client, "Patient/_history", versions["pb1"]) == ['pa@W/"2"', 'pb@W/"1"']
    assert _versions(client, "_history", versions["pa3"]) == ['pa@W/"3"', 'pb@W/"1"']
    assert _versions(client, "_history", versions["pa4"]) == ['pa@W/"4"', 'pb@W/"1"']


def test_a_period_holds_every_version_current_during_it(client: TestClient, versions: dict[str, str]) -> None:
    year = versions["pa1"][:4]
    if versions["pa4"][:4] == year:  # the whole fixture within one calendar year (all but a New Year's run)
        everything = ['pa@W/"1"', 'pa@W/"2"', 'pa@W/"3"', 'pa@W/"4"', 'pb@W/"1"']
        assert _versions(client, "Patient/_history", year) == everything
    before = str(int(year) - 1)
    assert _versions(client, "Patient/_history", before) == []


@pytest.mark.parametrize("value", ["yesterday", "2024-13", "2024-04-09T10"])
def test_a_malformed_at_is_400(client: TestClient, value: str) -> None:
    for path in ("Patient/x/_history", "Patient/_history", "_history"):
        response = client.get(f"/fhir/{path}", params={"_at": value})
        assert response.status_code == 400, response.text
        assert response.json()["issue"][0]["expression"] == ["_at"]


def _observation(resource_id: str, patient: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": resource_id,
        "status": "final",
        "code": {"text": "peso"},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": value, "unit": "kg"},
    }


def _everything(client: TestClient, **params: str) -> dict[str, Any]:
    response = client.get("/fhir/Patient/p/$everything", params=params)
    assert response.status_code == 200, response.text
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"].get("valueQuantity", {}).get("value")
        for e in response.json().get("entry", [])
    }


def test_everything_at_a_moment_is_the_record_as_it_was(client: TestClient) -> None:
    _put(client, {"resourceType": "Patient", "id": "p"})
    _put(client, {"resourceType": "Patient", "id": "q"})
    _put(client, _observation("moved", "p", 1))
    _put(client, _observation("deleted", "p", 2))
    moment = _put(client, _observation("changed", "p", 3))
    _put(client, _observation("changed", "p", 4))
    _put(client, _observation("moved", "q", 1))  # filed under the wrong patient, corrected since
    assert client.delete("/fhir/Observation/deleted").status_code in (200, 204)
    _put(client, _observation("new", "p", 5))
    then = {"Patient/p": None, "Observation/moved": 1, "Observation/deleted": 2, "Observation/changed": 3}
    assert _everything(client, _at=moment) == then
    assert _everything(client) == {"Patient/p": None, "Observation/changed": 4, "Observation/new": 5}
    # Paged as of the moment: the same entries, a page at a time.
    first = client.get("/fhir/Patient/p/$everything", params={"_at": moment, "_count": "2"}).json()
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert "_at=" in following
    second = client.get(following.split("testserver")[1]).json()
    paged = [e["resource"]["id"] for page in (first, second) for e in page["entry"]]
    assert sorted(paged) == sorted(key.split("/")[1] for key in then)
    for params in ({"_at": "yesterday"}, {"_at": moment, "_since": moment}):
        refused = client.get("/fhir/Patient/p/$everything", params=params)
        assert refused.status_code == 400 and refused.json()["resourceType"] == "OperationOutcome"


def test_search_as_of_a_moment_is_refused_naming_at(client: TestClient) -> None:
    moment = _put(client, {"resourceType": "Patient", "id": "p"})
    response = client.get("/fhir/Patient", params={"_at": moment})
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["_at"] and "_history?_at=" in issue["diagnostics"]
