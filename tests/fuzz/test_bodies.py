"""Hypothesis against a real server: FHIR-shaped bodies with wrong types, huge strings, deep nesting,
invalid unicode, duplicate keys, numbers beyond float range, invalid references; invalid search
parameters and headers (tests/fuzz/strategies.py).

Zero 5xx; every 4xx is an OperationOutcome; every write the server acknowledged can be read back at the
version it announced; afterwards the views rebuilt from the log equal the live ones and the ledger verifies.
Deterministic (``derandomize``, no example database): CI sees the same examples on every run.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.strategies import Sent, searches, transactions, writes
from tests.fuzz.target import FuzzTarget, assert_fhir_answer, assert_rebuild_equals_live, fhir_body, ledger_verifies

pytestmark = [pytest.mark.e2e]

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

#: Locations (``Type/id/_history/v``) of the writes the server acknowledged, per backend.
ACKNOWLEDGED: dict[str, list[str]] = {}


def _send(target: FuzzTarget, sent: Sent) -> httpx.Response:
    with httpx.Client(base_url=target.base_url, timeout=60) as http:
        headers = {name: value.encode("latin-1") for name, value in sent.headers.items()}  # bytes as sent
        response = http.request(sent.method, target.base_url + sent.path, content=sent.body, headers=headers)
    assert_fhir_answer(response, sent.describe(), target)
    location = response.headers.get("location")
    if response.status_code in (200, 201) and location and "/_history/" in location:
        ACKNOWLEDGED.setdefault(target.backend, []).append(location.split("/fhir/", 1)[1])
    return response


@FUZZ
@given(sent=writes())
def test_hostile_writes(target: FuzzTarget, sent: Sent) -> None:
    _send(target, sent)


@FUZZ
@given(sent=transactions())
def test_hostile_bundles(target: FuzzTarget, sent: Sent) -> None:
    response = _send(target, sent)
    answer = fhir_body(response.headers.get("content-type", ""), response.content)
    if response.status_code == 200 and answer.get("type") == "batch-response":
        for entry in answer["entry"]:
            location = entry["response"].get("location")
            if location and entry["response"]["status"].startswith("20"):
                ACKNOWLEDGED.setdefault(target.backend, []).append(location)


@FUZZ
@given(sent=searches())
def test_hostile_searches_and_reads(target: FuzzTarget, sent: Sent) -> None:
    _send(target, sent)


def test_limits_answer_with_operation_outcomes(target: FuzzTarget) -> None:
    """Each limit once, at its edge, with the status fhir_api/limits.py documents."""
    with httpx.Client(base_url=target.base_url, timeout=60) as http:
        fhir = {"content-type": "application/fhir+json"}
        deep = b'{"resourceType":"Basic","extension":' + b"[" * 60 + b"]" * 60 + b"}"
        too_deep = http.post("/Basic", content=deep, headers=fhir)
        assert too_deep.status_code == 400, too_deep.text
        assert too_deep.json()["issue"][0]["code"] == "too-costly"
        big = http.post("/Basic", content=b'{"resourceType":"Basic","x":"' + b"x" * 300_000 + b'"}', headers=fhir)
        assert big.status_code == 413 and big.json()["resourceType"] == "OperationOutcome"
        entries = [{"request": {"method": "GET", "url": "Patient/x"}}] * 41
        many = http.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries}, headers=fhir)
        assert many.status_code == 413 and "40" in many.json()["issue"][0]["diagnostics"]
        page = http.get("/_history", params={"_count": "100000"})
        assert page.status_code == 200 and "_count=50" in page.json()["link"][0]["url"]


def test_store_consistent_after_fuzzing(target: FuzzTarget) -> None:
    acknowledged = ACKNOWLEDGED.get(target.backend, [])
    with httpx.Client(base_url=target.base_url, timeout=60) as http:
        for location in acknowledged:
            response = http.get(f"/{location}")
            assert response.status_code == 200, f"acknowledged {location} -> {response.status_code}"
            _, rid, _, version = location.split("/")
            assert response.json()["id"] == rid and response.json()["meta"]["versionId"] == version
    target.stop()
    rows = assert_rebuild_equals_live(target.settings)
    ledger_verifies(target.settings)
    print(f"\n{len(acknowledged)} acknowledged writes read back; rebuild == live over {rows} rows; ledger verified")
