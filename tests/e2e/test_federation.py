"""Three institutions' stores on three PostgreSQL clusters, one set of national views.

Three clusters are created by the test on loopback ports (``initdb``/``pg_ctl``, tests/support/pg_cluster.py),
one per institution; the national views live in the shared server. One API server per institution writes to
its own store; one ``ehr project`` worker follows all three. While every institution writes concurrently,
ISSSTE's cluster is stopped: the other two keep writing (every write acknowledged, readable at once), ISSSTE's
server answers 503 (nothing half-applied), then the cluster comes back and the worker resumes. Afterwards
the national views hold every acknowledged write exactly once, a Patient's unified record spans the stores,
and rebuilding every national projection from the three logs gives the same views.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ehr_core.demo.people import make_curp
from ehr_core.identity.identifiers import CURP_SYSTEM
from ehr_core.settings import Settings
from fhir_api.services import Services
from projections.db import PostgresViews, Tx
from projections.projector import Projector
from tests.support.pg_cluster import PgCluster
from tests.support.schemas import drop_schema
from tests.support.server import REPO, running_server, running_worker
from tests.support.waiting import HANG, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

STORES = ("IMSS", "ISSSTE", "IMSS-Bienestar")
DOWN = "ISSSTE"
#: Columns holding national positions (``target_sid``: a reference's target key): compared as the (store,
#: notification id) they stand for, since a rebuild may interleave the logs in another order.
POSITION_COLUMNS = {"notification_id", "sid", "position", "target_sid"}


def _stores_env(clusters: dict[str, PgCluster]) -> str:
    return ",".join(f"{name}={cluster.url('ehr')}" for name, cluster in clusters.items())


def _env(national: Settings, stores: str, data: Path, own: str | None = None) -> dict[str, str]:
    assert national.database_url is not None
    env = {
        "EHR_DATABASE_URL": national.database_url,
        "EHR_POSTGRES_SCHEMA": national.postgres_schema,
        "EHR_POSTGRES_POOL_SIZE": "2",
        "EHR_DATA_DIR": str(data),  # one development master key for every process
        "EHR_STORES": stores,
        "EHR_PROJECTION": "worker",
        "EHR_PROJECTION_WAIT_SECONDS": "60",
        "EHR_REQUEST_TIMEOUT_SECONDS": "20",
    }
    return env | ({"EHR_STORE": own} if own else {})


def _ehr(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    """Run ``ehr COMMAND --quiet`` against the federation; the caller checks what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "fhir_api.cli", command, "--quiet"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _observation(store: str, tag: str, patient: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": tag},
        "identifier": [{"system": f"urn:test:federation:{store}", "value": tag}],
        "valueQuantity": {"value": 70.5, "unit": "kg"},
    }
    if patient:
        resource["subject"] = {"reference": f"Patient/{patient}"}
    return resource


def _patient(curp: str, family: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": CURP_SYSTEM, "value": curp}],
        "name": [{"family": family, "given": ["Rosa"]}],
        "gender": "female",
        "birthDate": "1984-03-09",
    }


class Writer(threading.Thread):
    """Writes Observations to one institution's server until stopped; keeps what was acknowledged."""

    def __init__(self, store: str, base: str) -> None:
        super().__init__(name=f"writer-{store}", daemon=True)
        self.store, self.base = store, base
        self.acknowledged: dict[str, str] = {}  # tag -> id
        #: Refused (503) or unanswered: not stored, or stored with the answer lost (the commit reached the
        #: store as it went down) — never half-applied: at most the whole write, once.
        self.unknown: set[str] = set()
        self.statuses: Counter[int] = Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=60) as http:
            n = 0
            while not self.stopping.is_set():
                tag = f"{self.store}-{n}"
                n += 1
                try:
                    answer = http.post(f"{self.base}/Observation", json=_observation(self.store, tag))
                except httpx.TransportError:
                    self.statuses[0] += 1
                    self.unknown.add(tag)
                    continue
                self.statuses[answer.status_code] += 1
                if answer.status_code == 201:
                    self.acknowledged[tag] = answer.json()["id"]
                else:
                    self.unknown.add(tag)
                    assert answer.status_code == 503, answer.text  # the store is down: retry later
                    assert answer.json()["resourceType"] == "OperationOutcome"
                    time.sleep(0.05)

    def count(self) -> int:
        return len(self.acknowledged)


def _wait_for(what: str, check: Any, timeout: float = HANG) -> None:
    wait_until(check, what, timeout=timeout, interval=0.2)


def _caught_up(national: Settings, clusters: dict[str, PgCluster]) -> bool:
    with psycopg.connect(national.postgres_conninfo()) as connection:
        rows = dict(
            connection.execute(
                f'SELECT name, position FROM "{national.postgres_schema}".projection_tracking'
            ).fetchall()
        )
    for name, cluster in clusters.items():
        with psycopg.connect(cluster.conninfo("ehr")) as connection:
            head = connection.execute(
                f'SELECT coalesce(max(notification_id), 0) FROM "{national.postgres_schema}".ehr_events'
            ).fetchone()
        assert head is not None
        if any(
            rows.get(f"{projection}@{name}", -1) < head[0] for projection in ("resources", "identity", "terminology")
        ):
            return False
    return True


def _mapped_rows(tx: Tx, table: str, origin: dict[int, tuple[str, int]]) -> Counter[tuple[Any, ...]]:
    columns = [
        str(r[0])
        for r in tx.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ? ORDER BY ordinal_position",
            (table,),
        ).fetchall()
    ]
    rows: Counter[tuple[Any, ...]] = Counter()
    for row in tx.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall():
        rows[
            tuple(
                origin[value]
                if column in POSITION_COLUMNS and value is not None and table != "federation_log"
                else value
                for column, value in zip(columns, row, strict=True)
            )
        ] += 1
    return rows


def _origins(tx: Tx) -> dict[int, tuple[str, int]]:
    rows = tx.execute("SELECT position, store, notification_id FROM federation_log").fetchall()
    return {int(r[0]): (str(r[1]), int(r[2])) for r in rows}


def _national_views_equal_a_rebuild(national: Settings, stores: str, data: Path) -> int:
    """Every national projection rebuilt from the three logs into a schema beside; compared table by table."""
    settings = national.model_copy(update={"stores": stores, "data_dir": data, "projection": "worker"})
    services = Services.open(settings, follow=False)
    shadow_schema = f"{national.postgres_schema}__beside"
    with psycopg.connect(national.postgres_conninfo(), autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{shadow_schema}"')
    shadow_db = PostgresViews(national.postgres_conninfo(), shadow_schema, pool_size=2)
    try:
        live: list[Projector] = []
        for store in STORES:
            live.extend(services.store_projectors(store))
        rebuilt = [projector.beside(shadow_db) for projector in live]
        for projector in rebuilt:
            projector.create_tables()
        for projector in rebuilt:
            projector.catch_up()
        tables = sorted({table for projector in live for table in projector.tables} - {"federation_log"})
        compared = 0
        with services.views.read() as live_tx, shadow_db.read() as shadow_tx:
            live_origin, shadow_origin = _origins(live_tx), _origins(shadow_tx)
            assert sorted(live_origin.values()) == sorted(shadow_origin.values())
            for table in tables:
                expected = _mapped_rows(live_tx, table, live_origin)
                assert _mapped_rows(shadow_tx, table, shadow_origin) == expected, f"{table} differs from a rebuild"
                compared += sum(expected.values())
        return compared
    finally:
        shadow_db.close()
        services.close()
        drop_schema(national.postgres_conninfo(), shadow_schema)


def test_three_institution_stores_federated_into_national_views(postgres_settings: Settings, tmp_path: Path) -> None:
    data = tmp_path / "ehr-data"
    with ExitStack() as stack:
        clusters = {name: stack.enter_context(PgCluster.started(name.lower())) for name in STORES}
        stores = _stores_env(clusters)
        bases: dict[str, str] = {}
        for name in STORES:  # one after the other: the first creates the development master key
            bases[name], _ = stack.enter_context(running_server(data, _env(postgres_settings, stores, data, name)))
        worker_log = tmp_path / "worker.log"
        stack.enter_context(running_worker(_env(postgres_settings, stores, data), worker_log, report_seconds=2))
        http = stack.enter_context(httpx.Client(timeout=60))

        # One person, a record in each institution (same CURP and birth date: a certain match).
        curp = make_curp(["Rosa"], "Gómez", "Luna", "M", date(1984, 3, 9), "DF", random.Random(11))
        patients = {}
        for name in STORES:
            created = http.post(f"{bases[name]}/Patient", json=_patient(curp, "Gómez"))
            assert created.status_code == 201, created.text
            patients[name] = created.json()["id"]
            observed = http.post(f"{bases[name]}/Observation", json=_observation(name, f"{name}-own", patients[name]))
            assert observed.status_code == 201, observed.text

        writers = {name: Writer(name, bases[name]) for name in STORES}
        for writer in writers.values():
            writer.start()
        _wait_for("writes in every store", lambda: all(w.count() >= 20 for w in writers.values()))

        clusters[DOWN].stop(mode="fast")  # ISSSTE's store goes down while everyone writes
        during = {name: writers[name].count() for name in STORES}
        # The request in flight when it stopped answers within ~10 connection timeouts; later ones at once.
        _wait_for("ISSSTE's server to refuse writes", lambda: writers[DOWN].statuses[503] > 5)
        up = [name for name in STORES if name != DOWN]
        # The others' writes go on (waited for, not assumed to happen within a few seconds of a loaded machine),
        # and are readable at once from any server.
        _wait_for(
            "writes in the other stores during the outage", lambda: all(writers[n].count() > during[n] + 5 for n in up)
        )
        for name in up:
            assert writers[name].count() > during[name] + 5, (name, writers[name].statuses)
            tag, resource_id = next(reversed(writers[name].acknowledged.items()))
            other = bases[up[1] if name == up[0] else up[0]]
            assert http.get(f"{other}/Observation/{resource_id}").status_code == 200
            found = http.get(f"{bases[name]}/Observation", params={"identifier": f"urn:test:federation:{name}|{tag}"})
            assert found.json()["total"] == 1, found.text
        # Reads of what ISSSTE wrote before its outage still come from the national views.
        assert http.get(f"{bases['IMSS']}/Patient/{patients[DOWN]}").status_code == 200

        clusters[DOWN].start()
        after = writers[DOWN].count()
        _wait_for("ISSSTE's writes after its store returned", lambda: writers[DOWN].count() > after + 10)
        for writer in writers.values():
            writer.stopping.set()
        for writer in writers.values():
            writer.join(timeout=HANG)
        assert not any(writer.is_alive() for writer in writers.values()), f"a writer still runs after {HANG:.0f} s"
        _wait_for("the worker to catch up with every store", lambda: _caught_up(postgres_settings, clusters))

        # A change to a resource recorded by another institution goes to that institution's store.
        tag, resource_id = next(iter(writers["ISSSTE"].acknowledged.items()))
        changed = _observation("ISSSTE", tag) | {"id": resource_id, "status": "amended"}
        updated = http.put(f"{bases['IMSS']}/Observation/{resource_id}", json=changed)
        assert updated.status_code == 200, updated.text
        assert updated.json()["meta"]["versionId"] == "2"
        assert http.get(f"{bases['IMSS-Bienestar']}/Observation/{resource_id}").json()["status"] == "amended"
        # A transaction commits in one store: changing another store's resource in one is refused, whole.
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": _observation("IMSS", "in-a-bundle"),
                    "request": {"method": "POST", "url": "Observation"},
                },
                {
                    "resource": changed | {"status": "corrected"},
                    "request": {"method": "PUT", "url": f"Observation/{resource_id}"},
                },
            ],
        }
        refused = http.post(bases["IMSS"], json=bundle)
        assert refused.status_code == 409, refused.text
        assert "ISSSTE's store" in refused.json()["issue"][0]["diagnostics"]
        found = http.get(f"{bases['IMSS']}/Observation", params={"identifier": "urn:test:federation:IMSS|in-a-bundle"})
        assert found.json()["total"] == 0  # nothing of the Bundle was stored
        _wait_for("the worker to apply the update", lambda: _caught_up(postgres_settings, clusters))

        # Every acknowledged write is in the national views exactly once, seen from any institution's server.
        stored_unknown: dict[str, int] = {}
        for name, writer in writers.items():
            seen: Counter[str] = Counter()
            url: str | None = f"{bases['IMSS']}/Observation"
            params: dict[str, str] | None = {"_count": "1000", "code": "http://loinc.org|29463-7"}
            while url:
                page = http.get(url, params=params).json()
                params = None
                for entry in page.get("entry", []):
                    for identifier in entry["resource"].get("identifier", []):
                        if identifier["system"] == f"urn:test:federation:{name}":
                            seen[identifier["value"]] += 1
                url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
            missing = set(writer.acknowledged) - set(seen)
            assert not missing, f"{name}: {len(missing)} acknowledged writes missing"
            assert max(seen.values()) == 1, f"{name}: a write appears twice"
            extra = set(seen) - set(writer.acknowledged) - {f"{name}-own"}
            assert extra <= writer.unknown, f"{name}: {len(extra - writer.unknown)} stored writes nobody sent"
            stored_unknown[name] = len(set(seen) & writer.unknown)
            print(
                f"{name}: {writer.count()} writes acknowledged, statuses {dict(writer.statuses)}, "
                f"{stored_unknown[name]} of the refused stored after all"
            )

        # One person across the three stores: the unified record holds each institution's Observation.
        everything = http.get(f"{bases['IMSS']}/Patient/{patients['IMSS']}/$everything").json()
        tags = {
            entry["resource"]["code"]["text"]
            for entry in everything.get("entry", [])
            if entry["resource"]["resourceType"] == "Observation"
        }
        assert tags >= {f"{name}-own" for name in STORES}, tags

        log = worker_log.read_text()
        assert f"{DOWN}'s store is unavailable" in log and f"{DOWN}'s store is back" in log, log[-3000:]

        compared = _national_views_equal_a_rebuild(postgres_settings, stores, data)
        print(f"national views equal a rebuild from the three logs: {compared:,} rows compared")

        # `ehr rebuild` swaps in every store's projection at once; the servers answer the same afterwards.
        total_before = http.get(f"{bases['ISSSTE']}/Observation", params={"_summary": "count"}).json()["total"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
        env |= _env(postgres_settings, stores, data) | {"EHR_AUTH": "disabled-for-development"}
        rebuilt = _ehr(env, "rebuild")
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        assert "rebuilt resources" in rebuilt.stdout + rebuilt.stderr
        total_after = http.get(f"{bases['IMSS']}/Observation", params={"_summary": "count"}).json()["total"]
        # Each store's ledger, in the national database, verifies against that store's log.
        verified = _ehr(env, "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        for name in STORES:
            assert f"{name}: intact" in verified.stdout, verified.stdout
        stored = sum(w.count() for w in writers.values()) + sum(stored_unknown.values()) + len(STORES)
        assert total_after == total_before == stored, (total_before, total_after, stored)
