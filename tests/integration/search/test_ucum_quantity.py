"""Quantity search in UCUM canonical units on every backend (R4 §3.1.1.5.8 search.html#quantity): a
search whose system is UCUM matches a value given in any unit UCUM converts to the asked one, with every
prefix applied to the converted values; units UCUM cannot convert between match only by their own code."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_api.app import create_app
from fhir_api.services import Services
from projections.search.index import SearchIndex
from tests.support.fhir import put

FHIR = {"content-type": "application/fhir+json"}
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _ids(client: TestClient, url: str) -> list[str]:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return sorted(e["resource"]["id"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match")


def _observation(resource_id: str, code: str, value: float, unit: str, system: str | None = UCUM) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value, "unit": unit, "code": unit}
    if system is not None:
        quantity["system"] = system
    return {
        "resourceType": "Observation",
        "id": resource_id,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "valueQuantity": quantity,
    }


@pytest.fixture
def weights(client: TestClient) -> TestClient:
    for resource in (
        _observation("kg70", "29463-7", 70, "kg"),
        _observation("g65000", "29463-7", 65000, "g"),
        _observation("lb176", "29463-7", 176, "[lb_av]"),  # 79.83 kg
        _observation("local70", "29463-7", 70, "kg", system="http://example.org/units"),
    ):
        put(client, resource)
    return client


def test_a_ucum_search_finds_the_same_quantity_in_another_unit(weights: TestClient) -> None:
    assert _ids(weights, f"/fhir/Observation?value-quantity=70000|{UCUM}|g") == ["kg70"]
    assert _ids(weights, f"/fhir/Observation?value-quantity=65|{UCUM}|kg") == ["g65000"]
    assert _ids(weights, f"/fhir/Observation?value-quantity=70000000|{UCUM}|mg") == ["kg70"]
    # Not UCUM: only its own system and code match, never by conversion.
    assert _ids(weights, "/fhir/Observation?value-quantity=70|http://example.org/units|kg") == ["local70"]
    assert _ids(weights, "/fhir/Observation?value-quantity=70000|http://example.org/units|g") == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("gt66000", ["kg70", "lb176"]),
        ("ge70000", ["kg70", "lb176"]),
        ("lt70000", ["g65000"]),
        ("le70000", ["g65000", "kg70"]),
        ("ne70000", ["g65000", "lb176"]),
        ("eq70000", ["kg70"]),
        ("ap75000", ["kg70", "lb176"]),  # within 10%: 67,500 to 82,500 g
        ("sa69000", ["kg70", "lb176"]),
        ("eb69000", ["g65000"]),
    ],
)
def test_prefixes_apply_to_canonical_values(weights: TestClient, query: str, expected: list[str]) -> None:
    assert _ids(weights, f"/fhir/Observation?value-quantity={query}|{UCUM}|g") == expected


def test_temperatures_convert_with_their_offset(client: TestClient) -> None:
    put(client, _observation("fever", "8310-5", 39, "Cel"))
    put(client, _observation("normal", "8310-5", 98.6, "[degF]"))
    assert _ids(client, f"/fhir/Observation?value-quantity=gt100|{UCUM}|[degF]") == ["fever"]
    assert _ids(client, f"/fhir/Observation?value-quantity=37|{UCUM}|Cel") == ["normal"]
    assert _ids(client, f"/fhir/Observation?value-quantity=ge310|{UCUM}|K") == ["fever", "normal"]


def test_concentrations_ucum_cannot_convert_match_only_by_their_own_unit(client: TestClient) -> None:
    put(client, _observation("glucose-mg", "2345-7", 99, "mg/dL"))
    put(client, _observation("glucose-mmol", "2345-7", 5.5, "mmol/L"))
    put(client, _observation("glucose-umol", "2345-7", 5500, "umol/L"))
    put(client, _observation("leukocytes", "6690-2", 5.5, "10*9/L"))
    # mg/dL ↔ g/L converts (mass per volume); mmol/L ↔ µmol/L converts (amount per volume).
    assert _ids(client, f"/fhir/Observation?value-quantity=0.99|{UCUM}|g/L") == ["glucose-mg"]
    assert _ids(client, f"/fhir/Observation?value-quantity=5.5|{UCUM}|mmol/L") == ["glucose-mmol", "glucose-umol"]
    # mg/dL ↔ mmol/L needs the molar mass; a count per litre is not a concentration.
    assert _ids(client, f"/fhir/Observation?value-quantity=gt0|{UCUM}|mmol/L") == ["glucose-mmol", "glucose-umol"]
    assert _ids(client, f"/fhir/Observation?value-quantity=gt0|{UCUM}|mg/dL") == ["glucose-mg"]
    assert _ids(client, f"/fhir/Observation?value-quantity=gt0|{UCUM}|10*9/L") == ["leukocytes"]


def test_a_unit_ucum_cannot_read_matches_by_its_own_code(client: TestClient) -> None:
    put(client, _observation("ph", "2744-1", 7.4, "[pH]"))
    put(client, _observation("odd", "2744-1", 7.4, "mEq/L"))
    assert _ids(client, f"/fhir/Observation?value-quantity=7.4|{UCUM}|[pH]") == ["ph"]
    assert _ids(client, f"/fhir/Observation?value-quantity=7.4|{UCUM}|mEq/L") == ["odd"]
    assert _ids(client, "/fhir/Observation?value-quantity=7.4||mEq/L") == ["odd"]


def test_composite_code_value_quantity_converts_its_quantity(weights: TestClient) -> None:
    put(weights, _observation("height", "8302-2", 170, "cm"))
    url = "/fhir/Observation?code-value-quantity"
    assert _ids(weights, f"{url}={LOINC}|29463-7$gt66|{UCUM}|kg") == ["kg70", "lb176"]
    assert _ids(weights, f"{url}={LOINC}|29463-7$70000|{UCUM}|g") == ["kg70"]
    assert _ids(weights, f"{url}={LOINC}|8302-2$1.7|{UCUM}|m") == ["height"]
    assert _ids(weights, f"{url}={LOINC}|29463-7$1.7|{UCUM}|m") == []


def test_a_range_converts_both_bounds(client: TestClient) -> None:
    years = {"low": {"value": 40, "system": UCUM, "code": "a"}, "high": {"value": 50, "system": UCUM, "code": "a"}}
    put(
        client,
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/x"}, "onsetRange": years},
    )
    # 40 to 50 years is 480 to 600 months (UCUM: mo = a/12).
    assert _ids(client, f"/fhir/Condition?onset-age=gt550|{UCUM}|mo") == ["c1"]
    assert _ids(client, f"/fhir/Condition?onset-age=gt610|{UCUM}|mo") == []
    assert _ids(client, f"/fhir/Condition?onset-age=lt490|{UCUM}|mo") == ["c1"]
    assert _ids(client, f"/fhir/Condition?onset-age=lt470|{UCUM}|mo") == []


def test_a_store_indexed_before_canonical_units_gets_the_columns(services: Services) -> None:
    """Tables created before the canonical columns get them when the index opens; their old rows match by
    their own unit until ``ehr rebuild`` (README)."""
    database = services.views
    with database.write() as tx:
        tx.execute("DROP INDEX search_quantity_lookup1")  # on the canonical columns
        for table in ("search_quantity", "search_composite"):
            for column in ("canonical", "canonical_low", "canonical_high"):
                tx.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    with database.write() as tx:
        SearchIndex().create(tx, database.dialect)
    with TestClient(create_app(services=services)) as client:
        put(client, _observation("kg70", "29463-7", 70, "kg"))
        assert _ids(client, f"/fhir/Observation?value-quantity=70000|{UCUM}|g") == ["kg70"]
