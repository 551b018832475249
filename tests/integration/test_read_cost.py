"""What a read by id costs on the request's own path, beside the database work: how many times the request
hops to a worker thread. Each hop is a hand-off to another thread and back to the event loop (a wake-up, a
future, the GIL taken twice), paid on every read; under load it is also a place where the request queues.
A read needs the store once (the access policy's decision and the record, in the same worker thread), and
nothing else on the path may need a thread (the open store is an attribute of the app). And how many
statements a read by id and a search's first page send the views: each is a round trip on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.threads import REQUEST_THREAD_PREFIX
from tests.support.access import secured_client, staff_headers


@pytest.fixture
def secured(settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    with secured_client(settings, tmp_path / "ehr-data") as opened:
        yield opened


class Hops:
    def __init__(self) -> None:
        self.functions: list[str] = []
        #: The pool (its threads' name prefix) of each hand-off to the request threads.
        self.pools: list[str] = []


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> Hops:
    """Every hand-off to a worker thread: to the request threads (fhir_api/threads.py, the app's executor) and
    through anyio (Starlette's and FastAPI's own hand-offs, ``anyio.to_thread.run_sync``), were any left."""
    counted = Hops()
    original = anyio.to_thread.run_sync

    async def run_sync(function: Any, *args: Any, **kwargs: Any) -> Any:
        counted.functions.append(repr(function)[:120])
        return await original(function, *args, **kwargs)

    submit = ThreadPoolExecutor.submit

    def submitted(self: ThreadPoolExecutor, function: Any, /, *args: Any, **kwargs: Any) -> Any:
        if self._thread_name_prefix.startswith(REQUEST_THREAD_PREFIX):
            counted.functions.append(repr(args[0] if args else function)[:120])
            counted.pools.append(self._thread_name_prefix)
        return submit(self, function, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)
    monkeypatch.setattr(ThreadPoolExecutor, "submit", submitted)
    return counted


def _patient(client: TestClient, headers: dict[str, str]) -> str:
    body = {"resourceType": "Patient", "name": [{"family": "Pérez", "given": ["Ana"]}], "birthDate": "1980-02-03"}
    response = client.post("/fhir/Patient", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_read_by_id_hops_to_a_worker_thread_once(secured: tuple[TestClient, Settings], hops: Hops) -> None:
    client, settings = secured
    headers = staff_headers(settings, "IMSS")
    patient = _patient(client, headers)
    organization = client.post(
        "/fhir/Organization", json={"resourceType": "Organization", "name": "Clínica"}, headers=headers
    )
    assert organization.status_code == 201, organization.text
    assert client.get(f"/fhir/Patient/{patient}", headers=headers).status_code == 200  # the token seen once
    for path in (f"/fhir/Patient/{patient}", f"/fhir/Organization/{organization.json()['id']}"):
        hops.functions.clear()
        response = client.get(path, headers=headers)
        assert response.status_code == 200, response.text
        assert len(hops.functions) == 1, (path, hops.functions)


def test_a_refused_read_is_still_refused_in_that_one_hop(secured: tuple[TestClient, Settings], hops: Hops) -> None:
    """The policy's decision moved into the read's worker thread still comes before anything is disclosed."""
    client, settings = secured
    patient = _patient(client, staff_headers(settings, "IMSS"))
    other = staff_headers(settings, "ISSSTE")
    assert client.get(f"/fhir/Patient/{patient}/_history", headers=other).status_code in (200, 403)  # token seen
    hops.functions.clear()
    refused = client.get(f"/fhir/Patient/{patient}", headers=other)
    assert refused.status_code == 403, refused.text
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert "Pérez" not in refused.text
    assert len(hops.functions) == 1, hops.functions
    glass = client.get(f"/fhir/Patient/{patient}", headers={**other, "X-EHR-Break-Glass": "urgencias"})
    assert glass.status_code == 200, glass.text
    assert glass.headers["x-ehr-break-glass"] == "granted"


def test_a_read_by_id_tries_few_routes(secured: tuple[TestClient, Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """The router tries only the routes the path can match (fhir_api/dispatch.py), not the ~90 before it."""
    client, settings = secured
    headers = staff_headers(settings, "IMSS")
    patient = _patient(client, headers)
    tried: list[str] = []
    matches = APIRoute.matches

    def counted(self: APIRoute, scope: Any) -> Any:
        tried.append(self.path)
        return matches(self, scope)

    monkeypatch.setattr(APIRoute, "matches", counted)
    response = client.get(f"/fhir/Patient/{patient}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == patient
    assert len(tried) <= 10, tried


def test_reads_take_the_few_reading_threads_and_writes_the_many_writing_ones(
    secured: tuple[TestClient, Settings], hops: Hops
) -> None:
    """A read's work holds the interpreter lock the event loop needs: it runs on a pool of a few threads. A
    write waits (its group commit, its projections) without the lock: it runs on the large pool, so writers
    queue together for one commit (fhir_api/threads.py)."""
    client, settings = secured
    headers = staff_headers(settings, "IMSS")
    patient = _patient(client, headers)
    assert client.get(f"/fhir/Patient/{patient}", headers=headers).status_code == 200
    hops.pools.clear()
    assert client.get(f"/fhir/Patient/{patient}", headers=headers).status_code == 200
    assert client.get("/fhir/Patient", params={"family": "Pérez"}, headers=headers).status_code == 200
    assert hops.pools and set(hops.pools) == {f"{REQUEST_THREAD_PREFIX}-read"}, hops.pools
    hops.pools.clear()
    _patient(client, headers)
    updated = client.put(
        f"/fhir/Patient/{patient}",
        json={"resourceType": "Patient", "id": patient, "name": [{"family": "Pérez", "given": ["Ana", "María"]}]},
        headers=headers,
    )
    assert updated.status_code == 200, updated.text
    assert hops.pools and set(hops.pools) == {f"{REQUEST_THREAD_PREFIX}-write"}, hops.pools


def test_a_read_by_id_is_called_directly_without_fastapis_dependency_solving(
    secured: tuple[TestClient, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FHIR endpoint that takes only its path's strings, the request and the store gets them from its route's
    own handler (fhir_api/direct_routes.py): FastAPI solves nothing for it, and its answers, refusals included,
    are what they were. A route with a query parameter to convert (``_history``'s) is still solved by FastAPI."""
    import fastapi.routing

    client, settings = secured
    headers = staff_headers(settings, "IMSS")
    patient = _patient(client, headers)
    solved: list[str] = []
    solve = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        solved.append(str(kwargs["request"].url.path))
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    read = client.get(f"/fhir/Patient/{patient}", headers=headers)
    assert read.status_code == 200 and read.json()["id"] == patient
    missing = client.get("/fhir/Patient/no-such-patient", headers=headers)
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    refused = client.get(f"/fhir/Patient/{patient}", headers=staff_headers(settings, "ISSSTE"))
    assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
    assert solved == []
    history = client.get(f"/fhir/Patient/{patient}/_history", headers=headers)
    assert history.status_code == 200 and history.json()["type"] == "history"
    assert solved == [f"/fhir/Patient/{patient}/_history"]


def _counted_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements the request threads send the views from now on (not the store's own threads')."""
    from projections import db

    statements: list[str] = []
    for tx_class in (db._SQLiteTx, db._PostgresTx):
        execute = tx_class.execute

        def counted(self: Any, sql: str, params: Any = (), *, _execute: Any = execute) -> Any:
            if threading.current_thread().name.startswith(REQUEST_THREAD_PREFIX):
                statements.append(sql)
            return _execute(self, sql, params)

        monkeypatch.setattr(tx_class, "execute", counted)
    return statements


def test_a_patient_read_asks_the_views_two_statements(
    secured: tuple[TestClient, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The access policy's (who holds the record) and the record's with its person's links, one statement:
    most Patients are linked to nothing, and the links asked apart were a third round trip on every read."""
    client, settings = secured
    headers = staff_headers(settings, "IMSS")
    patient = _patient(client, headers)
    assert client.get(f"/fhir/Patient/{patient}", headers=headers).status_code == 200  # the token seen once
    statements = _counted_statements(monkeypatch)
    response = client.get(f"/fhir/Patient/{patient}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == patient and "link" not in response.json()
    assert len(statements) == 2, statements
    assert any("mpi_links" in s and "FROM resources" in s for s in statements), statements


def test_a_searchs_first_page_asks_the_newest_key_and_the_consents_in_one_statement(
    secured: tuple[TestClient, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every first page asks where the type's keys end (what bounds the next pages) and whether the caller's
    institution holds a valid Consent (without one, the policy's SQL leaves the consent branch out): one
    statement, where they were two round trips."""
    client, settings = secured
    headers = staff_headers(settings, "IMSS")
    _patient(client, headers)
    assert client.get("/fhir/Patient?family=Pérez", headers=headers).status_code == 200  # the token seen once
    statements = _counted_statements(monkeypatch)
    response = client.get("/fhir/Patient?family=Pérez&_count=20", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 1
    consents = [s for s in statements if "consent_grants" in s]
    assert len(consents) == 1 and "MAX(sid)" in consents[0], statements
