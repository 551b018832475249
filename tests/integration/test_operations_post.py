"""Every operation answers GET (simple parameters) and POST (a ``Parameters`` body), R4 operations.html
"Executing an operation"; parameters of the URL and the body combine; an unknown one is 400 (both backends)."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from tests.support.access import staff_headers

FHIR = {"Content-Type": "application/fhir+json"}
ASYNC = {"Prefer": "respond-async"}
CURP = "urn:oid:2.16.840.1.113883.4.629"
MRN = "urn:ehr-core:sid:imss:mrn"


def parameters(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(items)}


def _load(client: TestClient, headers: dict[str, str] | None = None) -> None:
    patient = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": MRN, "value": "M-1"}],
               "name": [{"family": "Gómez"}], "birthDate": "1980-01-01"}  # fmt: skip
    assert client.put("/fhir/Patient/p1", json=patient, headers=headers).status_code in (200, 201)
    assert client.put("/fhir/Patient/p2", json={"resourceType": "Patient", "id": "p2"}, headers=headers).is_success
    for n, subject in enumerate(("p1", "p1", "p2")):
        observation = {"resourceType": "Observation", "id": f"o{n}", "status": "final", "code": {"text": "peso"},
                       "subject": {"reference": f"Patient/{subject}"}}  # fmt: skip
        assert client.put(f"/fhir/Observation/o{n}", json=observation, headers=headers).is_success


def _outcome(response: Any, status: int, expression: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    if expression is not None:
        assert body["issue"][0]["expression"] == [expression]


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])]


def test_everything_by_post_equals_get_and_pages(client: TestClient) -> None:
    _load(client)
    got = client.get("/fhir/Patient/p1/$everything", params={"_type": "Observation"})
    assert got.status_code == 200
    body = parameters({"name": "_type", "valueCode": "Observation"})
    posted = client.post("/fhir/Patient/p1/$everything", json=body, headers=FHIR)
    assert posted.status_code == 200, posted.text
    assert _ids(posted.json()) == _ids(got.json()) == ["Observation/o0", "Observation/o1"]
    # URL and body combine: _count from the URL, _type from the body; the next link pages on.
    first = client.post("/fhir/Patient/p1/$everything?_count=1", json=body, headers=FHIR).json()
    assert _ids(first) == ["Observation/o0"]
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert _ids(client.get(following.split("testserver")[1]).json()) == ["Observation/o1"]
    # No body at all: no parameters (fhir-kit-client sends none).
    assert sorted(_ids(client.post("/fhir/Patient/p1/$everything").json())) == [
        "Observation/o0", "Observation/o1", "Patient/p1"]  # fmt: skip


def test_unknown_or_repeated_operation_parameters_are_400(client: TestClient) -> None:
    _load(client)
    _outcome(client.get("/fhir/Patient/p1/$everything", params={"_typeFilter": "x"}), 400, "_typeFilter")
    # R4's general parameters are not the operation's to refuse: _format picks the answer's format (406 for
    # one the server cannot produce, tests/integration/test_xml.py).
    assert client.get("/fhir/Patient/p1/$everything", params={"_format": "json", "_pretty": "true"}).status_code == 200
    as_xml = client.get("/fhir/Patient/p1/$everything", params={"_format": "xml"})
    assert as_xml.status_code == 200 and as_xml.headers["content-type"].startswith("application/fhir+xml")
    bogus = parameters({"name": "bogus", "valueString": "x"})
    _outcome(client.post("/fhir/Patient/p1/$everything", json=bogus, headers=FHIR), 400, "bogus")
    twice = parameters({"name": "_count", "valueInteger": 2})
    _outcome(client.post("/fhir/Patient/p1/$everything?_count=1", json=twice, headers=FHIR), 400, "_count")
    _outcome(client.post("/fhir/Patient/p1/$everything", json={"resourceType": "Patient"}, headers=FHIR), 400)
    _outcome(client.post("/fhir/Patient/p1/$summary", json=bogus, headers=FHIR), 400, "bogus")
    _outcome(client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{MRN}|M-1", "x": "1"}), 400, "x")
    _outcome(client.get("/fhir/$ledger-head", params={"bogus": "1"}), 400, "bogus")
    _outcome(client.post("/fhir/$export", json=parameters({"name": "_typeFilter", "valueString": "x"}),
                         headers=FHIR | ASYNC), 400, "_typeFilter")  # fmt: skip
    match = parameters({"name": "resource", "resource": {"resourceType": "Patient"}}, {"name": "x", "valueString": "1"})
    _outcome(client.post("/fhir/Patient/$match", json=match, headers=FHIR), 400, "x")
    _outcome(client.post("/fhir/Patient/p1/$link", json=parameters({"name": "x", "valueString": "1"}),
                         headers=FHIR), 400, "x")  # fmt: skip
    _outcome(client.post("/fhir/Patient/p1/$everything", content=b"{", headers=FHIR), 400)
    _outcome(client.post("/fhir/Patient/p1/$everything", json=parameters(), headers={"Content-Type": "text/csv"}), 415)
    _outcome(client.post("/fhir/Patient/nobody/$everything", json=parameters(), headers=FHIR), 404)


def test_summary_pix_ledger_by_post(client: TestClient) -> None:
    _load(client)
    summary = client.post("/fhir/Patient/p1/$summary", json=parameters(), headers=FHIR)
    assert summary.status_code == 200 and summary.json()["type"] == "document"
    got = client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{MRN}|M-1"})
    posted = client.post(
        "/fhir/Patient/$ihe-pix",
        json=parameters({"name": "sourceIdentifier", "valueIdentifier": {"system": MRN, "value": "M-1"}}),
        headers=FHIR,
    )
    assert got.status_code == posted.status_code == 200, posted.text
    assert posted.json() == got.json()
    assert {"name": "targetId", "valueReference": {"reference": "Patient/p1"}} in posted.json()["parameter"]
    assert client.post("/fhir/$ledger-key").status_code == 200
    person = client.post("/fhir/Patient/p1/$person", json=parameters(), headers=FHIR)
    assert person.status_code == 200 and person.json()["resourceType"] == "Person"


def _wait(client: TestClient, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    for _ in range(600):
        response = client.get(url.split("testserver")[1], headers=headers)
        if response.status_code == 200:
            manifest: dict[str, Any] = response.json()
            return manifest
        assert response.status_code == 202, response.text
        time.sleep(0.05)
    raise AssertionError("export did not finish")


def _exported(client: TestClient, manifest: dict[str, Any], headers: dict[str, str] | None = None) -> list[str]:
    ids = []
    for output in manifest["output"]:
        text = client.get(output["url"].split("testserver")[1], headers=headers).text
        ids += [f"{output['type']}/{json.loads(line)['id']}" for line in text.splitlines()]
    return sorted(ids)


def test_export_kick_off_by_post(client: TestClient) -> None:
    _load(client)
    body = parameters({"name": "_type", "valueString": "Observation"}, {"name": "_outputFormat",
                      "valueString": "application/fhir+ndjson"})  # fmt: skip
    kick_off = client.post("/fhir/$export", json=body, headers=FHIR | ASYNC)
    assert kick_off.status_code == 202, kick_off.text
    assert _exported(client, _wait(client, kick_off.headers["content-location"])) == [
        "Observation/o0", "Observation/o1", "Observation/o2"]  # fmt: skip
    # Patient-level: the Bulk Data "patient" parameter (POST only) narrows it to the patients named.
    named = parameters({"name": "patient", "valueReference": {"reference": "Patient/p2"}})
    kick_off = client.post("/fhir/Patient/$export", json=named, headers=FHIR | ASYNC)
    assert kick_off.status_code == 202, kick_off.text
    assert _exported(client, _wait(client, kick_off.headers["content-location"])) == ["Observation/o2", "Patient/p2"]
    _outcome(client.get("/fhir/Patient/$export", params={"patient": "Patient/p2"}, headers=ASYNC), 400, "patient")


def test_posted_operations_keep_the_access_policy(secured_client: tuple[TestClient, Settings]) -> None:
    client, settings = secured_client
    imss, issste = staff_headers(settings, "IMSS"), staff_headers(settings, "ISSSTE")
    _load(client, imss)
    # What a direct read hides, POST does not show: the unified record, the summary, the identifiers.
    assert client.get("/fhir/Patient/p1", headers=issste).status_code == 403
    for operation in ("$everything", "$summary"):
        _outcome(client.post(f"/fhir/Patient/p1/{operation}", json=parameters(), headers=FHIR | issste), 403)
    pix = parameters({"name": "sourceIdentifier", "valueIdentifier": {"system": MRN, "value": "M-1"}})
    hidden = client.post("/fhir/Patient/$ihe-pix", json=pix, headers=FHIR | issste)
    assert hidden.status_code == 404 and "Gómez" not in hidden.text
    kick_off = client.post("/fhir/$export", json=parameters(), headers=FHIR | ASYNC | issste)
    assert kick_off.status_code == 202
    assert _exported(client, _wait(client, kick_off.headers["content-location"], issste), issste) == []
    # The recorder's own institution gets them.
    assert client.post("/fhir/Patient/p1/$everything", json=parameters(), headers=FHIR | imss).status_code == 200
    assert client.post("/fhir/Patient/$ihe-pix", json=pix, headers=FHIR | imss).status_code == 200
