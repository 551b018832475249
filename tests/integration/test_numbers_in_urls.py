"""Numbers in URLs, ETags and Bundle entries: only ASCII digits are numbers, and no size is a 500.

``"²".isdigit()`` holds but ``int("²")`` fails; ``int`` also refuses more than 4,300 digits. Each such value
must be answered 400 (not a number) or as a number too large to name anything stored, never 500.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from ehr_core.numbers import INT64_MAX, parse_int
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.services import Services

NOT_NUMBERS = ["²", "٣", "1²", "-1", "+1", " 1", "1.0", ""]
HUGE = "9" * 5000  # beyond int()'s 4,300-digit limit


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("007", 7), ("0" * 5000 + "12", 12), (HUGE, INT64_MAX)],
    ids=["zero", "leading-zeros", "5000-zeros", "5000-nines"],
)
def test_ascii_digits_are_numbers_clamped_to_64_bits(text: str, expected: int) -> None:
    assert parse_int(text) == expected


@pytest.mark.parametrize("text", NOT_NUMBERS)
def test_anything_else_is_not_a_number(text: str) -> None:
    assert parse_int(text) is None


def test_a_sign_only_when_asked() -> None:
    assert parse_int("-12", signed=True) == -12
    assert parse_int("-" + HUGE, signed=True) == -INT64_MAX
    assert parse_int("-²", signed=True) is None
    assert parse_int("-", signed=True) is None


@pytest.fixture
def client(sqlite_settings: Settings) -> Iterator[TestClient]:
    services = Services.open(sqlite_settings)
    try:
        with TestClient(create_app(services=services), raise_server_exceptions=False) as test_client:
            yield test_client
    finally:
        services.close()


@pytest.fixture
def patient_id(client: TestClient) -> str:
    response = client.post("/fhir/Patient", json={"resourceType": "Patient", "birthDate": "1980-01-01"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _outcome(response: Response, *statuses: int) -> None:
    assert response.status_code in statuses, (response.request.url, response.status_code, response.text[:300])
    assert response.json()["resourceType"] == "OperationOutcome"


URLS = [
    "/fhir/Patient/{pid}/$everything?_count={n}",
    "/fhir/Patient/{pid}/$everything?_page_after={n}",
    "/fhir/$ledger-proof?resource=Patient/{pid}&version={n}",
    "/fhir/Patient/{pid}/_history/{n}",
    "/fhir/Patient/_history?_page_before={n}",
    "/fhir/AuditEvent?_page_before={n}",
    "/fhir/AuditEvent?_count={n}",
    "/fhir/Patient?_count={n}",
]


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("value", ["²", "٣"])
def test_a_digit_that_is_not_ascii_is_a_400(client: TestClient, patient_id: str, url: str, value: str) -> None:
    _outcome(client.get(url.format(pid=patient_id, n=value)), 400)


@pytest.mark.parametrize("url", URLS)
def test_a_number_beyond_64_bits_is_no_500(client: TestClient, patient_id: str, url: str) -> None:
    response = client.get(url.format(pid=patient_id, n=HUGE))
    if response.status_code != 200:  # a version or proof that cannot exist
        _outcome(response, 404)


@pytest.mark.parametrize("etag", ['W/"²"', 'W/"٣"', f'W/"{HUGE}"'], ids=["superscript", "arabic-indic", "5000-digits"])
def test_a_transaction_if_match_that_is_no_version_is_no_500(client: TestClient, patient_id: str, etag: str) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": patient_id, "active": True},
                "request": {"method": "PUT", "url": f"Patient/{patient_id}", "ifMatch": etag},
            }
        ],
    }
    response = client.post("/fhir", json=bundle)
    # Not a number: 400; a number no version reaches: the precondition fails (412 per R4 §3.1.0.8.4; 409 too).
    _outcome(response, 400, 409, 412)
    if etag != f'W/"{HUGE}"':
        assert response.status_code == 400
