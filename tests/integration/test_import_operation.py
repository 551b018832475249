"""``$import`` over HTTP (bulk NDJSON import from the server's import directory), both backends: a SMART-shaped
bulk export with conditional references imported, polled to completion and searchable; sources outside the
import directory and malformed Parameters refused; the caller's scopes and institution applied."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.services import Services
from tests.support.access import secured_server, staff_headers
from tests.support.bulk_sample import write_bulk_sample

FHIR = {"Content-Type": "application/fhir+json"}
NDJSON = {"name": "inputFormat", "valueCode": "application/fhir+ndjson"}


def _input(resource_type: str, url: str) -> dict[str, Any]:
    return {"name": "input", "part": [{"name": "type", "valueCode": resource_type}, {"name": "url", "valueUri": url}]}


def _parameters(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(items)}


def _of_files(*paths: Path) -> dict[str, Any]:
    return _parameters(NDJSON, *(_input(path.stem, path.as_uri()) for path in paths))


def _status_path(response: Any) -> str:
    assert response.status_code == 202, response.text
    location: str = response.headers["content-location"]
    assert "/fhir/$import-status/" in location
    return "/fhir/" + location.split("/fhir/", 1)[1]


def _wait(client: TestClient, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    for _ in range(2400):
        response = client.get(path, headers=headers)
        if response.status_code == 200:
            result: dict[str, Any] = response.json()
            return result
        assert response.status_code == 202, response.text
        assert response.headers["x-progress"]
        time.sleep(0.05)
    raise AssertionError("the import did not finish")


def _values(result: dict[str, Any]) -> dict[str, Any]:
    assert result["resourceType"] == "Parameters"
    return {
        p["name"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in result["parameter"]
        if "part" not in p
    }


def _parts(result: dict[str, Any], name: str) -> list[dict[str, Any]]:
    found = []
    for parameter in result["parameter"]:
        if parameter["name"] == name:
            found.append({p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in parameter["part"]})
    return found


def _outcome(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return " ".join(issue.get("diagnostics", "") for issue in body["issue"])


@pytest.fixture
def import_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "import"
    directory.mkdir()
    return directory


@pytest.fixture
def importing(settings: Settings, import_dir: Path) -> Iterator[TestClient]:
    services = Services.open(settings.model_copy(update={"import_dir": import_dir}))
    try:
        with TestClient(create_app(services=services)) as client:
            yield client
    finally:
        services.close()


def test_import_bulk_sample_then_search(importing: TestClient, import_dir: Path) -> None:
    client = importing
    sample = write_bulk_sample(import_dir / "smart", encounters=40, unknown_npi="0000000001")
    files = sorted(sample.directory.glob("*.ndjson"))  # Encounter first: the server orders by dependency
    kick_off = client.post("/fhir/$import", json=_of_files(*files), headers=FHIR)
    result = _wait(client, _status_path(kick_off))

    counts = {item["type"]: item["count"] for item in _parts(result, "output")}
    assert counts == {"Organization": 8, "Location": 8, "Practitioner": 24, "Patient": 8, "Encounter": 40}
    values = _values(result)
    assert values["stored"] == 88 and values["rejectedCount"] == 1
    (rejected,) = _parts(result, "rejected")
    assert rejected["url"] == (sample.directory / "Encounter.ndjson").as_uri()
    assert rejected["position"] == "line 41" and "0000000001" in rejected["reason"]

    # Searchable once reported, every conditional reference resolved to the resource it named.
    total = client.get("/fhir/Encounter", params={"_summary": "count"}).json()["total"]
    assert total == 40
    practitioner, encounters = next(iter(sample.encounters_of.items()))
    found = client.get("/fhir/Encounter", params={"practitioner": f"Practitioner/{practitioner}", "_count": 100})
    assert {e["resource"]["id"] for e in found.json()["entry"]} == set(encounters)
    encounter = client.get(f"/fhir/Encounter/{encounters[0]}").json()
    assert encounter["participant"][0]["individual"]["reference"] == f"Practitioner/{practitioner}"
    assert encounter["serviceProvider"]["reference"].startswith("Organization/")

    # The same files again: every chunk already stored is skipped (the resumable path of `ehr import`).
    again = _wait(client, _status_path(client.post("/fhir/$import", json=_of_files(*files), headers=FHIR)))
    assert _values(again)["stored"] == 0 and _values(again)["skippedChunks"] >= 5


def test_sources_outside_the_import_directory_are_refused(
    importing: TestClient, import_dir: Path, tmp_path: Path
) -> None:
    client = importing
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = outside / "Patient.ndjson"
    secret.write_text(json.dumps({"resourceType": "Patient", "id": "fuera"}) + "\n")
    (import_dir / "link.ndjson").symlink_to(secret)
    for url in (
        secret.as_uri(),
        f"{import_dir.as_uri()}/../elsewhere/Patient.ndjson",
        (import_dir / "link.ndjson").as_uri(),
        (outside / "missing.ndjson").as_uri(),  # outside, whether or not it exists
        "file:///etc/passwd",
    ):
        response = client.post("/fhir/$import", json=_parameters(NDJSON, _input("Patient", url)), headers=FHIR)
        assert "outside the server's import directory" in _outcome(response, 403), url
    for url in ("https://example.org/Patient.ndjson", "http://127.0.0.1:5432/x.ndjson", "Patient.ndjson"):
        response = client.post("/fhir/$import", json=_parameters(NDJSON, _input("Patient", url)), headers=FHIR)
        assert "never fetched" in _outcome(response, 400), url
    missing = (import_dir / "missing.ndjson").as_uri()
    response = client.post("/fhir/$import", json=_parameters(NDJSON, _input("Patient", missing)), headers=FHIR)
    assert "no such file" in _outcome(response, 400)
    assert client.get("/fhir/Patient/fuera").status_code == 404


def test_malformed_parameters_are_400(importing: TestClient, import_dir: Path) -> None:
    client = importing
    good = import_dir / "Patient.ndjson"
    good.write_text(json.dumps({"resourceType": "Patient", "id": "p1"}) + "\n")
    url = good.as_uri()
    bodies: list[Any] = [
        {"resourceType": "Patient", "id": "x"},
        _parameters(),
        _parameters(_input("Patient", url)),  # no inputFormat
        _parameters(NDJSON),  # no input
        _parameters({"name": "inputFormat", "valueCode": "application/fhir+json"}, _input("Patient", url)),
        _parameters(NDJSON, NDJSON, _input("Patient", url)),
        _parameters(NDJSON, {"name": "input", "part": [{"name": "type", "valueCode": "Patient"}]}),
        _parameters(NDJSON, {"name": "input", "valueUri": url}),
        _parameters(NDJSON, _input("NotAType", url)),
        _parameters(NDJSON, _input("Patient", url), {"name": "storageDetail", "valueCode": "https"}),
        _parameters(NDJSON, {"name": "input", "part": [{"name": "type", "valueCode": "Patient"}, {"name": "url"}]}),
        _parameters(NDJSON, {"parameter": "no name"}),
    ]
    for body in bodies:
        _outcome(client.post("/fhir/$import", json=body, headers=FHIR), 400)
    _outcome(client.post("/fhir/$import", content=b"{not json", headers=FHIR), 400)
    _outcome(client.post("/fhir/$import", content=b"", headers=FHIR), 400)
    _outcome(client.post("/fhir/$import?inputFormat=ndjson", json=_of_files(good), headers=FHIR), 400)
    assert client.get("/fhir/Patient/p1").status_code == 404  # nothing was imported
    # The well-formed request imports it; the status of an unknown job is 404, a cancelled one is gone.
    _wait(client, _status_path(client.post("/fhir/$import", json=_of_files(good), headers=FHIR)))
    assert client.get("/fhir/Patient/p1").status_code == 200
    _outcome(client.get("/fhir/$import-status/nosuchjob"), 404)
    status = _status_path(client.post("/fhir/$import", json=_of_files(good), headers=FHIR))
    assert client.delete(status).status_code == 202
    _outcome(client.get(status), 404)


@pytest.fixture
def secured_importing(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Iterator[tuple[TestClient, Settings, Path]]:
    backend = "sqlite" if settings.database_url is None else "postgres"
    with secured_server(request, backend, tmp_path / "ehr-data") as (client, _, configured):
        import_dir = configured.import_root
        import_dir.mkdir(parents=True)
        yield client, configured, import_dir


def test_import_writes_as_the_caller(secured_importing: tuple[TestClient, Settings, Path]) -> None:
    """The caller's scopes and institution: a write scope on every type is needed; each line is written as the
    caller's institution and held to the write policy; the job answers only whoever started it."""
    client, settings, import_dir = secured_importing
    imss, issste = staff_headers(settings, "IMSS"), staff_headers(settings, "ISSSTE")
    taken = client.put(
        "/fhir/Patient/issste-1", json={"resourceType": "Patient", "id": "issste-1"}, headers=FHIR | issste
    )
    assert taken.status_code == 201
    patients = import_dir / "Patient.ndjson"
    lines = [
        {"resourceType": "Patient", "id": "imss-1", "name": [{"family": "Ortiz"}]},
        {"resourceType": "Patient", "id": "issste-1"},
    ]
    patients.write_text("".join(json.dumps(line) + "\n" for line in lines))

    for scope in ("user/*.rs", "user/Patient.cruds", "patient/*.cruds"):
        _outcome(
            client.post(
                "/fhir/$import", json=_of_files(patients), headers=FHIR | staff_headers(settings, "IMSS", scope)
            ),
            403,
        )
    _outcome(client.post("/fhir/$import", json=_of_files(patients), headers=FHIR), 401)

    status = _status_path(client.post("/fhir/$import", json=_of_files(patients), headers=FHIR | imss))
    _outcome(client.get(status, headers=issste), 404)  # another institution's job does not exist for it
    _outcome(client.delete(status, headers=issste), 404)
    result = _wait(client, status, imss)
    assert {item["type"]: item["count"] for item in _parts(result, "output")} == {"Patient": 1}
    (rejected,) = _parts(result, "rejected")
    assert rejected["position"] == "line 2" and "ISSSTE" in rejected["reason"]

    assert client.get("/fhir/Patient/imss-1", headers=imss).status_code == 200
    _outcome(client.get("/fhir/Patient/imss-1", headers=issste), 403)  # recorded by IMSS: IMSS's record
    assert client.get("/fhir/Patient/issste-1", headers=issste).json().get("name") is None  # unchanged
