"""What one resource can do to the store: index rows within PostgreSQL's b-tree limit, a size limit (413),
and an append at that limit that completes.

- PostgreSQL refuses b-tree index rows over ~2,700 bytes. A Patient with a 3,000-character (incompressible)
  family name used to fail the master patient index's projection on every later batch: each later write
  waited out the projection deadline, and the server never started again (the event is in the log).
- A resource of several MB hung the event store's append in psycopg's pipeline mode while it held the
  event table's lock (every later write queued behind it).
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.services import Services

#: Only a hang reaches this (a projection deadline is 30 s; a write here takes well under a second).
HANG = 25.0


def _random_text(length: int) -> str:
    # Random letters: PostgreSQL compresses repetitive text below the index row limit, so only
    # incompressible text shows the limit.
    return "".join(random.choices(string.ascii_letters, k=length))


@contextmanager
def _serving(settings: Settings) -> Iterator[TestClient]:
    services = Services.open(settings)
    try:
        with TestClient(create_app(services=services)) as client:
            yield client
    finally:
        services.close()


def _patient(family: str) -> dict[str, object]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Ana"]}], "birthDate": "1990-01-01"}


@pytest.mark.postgres
def test_long_family_name_leaves_postgres_writable_and_restartable(postgres_settings: Settings) -> None:
    settings = postgres_settings.model_copy(update={"projection_wait_seconds": HANG})
    with _serving(settings) as client:
        started = time.monotonic()
        long_one = client.post("/fhir/Patient", json=_patient(_random_text(3000)))
        assert long_one.status_code in (201, 400, 413, 422), long_one.text
        assert time.monotonic() - started < HANG, "the write with a long name hung"
        for family in ("Pérez", "Gómez", "López"):
            started = time.monotonic()
            later = client.post("/fhir/Patient", json=_patient(family))
            assert later.status_code == 201, later.text
            assert time.monotonic() - started < HANG, "a later Patient write waited for a stuck projection"
        found = client.get("/fhir/Patient", params={"family": "gomez"}).json()
        assert found["total"] == 1
        if long_one.status_code == 201:
            # Searchable by a prefix of the long name, as any name.
            prefix = long_one.json()["name"][0]["family"][:20]
            assert client.get("/fhir/Patient", params={"family": prefix}).json()["total"] == 1
    # A new process on the same store starts (it replays nothing it cannot apply) and is writable.
    with _serving(settings) as restarted:
        assert restarted.post("/fhir/Patient", json=_patient("Ruiz")).status_code == 201
        assert restarted.get("/fhir/Patient", params={"family": "ruiz"}).json()["total"] == 1


@pytest.mark.postgres
def test_long_codes_references_and_texts_are_indexed_and_found(postgres_settings: Settings) -> None:
    code, system, text = _random_text(3000), "http://example.org/" + _random_text(3000), _random_text(4000)
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}], "text": text},
        "subject": {"reference": "Patient/" + _random_text(3000)},
    }
    with _serving(postgres_settings) as client:
        created = client.post("/fhir/Observation", json=observation)
        assert created.status_code == 201, created.text
        found = client.get("/fhir/Observation", params={"code": f"{system}|{code}"}).json()
        assert [e["resource"]["id"] for e in found.get("entry", [])] == [created.json()["id"]]
        assert client.post("/fhir/Patient", json=_patient("Pérez")).status_code == 201


def test_resource_over_size_limit_is_413(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_resource_bytes": 64 * 1024})
    big = {"resourceType": "Observation", "status": "final", "code": {"text": _random_text(70 * 1024)}}
    with _serving(limited) as client:
        before = client.get("/fhir/_history", params={"_count": "0"}).json()["total"]
        answer = client.post("/fhir/Observation", json=big)
        assert answer.status_code == 413, answer.text
        assert answer.json()["resourceType"] == "OperationOutcome"
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": big, "request": {"method": "POST", "url": "Observation"}}],
        }
        assert client.post("/fhir", json=bundle).status_code == 413
        batch = client.post("/fhir", json=bundle | {"type": "batch"})
        assert batch.status_code == 200, batch.text
        assert batch.json()["entry"][0]["response"]["status"].startswith("413")
        assert client.get("/fhir/_history", params={"_count": "0"}).json()["total"] == before, "something was stored"
        small = {"resourceType": "Observation", "status": "final", "code": {"text": "peso"}}
        assert client.post("/fhir/Observation", json=small).status_code == 201


@pytest.mark.postgres
def test_resource_at_size_limit_is_stored_on_postgres(postgres_settings: Settings) -> None:
    limit = postgres_settings.max_resource_bytes
    with _serving(postgres_settings) as client:
        # Just under the limit once stored (its meta and id added); several times, since the pipeline's
        # deadlock did not happen on every attempt.
        for _ in range(3):
            body = {"resourceType": "Observation", "status": "final", "code": {"text": _random_text(limit - 400)}}
            started = time.monotonic()
            created = client.post("/fhir/Observation", json=body, headers={"Prefer": "return=minimal"})
            assert created.status_code == 201, created.text[:500]
            assert time.monotonic() - started < HANG, "the append at the size limit hung"
        started = time.monotonic()
        later = client.post("/fhir/Patient", json=_patient("Pérez"))
        assert later.status_code == 201, later.text
        assert time.monotonic() - started < HANG, "a write after a large one hung"
