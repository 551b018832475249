"""``$export`` with ``_typeFilter`` on every backend (Bulk Data Access IG 2.0): each filter is a search of
the same engine applied before a resource is written; filters of one type OR; a type without a filter is
exported whole; a filter the server cannot apply is a 400 OperationOutcome, never an unfiltered export."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.support.fhir import put

FHIR = {"content-type": "application/fhir+json"}
ASYNC = {"Prefer": "respond-async"}
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _observation(resource_id: str, patient: str, code: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": resource_id,
        "status": "final",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def _export(client: TestClient, query: str) -> set[str]:
    kick = client.get(f"/fhir/{query}", headers=ASYNC)
    assert kick.status_code == 202, kick.text
    status_url = "/fhir" + kick.headers["content-location"].split("/fhir", 1)[1]
    deadline = time.monotonic() + 30
    while (status := client.get(status_url)).status_code == 202:
        assert time.monotonic() < deadline, "export did not finish"
        time.sleep(0.05)
    assert status.status_code == 200, status.text
    found: set[str] = set()
    for output in status.json()["output"]:
        file = client.get("/fhir" + output["url"].split("/fhir", 1)[1])
        assert file.status_code == 200
        lines = file.content.splitlines()
        assert output["count"] == len(lines)
        for line in lines:
            resource = orjson.loads(line)
            found.add(f"{resource['resourceType']}/{resource['id']}")
    return found


def _filter(*queries: str) -> str:
    """``_typeFilter`` values, each query percent-encoded as a whole."""
    return "&".join(f"_typeFilter={quote(query, safe='')}" for query in queries)


@pytest.fixture
def loaded(client: TestClient) -> TestClient:
    for patient, gender in (("ana", "female"), ("beto", "male")):
        put(client, {"resourceType": "Patient", "id": patient, "gender": gender})
    put(client, _observation("ana-weight", "ana", "29463-7", 70, "kg"))
    put(client, _observation("ana-height", "ana", "8302-2", 160, "cm"))
    put(client, _observation("beto-weight", "beto", "29463-7", 50000, "g"))
    put(client, {"resourceType": "Organization", "id": "org", "name": "IMSS"})
    return client


def test_a_type_filter_keeps_only_what_its_search_finds(loaded: TestClient) -> None:
    weights = _filter(f"Observation?code={LOINC}|29463-7&value-quantity=gt60|{UCUM}|kg")
    assert _export(loaded, f"$export?{weights}") == {
        "Patient/ana", "Patient/beto", "Observation/ana-weight", "Organization/org"}  # fmt: skip
    # With _type: only the listed types; the filtered one filtered.
    assert _export(loaded, f"$export?_type=Observation&{weights}") == {"Observation/ana-weight"}


def test_filters_of_one_type_are_ored_and_each_type_has_its_own(loaded: TestClient) -> None:
    either = _filter(f"Observation?code={LOINC}|8302-2", "Observation?subject=Patient/beto", "Patient?gender=female")
    assert _export(loaded, f"$export?_type=Observation,Patient&{either}") == {
        "Observation/ana-height", "Observation/beto-weight", "Patient/ana"}  # fmt: skip
    # Several queries in one value, comma-separated; a query's own comma (ORing values) encoded.
    one_value = quote(f"Observation?code={LOINC}|8302-2", safe="") + "," + quote("Patient?gender=male", safe="")
    assert _export(loaded, f"$export?_type=Observation,Patient&_typeFilter={one_value}") == {
        "Observation/ana-height", "Patient/beto"}  # fmt: skip
    ored = quote(f"{LOINC}|8302-2,{LOINC}|29463-7", safe="")  # a query is a URL query: its comma is %2C
    codes = _filter(f"Observation?code={ored}&subject=Patient/ana")
    assert _export(loaded, f"$export?_type=Observation&{codes}") == {"Observation/ana-height", "Observation/ana-weight"}


def test_patient_level_export_applies_the_filter_within_the_compartments(loaded: TestClient) -> None:
    heavy = _filter(f"Observation?value-quantity=ge50000|{UCUM}|g")
    assert _export(loaded, f"Patient/$export?_type=Observation&{heavy}") == {
        "Observation/ana-weight", "Observation/beto-weight"}  # fmt: skip


@pytest.mark.parametrize(
    "query",
    [
        "Observation",  # not Type?search
        "Nonsense?x=1",
        "Observation?nickname=x",
        "Observation?value-quantity=abc",
        "Observation?_sort=date",
        "Observation?_filter=code ss x",
        "Patient?gender=female",  # _type below leaves Patient out
    ],
)
def test_a_filter_the_server_cannot_apply_is_400(loaded: TestClient, query: str) -> None:
    response = loaded.get(f"/fhir/$export?_type=Observation&{_filter(query)}", headers=ASYNC)
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["_typeFilter"]
