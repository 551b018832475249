"""A reference row holds its target's key (projections/search/targets.py) whatever the order resources arrive
in, on both backends, and chains (R4 §3.1.1.4.12) that read references by that key find what the references'
ids say: a reference written before its target, a target deleted then created again (a new key), targets
created in the same transaction, absolute references to this server and to another one, an update that
points a reference elsewhere."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.services import Services
from projections.search.targets import CLAIM, claim_params


def _put(client: TestClient, resource: dict[str, Any]) -> None:
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
    assert response.status_code in (200, 201), response.text


def _patient(resource_id: str, family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": resource_id, "name": [{"family": family}]}


def _visit(resource_id: str, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": resource_id,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": patient},
        "period": {"start": "2024-03-01"},
    }


def _chain(client: TestClient, family: str) -> list[str]:
    response = client.get("/fhir/Encounter", params={"patient.family": family, "date": "ge2024-01-01"})
    assert response.status_code == 200, response.text
    return sorted(e["resource"]["id"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match")


def _keys_agree(services: Services) -> int:
    """Every reference row's target key is its stored target's, or NULL when that is not stored; how many
    rows hold a key."""
    with services.views.read() as tx:
        rows = tx.execute(
            "SELECT r.target_type, r.target_id, r.target_sid, i.sid FROM search_reference r LEFT JOIN search_ids i "
            "ON i.resource_type = r.target_type AND i.resource_id = r.target_id"
        ).fetchall()
    assert [row for row in rows if row[2] != row[3]] == []
    return sum(row[2] is not None for row in rows)


def test_a_reference_written_before_its_target_gets_the_targets_key(client: TestClient, services: Services) -> None:
    _put(client, _visit("e1", "Patient/p1"))
    assert _chain(client, "zamora") == []
    _put(client, _patient("p1", "Zamora"))
    assert _chain(client, "zamora") == ["e1"]
    assert _keys_agree(services) == 2  # ``subject`` and ``patient``


def test_a_target_deleted_and_created_again_is_found_by_its_new_key(client: TestClient, services: Services) -> None:
    _put(client, _patient("p1", "Zamora"))
    _put(client, _visit("e1", "Patient/p1"))
    assert _chain(client, "zamora") == ["e1"]
    assert client.delete("/fhir/Patient/p1").status_code in (200, 204)
    assert _chain(client, "zamora") == []
    assert _keys_agree(services) == 0
    _put(client, _patient("p1", "Zamora"))
    assert _chain(client, "zamora") == ["e1"]
    assert _keys_agree(services) == 2


def test_targets_created_or_updated_in_the_same_transaction_as_their_references(
    client: TestClient, services: Services
) -> None:
    """A transaction is one projection batch: a target it creates is not in search_ids yet, nor is one it
    updates (its rows are replaced), when the references to them are written."""
    _put(client, _patient("p1", "Zamora"))
    entries = [
        _visit("e2", "Patient/p2"),
        _patient("p2", "Ochoa"),
        _visit("e3", "Patient/p3"),
        _visit("e4", "Patient/p1"),
        _patient("p1", "Zamorano"),
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in entries
        ],
    }
    response = client.post("/fhir", json=bundle)
    assert response.status_code == 200, response.text
    assert _chain(client, "ochoa") == ["e2"]
    assert _chain(client, "zamorano") == ["e4"]
    assert _keys_agree(services) == 4  # e3's patient is not stored


def test_absolute_references_and_a_reference_pointed_elsewhere(client: TestClient, services: Services) -> None:
    _put(client, _patient("p1", "Zamora"))
    _put(client, _patient("p2", "Ochoa"))
    _put(client, _visit("e1", "http://testserver/fhir/Patient/p1"))  # this server's own base
    _put(client, _visit("e2", "http://other.example.org/fhir/Patient/p1"))  # another server's Patient
    _put(client, _visit("e3", "Patient/p1"))
    assert _chain(client, "zamora") == ["e1", "e3"]
    _put(client, _visit("e3", "Patient/p2"))
    assert _chain(client, "zamora") == ["e1"]
    assert _chain(client, "ochoa") == ["e3"]
    _keys_agree(services)


#: Reference rows of one type: enough that reading all of them costs what a few index probes do not.
ROWS = 100_000


@pytest.mark.postgres
def test_keys_are_given_and_taken_by_index_without_statistics(postgres_settings: Settings) -> None:
    """On a store never analysed (autovacuum may be off), giving waiting references a created target's key and
    taking a deleted target's key away read their own index ranges, never every reference."""
    Services.open(postgres_settings, follow=False).close()  # the views' tables and indexes, as a store has them
    with psycopg.connect(postgres_settings.postgres_conninfo(), autocommit=True) as connection:
        connection.execute(f'SET search_path = "{postgres_settings.postgres_schema}"')
        # Half the rows wait for their Patient (no key), half have it.
        connection.execute(
            "INSERT INTO search_reference (resource_type, param, target_type, target_id, base, target_sid, sid) "
            "SELECT 'Observation', 'subject', 'Patient', 'p' || (g / 4), NULL, "
            "CASE WHEN g %% 2 = 0 THEN g / 4 END, g FROM generate_series(1, %s) g",
            (ROWS,),
        )
        plans = []
        for statement, params in (
            (CLAIM, claim_params([("Patient", "p7", 7), ("Patient", "p9", 9)])),
            ("UPDATE search_reference SET target_sid = NULL WHERE target_sid IN (?, ?)", [8, 10]),
        ):
            explained = connection.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + statement.replace("?", "%s"),
                params,  # type: ignore[arg-type]
            ).fetchone()
            assert explained is not None
            plans.append(explained[0][0]["Plan"])
        given = connection.execute("SELECT COUNT(*) FROM search_reference WHERE target_sid IN (7, 9)").fetchone()
        kept = connection.execute("SELECT COUNT(*) FROM search_reference WHERE target_sid IN (8, 10)").fetchone()
    assert given == (8,) and kept == (0,)  # EXPLAIN ANALYZE ran the statements
    for plan in plans:
        assert _rows_scanned(plan) <= 8, plan


def _rows_scanned(node: dict[str, Any]) -> int:
    own = int(node["Actual Rows"]) * int(node["Actual Loops"]) if "Relation Name" in node else 0
    if node.get("Node Type") == "Seq Scan":
        return ROWS
    return own + sum(_rows_scanned(child) for child in node.get("Plans", ()))
