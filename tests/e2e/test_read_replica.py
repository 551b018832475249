"""Queries answered by a PostgreSQL streaming replica, read-your-writes kept.

A primary cluster and a hot standby of it (``pg_basebackup -R``) are created by the test on loopback ports.
The server writes and projects on the primary and answers reads, searches and history from the standby
(``EHR_VIEWS_REPLICA_URL``). A standby cannot LISTEN, so a write's answer polls the standby's replay of the
projection's tracking row: shown here by pausing the standby's replay — the write is not answered until
replay resumes, and then the same client finds it at once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.pg_cluster import PgCluster
from tests.support.server import running_server
from tests.support.waiting import HANG, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def _observation(tag: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": tag},
        "identifier": [{"system": "urn:test:replica", "value": tag}],
    }


def _transactions(cluster: PgCluster) -> int:
    with psycopg.connect(cluster.conninfo("ehr")) as connection:
        row = connection.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = 'ehr'").fetchone()
    assert row is not None
    return int(row[0])


def _logged(cluster: PgCluster) -> int:
    with psycopg.connect(cluster.conninfo("ehr"), autocommit=True) as connection:
        row = connection.execute("SELECT count(*) FROM public.ehr_events").fetchone()
    assert row is not None
    return int(row[0])


def test_reads_from_a_streaming_replica_keep_read_your_writes(tmp_path: Path) -> None:
    with PgCluster.started("national") as primary:
        primary_url = primary.url("ehr")  # created before the base backup, so the standby has it
        with PgCluster.replica_of(primary) as replica:
            env = {
                "EHR_DATABASE_URL": primary_url,
                "EHR_VIEWS_REPLICA_URL": f"postgresql://postgres@127.0.0.1:{replica.port}/ehr",
                "EHR_POSTGRES_POOL_SIZE": "2",
                "EHR_PROJECTION_WAIT_SECONDS": "60",
            }
            with running_server(tmp_path / "ehr-data", env) as (base, _log), httpx.Client(timeout=90) as http:
                before = _transactions(replica)
                for n in range(30):
                    created = http.post(f"{base}/Observation", json=_observation(f"r{n}"))
                    assert created.status_code == 201, created.text
                    resource_id = created.json()["id"]
                    assert http.get(f"{base}/Observation/{resource_id}").status_code == 200
                    found = http.get(f"{base}/Observation", params={"identifier": f"urn:test:replica|r{n}"}).json()
                    assert found["total"] == 1, found
                # The 60 reads and searches ran on the standby (each is at least one transaction there). An
                # idle backend reports its statistics within 10 s (PostgreSQL's PGSTAT_IDLE_INTERVAL): waited for.
                wait_until(
                    lambda: _transactions(replica) - before >= 60,
                    "the standby to report the 60 reads",
                    seen=lambda: _transactions(replica) - before,
                )
                assert _transactions(replica) - before >= 60

                # Replay paused: the write is durable on the primary, but not answered until the standby has it.
                with psycopg.connect(replica.conninfo("ehr"), autocommit=True) as connection:
                    connection.execute("SELECT pg_wal_replay_pause()")
                    resumed = threading.Event()
                    answered: dict[str, Any] = {}

                    def write() -> None:
                        answer = http.post(f"{base}/Observation", json=_observation("paused"))
                        answered["resumed_first"] = resumed.is_set()
                        answered["answer"] = answer

                    logged = _logged(primary)
                    writer = threading.Thread(target=write)
                    writer.start()
                    # Durable on the primary (waited for: on a loaded machine the request may take a while to get
                    # there); then time for a wrong early answer to arrive.
                    wait_until(lambda: _logged(primary) > logged, "the write to commit on the primary")
                    time.sleep(3)
                    resumed.set()
                    connection.execute("SELECT pg_wal_replay_resume()")
                    writer.join(timeout=HANG)
                assert not writer.is_alive(), f"the write was not answered within {HANG:.0f} s of the replay resuming"
                assert answered["answer"].status_code == 201, answered["answer"].text
                assert answered["resumed_first"], "the write was answered before the replica had replayed it"
                resource_id = answered["answer"].json()["id"]
                assert http.get(f"{base}/Observation/{resource_id}").status_code == 200
