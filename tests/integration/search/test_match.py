"""``projections.search.match``: the interface conditional interactions and conditional references use."""

from __future__ import annotations

from typing import Any

import pytest

from ehr_core.context import WriteContext
from ehr_core.errors import InvalidResource
from fhir_api.services import Services
from projections.search import match

NPI = "http://hl7.org/fhir/sid/us-npi"
SYNTHEA = "https://github.com/synthetichealth/synthea"


def _put(services: Services, resource: dict[str, Any]) -> None:
    written = services.application.update(resource["resourceType"], resource["id"], resource, WriteContext())
    services.wait_until_visible(written)


def _match(services: Services, resource_type: str, params: list[tuple[str, str]], limit: int = 2) -> list[str]:
    with services.views.read() as tx:
        return match(tx, resource_type, params, limit)


@pytest.fixture
def loaded(services: Services) -> Services:
    _put(
        services,
        {
            "resourceType": "Practitioner",
            "id": "p1",
            "identifier": [{"system": NPI, "value": "9999"}],
            "name": [{"family": "Gómez", "given": ["Ana"]}],
        },
    )
    _put(
        services,
        {
            "resourceType": "Practitioner",
            "id": "p2",
            "identifier": [{"system": NPI, "value": "8888"}],
            "name": [{"family": "Gomez", "given": ["Luis"]}],
        },
    )
    _put(services, {"resourceType": "Organization", "id": "o1", "identifier": [{"system": SYNTHEA, "value": "abc"}]})
    _put(
        services,
        {
            "resourceType": "Location",
            "id": "l1",
            "identifier": [{"system": SYNTHEA, "value": "abc"}],
            "managingOrganization": {"reference": "Organization/o1"},
        },
    )
    return services


def test_identifier_tokens(loaded: Services) -> None:
    assert _match(loaded, "Practitioner", [("identifier", f"{NPI}|9999")]) == ["p1"]
    assert _match(loaded, "Practitioner", [("identifier", "9999")]) == ["p1"]
    assert _match(loaded, "Practitioner", [("identifier", f"{NPI}|")]) == ["p1", "p2"]
    assert _match(loaded, "Practitioner", [("identifier", f"{NPI}|7777")]) == []
    assert _match(loaded, "Practitioner", [("identifier", "|9999")]) == []
    assert _match(loaded, "Organization", [("identifier", f"{SYNTHEA}|abc")]) == ["o1"]
    assert _match(loaded, "Location", [("identifier", f"{SYNTHEA}|abc")]) == ["l1"]


def test_strings_fold_case_and_accents_and_limit(loaded: Services) -> None:
    assert _match(loaded, "Practitioner", [("name", "gómez")]) == ["p1", "p2"]
    assert _match(loaded, "Practitioner", [("family", "GOMEZ"), ("given", "an")]) == ["p1"]
    assert _match(loaded, "Practitioner", [("name", "gom")], limit=1) == ["p1"]


def test_references_and_id(loaded: Services) -> None:
    assert _match(loaded, "Location", [("organization", "Organization/o1")]) == ["l1"]
    assert _match(loaded, "Location", [("organization", "o1")]) == ["l1"]
    assert _match(loaded, "Practitioner", [("_id", "p2")]) == ["p2"]
    assert _match(loaded, "Practitioner", [("_id", "p1,p2"), ("identifier", "8888")]) == ["p2"]


def test_updates_and_deletes_leave_no_stale_values(loaded: Services) -> None:
    _put(
        loaded,
        {"resourceType": "Practitioner", "id": "p1", "identifier": [{"system": NPI, "value": "1111"}]},
    )
    assert _match(loaded, "Practitioner", [("identifier", f"{NPI}|9999")]) == []
    assert _match(loaded, "Practitioner", [("identifier", f"{NPI}|1111")]) == ["p1"]
    assert _match(loaded, "Practitioner", [("name", "ana")]) == []
    loaded.wait_until_visible(loaded.application.delete("Practitioner", "p1", WriteContext()))
    assert _match(loaded, "Practitioner", [("identifier", f"{NPI}|1111")]) == []


@pytest.mark.parametrize(
    "params",
    [
        [("nonsense", "1")],
        [("identifier:nonsense", "1")],
        [("birthdate", "yesterday")],
        [("_lastUpdated", "xx2020")],
        [],
    ],
)
def test_unknown_or_malformed_parameters_are_invalid(loaded: Services, params: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidResource):
        _match(loaded, "Practitioner" if params[:1] != [("birthdate", "yesterday")] else "Patient", params)
