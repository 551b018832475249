"""``ehr rebuild``: projections rebuilt beside the live ones and swapped in, on both backends.

The rebuilt views must equal the live ones row for row, readers must keep answering during the rebuild,
and writes arriving during it must all be in the swapped-in views.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_api.cli.rebuild import projectors_named
from fhir_api.services import Services
from projections import rebuild as rebuilding
from projections.db import PostgresViews, SQLiteViews, ViewDatabase
from projections.projector import Projector
from projections.rebuild import rebuild
from tests.conftest import CORPUS
from tests.support.schemas import drop_schema

BUNDLE = CORPUS / "synthea" / "smart-r4-2019" / "Alberto_Atencio_fc712d1f-5a2e-4407-9c55-a2a2bad623c2.json"


def _load(client: TestClient) -> None:
    response = client.post("/fhir", content=BUNDLE.read_bytes(), headers={"content-type": "application/fhir+json"})
    assert response.status_code == 200, response.text[:500]
    # Before the last Patient write: identity (which notes every resource's source) is current past it.
    triage = {"resourceType": "CodeSystem", "id": "triage", "url": "urn:ehr-core:cs:triage", "name": "Triage",
              "status": "active", "content": "complete", "concept": [{"code": "rojo", "display": "Rojo"}]}  # fmt: skip
    assert client.put("/fhir/CodeSystem/triage", json=triage).status_code == 201
    patient = client.post(
        "/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Zamora", "given": ["Inés"]}]}
    ).json()
    patient["active"] = True
    assert client.put(f"/fhir/Patient/{patient['id']}", json=patient).status_code == 200
    observation = client.post(
        "/fhir/Observation",
        json={
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "peso"},
            "subject": {"reference": f"Patient/{patient['id']}"},
        },
    ).json()
    assert client.delete(f"/fhir/Observation/{observation['id']}").status_code in (200, 204)


def _dumps(projectors: list[Projector]) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    return {p.name: p.dump() for p in projectors}


def _fresh(services: Services, tmp_path: Path, projector: Projector) -> dict[str, list[tuple[Any, ...]]]:
    """A rebuild from zero into a database of its own (the reference the live views must equal)."""
    database: ViewDatabase
    if services.settings.uses_postgres:
        import psycopg

        schema = f"{services.settings.postgres_schema}_ref"
        with psycopg.connect(services.settings.postgres_conninfo(), autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        database = PostgresViews(services.settings.postgres_conninfo(), schema, pool_size=2)
    else:
        database = SQLiteViews(tmp_path / f"reference-{projector.name}.sqlite")
    try:
        reference = projector.beside(database)
        reference.create_tables()
        reference.catch_up()
        return reference.dump()
    finally:
        database.close()
        if services.settings.uses_postgres:
            drop_schema(services.settings.postgres_conninfo(), schema)


def _indexes(services: Services) -> dict[str, str]:
    """PostgreSQL: every index of the views' schema, by name, its definition without the schema's name."""
    import psycopg

    schema = services.settings.postgres_schema
    with psycopg.connect(services.settings.postgres_conninfo(), autocommit=True) as connection:
        rows = connection.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (schema,))
        return {str(name): str(definition).replace(f"{schema}.", "") for name, definition in rows}


def test_rebuild_swaps_in_views_equal_to_the_live_ones(services: Services, client: TestClient) -> None:
    _load(client)
    projectors = projectors_named(services, [])
    every = ["resources", "identity", "audit", "terminology", "break_glass"]
    assert [p.name for p in projectors] == every
    assert services.compliance is not None
    services.compliance.audit_views_current()
    live = _dumps(projectors)
    indexes = _indexes(services) if services.settings.uses_postgres else {}
    assert len(live["resources"]["resources"]) > 50 and live["identity"]["mpi_records"]
    assert live["terminology"]["terminology_resources"]
    seen: list[tuple[str, int, int]] = []
    done = rebuild(services.settings, projectors, lambda name, position, head: seen.append((name, position, head)))
    assert [d.name for d in done] == every
    assert all(d.events > 0 for d in done[:2])
    # Progress was reported as batches went, ending at the log's head.
    resources = [s for s in seen if s[0] == "resources"]
    assert resources and resources[-1][1] == resources[-1][2] == done[0].events
    assert _dumps(projectors) == live
    if services.settings.uses_postgres:
        # The readers' indexes, dropped from the shadow before its load and built again after it (several at a
        # time), are all there, as they were.
        assert "search_fulltext_content" in indexes and _indexes(services) == indexes
    # The server reads from the swapped-in tables.
    found = client.get("/fhir/Patient", params={"name": "zamora"}).json()
    assert found["total"] == 1 and found["entry"][0]["resource"]["active"] is True
    looked_up = client.get("/fhir/CodeSystem/$lookup", params={"system": "urn:ehr-core:cs:triage", "code": "rojo"})
    assert looked_up.status_code == 200 and looked_up.json()["parameter"][0]["valueString"] == "Triage"


def test_a_rebuild_reads_and_decodes_each_event_of_a_log_once_for_all_its_projectors(
    services: Services, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resources, identity and terminology follow the clinical log; audit and break_glass the audit log. Their
    shadows advance in turn, a batch each, sharing each batch read and decoded: each event is decrypted once
    per log, not once per projector, and the views are still those the live projectors built."""
    _load(client)
    projectors = projectors_named(services, [])
    assert services.compliance is not None
    services.compliance.audit_views_current()
    for following in services.main_projectors.values():
        following.catch_up()  # the live ones too: their follower thread must find nothing left to decode
    live = _dumps(projectors)
    batch = 10
    for projector in projectors:
        projector.batch_size = batch  # many batches, so that the turns are many
    log = services.application
    head = log.recorder.max_notification_id() or 0
    assert head > 4 * batch
    resource_events = [
        n.id for n in log.recorder.select_notifications(start=1, limit=head) if "ResourceStream" in n.topic
    ]
    assert len(resource_events) > 4 * batch
    decoded: Counter[int] = Counter()
    selects = 0
    decode, select = log.mapper.to_domain_event, log.recorder.select_notifications

    def counted_decode(stored: Any) -> Any:
        # The resources' events: the master patient index also loads Person and Membership streams to decide.
        if "ResourceStream" in stored.topic:
            decoded[stored.id] += 1
        return decode(stored)

    def counted_select(*args: Any, **kwargs: Any) -> Any:
        nonlocal selects
        selects += kwargs.get("limit") == batch  # a projector's batch (the ledger's sealer reads too)
        return select(*args, **kwargs)

    monkeypatch.setattr(log.mapper, "to_domain_event", counted_decode)
    monkeypatch.setattr(log.recorder, "select_notifications", counted_select)
    done = rebuild(services.settings, projectors)
    assert [d.name for d in done][:2] == ["resources", "identity"] and done[0].events >= head
    # Each event is decoded once, not once per projector that follows the log; each batch is read once (and
    # each of the three projectors finds the end once more when the turns stop, and in its last catch-up).
    assert sorted(decoded) == resource_events and set(decoded.values()) == {1}
    assert selects <= -(-head // batch) + 1 + 2 * 3
    assert _dumps(projectors) == live


def test_a_rebuild_applies_the_log_in_batches_larger_than_the_live_ones(
    services: Services, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shadow's batch is ``REBUILD_BATCH_SIZE`` events, not the live projector's (which bounds a request's
    wait for its own write): fewer batches, so fewer transactions and statements for the same log."""
    _load(client)
    projectors = projectors_named(services, ["resources", "identity", "terminology"])
    for following in services.main_projectors.values():
        following.catch_up()
    live = _dumps(projectors)
    for projector in projectors:
        projector.batch_size = 5
    monkeypatch.setattr(rebuilding, "REBUILD_BATCH_SIZE", 30, raising=False)
    log = services.application
    head = log.recorder.max_notification_id() or 0
    assert head > 60
    limits: Counter[int] = Counter()
    select = log.recorder.select_notifications

    def counted_select(*args: Any, **kwargs: Any) -> Any:
        limits[kwargs.get("limit", 0)] += 1
        return select(*args, **kwargs)

    monkeypatch.setattr(log.recorder, "select_notifications", counted_select)
    rebuild(services.settings, projectors)
    assert limits[5] == 0
    assert 0 < limits[30] <= -(-head // 30) + 1 + 2 * 3
    assert _dumps(projectors) == live


def test_writes_during_a_rebuild_are_all_in_the_swapped_in_views(
    services: Services, client: TestClient, tmp_path: Path
) -> None:
    _load(client)
    stop = threading.Event()
    written: list[str] = []
    problems: list[str] = []

    def write() -> None:
        while not stop.is_set():
            response = client.post(
                "/fhir/Observation",
                json={"resourceType": "Observation", "status": "final", "code": {"text": f"during {len(written)}"}},
            )
            if response.status_code != 201:
                problems.append(f"{response.status_code} {response.text[:200]}")
                return
            written.append(response.json()["id"])
            # Readers keep answering from the live views while the shadow is built.
            if client.get(f"/fhir/Observation/{written[-1]}").status_code != 200:
                problems.append(f"read of {written[-1]} failed during the rebuild")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        rebuild(services.settings, [services.projector])
    finally:
        stop.set()
        writer.join()
    assert problems == []
    assert written, "no write ran during the rebuild"
    services.projector.catch_up()
    for resource_id in written:
        assert client.get(f"/fhir/Observation/{resource_id}").status_code == 200
    assert services.projector.dump() == _fresh(services, tmp_path, services.projector)


def test_a_rebuild_leaves_the_subscriptions_outbox_where_it_stands(services: Services, client: TestClient) -> None:
    """Matched events are notifications owed or sent: a rebuild of the views must not match the log again."""
    subscription = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "pesos",
        "criteria": "Observation?code:text=peso",
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json"},
    }
    assert client.post("/fhir/Subscription", json=subscription).status_code == 201
    _load(client)
    services.main_projectors["subscriptions"].catch_up()
    before = services.tracking_position("subscriptions")
    assert before > 0
    rebuild(services.settings, projectors_named(services, []))
    assert services.tracking_position("subscriptions") == before
