"""Conditional read (R4 http.html#cread) and ``_summary``/``_elements`` on read and vread (both backends)."""

from __future__ import annotations

from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response

from ehr_core.settings import Settings
from tests.support.access import staff_headers

SUBSETTED = "SUBSETTED"
PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "active": True,
    "name": [{"family": "Gómez", "given": ["Ana"]}],
    "gender": "female",
    "birthDate": "1980-01-01",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Ana Gómez</div>'},
    "maritalStatus": {"text": "casada"},
}


def _not_modified(response: Response, version: str) -> None:
    assert response.status_code == 304, response.text
    assert response.content == b""
    assert response.headers["etag"] == f'W/"{version}"'
    assert "last-modified" in response.headers


def test_if_none_match_and_if_modified_since(client: TestClient) -> None:
    assert client.put("/fhir/Patient/p1", json=PATIENT).status_code == 201
    first = client.get("/fhir/Patient/p1")
    assert first.headers["etag"] == 'W/"1"'
    last_modified = first.headers["last-modified"]
    _not_modified(client.get("/fhir/Patient/p1", headers={"If-None-Match": 'W/"1"'}), "1")
    _not_modified(client.get("/fhir/Patient/p1", headers={"If-None-Match": '"1"'}), "1")  # weak comparison
    _not_modified(client.get("/fhir/Patient/p1", headers={"If-None-Match": '"7", W/"1"'}), "1")
    _not_modified(client.get("/fhir/Patient/p1", headers={"If-None-Match": "*"}), "1")
    _not_modified(client.get("/fhir/Patient/p1", headers={"If-Modified-Since": last_modified}), "1")
    _not_modified(client.get("/fhir/Patient/p1/_history/1", headers={"If-None-Match": 'W/"1"'}), "1")
    earlier = format_datetime(parsedate_to_datetime(last_modified).replace(year=2000), usegmt=True)
    assert client.get("/fhir/Patient/p1", headers={"If-Modified-Since": earlier}).status_code == 200
    assert client.get("/fhir/Patient/p1", headers={"If-Modified-Since": "not a date"}).status_code == 200
    # A new version: the old tag no longer matches, the full body comes back.
    assert client.put("/fhir/Patient/p1", json={**PATIENT, "active": False}).status_code == 200
    changed = client.get("/fhir/Patient/p1", headers={"If-None-Match": 'W/"1"'})
    assert changed.status_code == 200 and changed.json()["active"] is False and changed.headers["etag"] == 'W/"2"'
    # If-None-Match decides alone when both are sent (RFC 9110 §13.2.2).
    both = client.get("/fhir/Patient/p1", headers={"If-None-Match": 'W/"1"', "If-Modified-Since": last_modified})
    assert both.status_code == 200
    # A deleted resource is still 410, whatever the client holds.
    assert client.delete("/fhir/Patient/p1").status_code in (200, 204)
    gone = client.get("/fhir/Patient/p1", headers={"If-None-Match": "*"})
    assert gone.status_code == 410 and gone.json()["resourceType"] == "OperationOutcome"


def _tags(resource: dict[str, Any]) -> list[str]:
    return [tag["code"] for tag in resource.get("meta", {}).get("tag", [])]


def test_summary_and_elements_on_read_and_vread(client: TestClient) -> None:
    observation = (b'{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "peso"}, '
                   b'"valueQuantity": {"value": 70.50, "unit": "kg"}, "note": [{"text": "en ayunas"}]}')  # fmt: skip
    json_type = {"Content-Type": "application/fhir+json"}
    assert client.put("/fhir/Observation/o1", content=observation, headers=json_type).status_code == 201
    assert client.put("/fhir/Patient/p1", json=PATIENT).status_code == 201
    for url in ("/fhir/Patient/p1", "/fhir/Patient/p1/_history/1"):
        summary = client.get(url, params={"_summary": "true"})
        assert summary.status_code == 200, summary.text
        body = summary.json()
        assert SUBSETTED in _tags(body) and "maritalStatus" not in body and "text" not in body
        assert body["name"] == PATIENT["name"] and body["birthDate"] == "1980-01-01"
        text = client.get(url, params={"_summary": "text"}).json()
        assert "text" in text and "name" not in text and SUBSETTED in _tags(text)
        data = client.get(url, params={"_summary": "data"}).json()
        assert "text" not in data and data["maritalStatus"] == {"text": "casada"}
        elements = client.get(url, params={"_elements": "birthDate"}).json()
        assert elements["birthDate"] == "1980-01-01" and "name" not in elements and SUBSETTED in _tags(elements)
        whole = client.get(url, params={"_summary": "false"})
        assert SUBSETTED not in _tags(whole.json()) and whole.json()["maritalStatus"]
    elements = client.get("/fhir/Observation/o1", params={"_elements": "valueQuantity"})
    assert b'"value":70.50' in elements.content and "note" not in elements.json()
    assert elements.json()["status"] == "final"  # mandatory elements stay (R4 §3.1.1.5.9)
    bad = client.get("/fhir/Patient/p1", params={"_summary": "count"})
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["_summary"]
    assert client.get("/fhir/Patient/p1", params={"_summary": "maybe"}).status_code == 400


def test_conditional_read_does_not_bypass_the_access_policy(secured_client: tuple[TestClient, Settings]) -> None:
    client, settings = secured_client
    imss, issste = staff_headers(settings, "IMSS"), staff_headers(settings, "ISSSTE")
    assert client.put("/fhir/Patient/p1", json=PATIENT, headers=imss).status_code == 201
    # Another institution learns neither the version (304 would confirm it) nor a subset of the record.
    for headers in ({"If-None-Match": 'W/"1"'}, {"If-None-Match": "*"}, {}):
        hidden = client.get("/fhir/Patient/p1", headers=issste | headers)
        assert hidden.status_code == 403 and "etag" not in hidden.headers
    for params in ({"_summary": "true"}, {"_elements": "birthDate"}):
        assert client.get("/fhir/Patient/p1", params=params, headers=issste).status_code == 403
        assert client.get("/fhir/Patient/p1/_history/1", params=params, headers=issste).status_code == 403
    _not_modified(client.get("/fhir/Patient/p1", headers=imss | {"If-None-Match": 'W/"1"'}), "1")
    assert SUBSETTED in _tags(client.get("/fhir/Patient/p1", params={"_summary": "true"}, headers=imss).json())
