"""The projection worker on PostgreSQL: two API server processes write, ``ehr project`` applies.

- Read-your-writes holds with the projection in another process: every write is readable and searchable
  the moment it is acknowledged, from the server that took it and from the other one.
- The worker SIGKILLed again and again while writes arrive: after the last restart the views equal a
  rebuild from zero, every acknowledged write is there exactly once, and the history view holds each
  resource event of the log once (none applied twice, none skipped).
"""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ehr_core.settings import Settings
from fhir_api.services import Services
from projections.db import PostgresViews
from tests.support.schemas import drop_schema
from tests.support.server import running_server, running_worker
from tests.support.waiting import HANG, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

KILLS = 8


def _env(settings: Settings, data: Path) -> dict[str, str]:
    assert settings.database_url is not None
    return {
        "EHR_DATABASE_URL": settings.database_url,
        "EHR_POSTGRES_SCHEMA": settings.postgres_schema,
        "EHR_POSTGRES_POOL_SIZE": "2",
        "EHR_DATA_DIR": str(data),  # one development master key for every process
        "EHR_PROJECTION": "worker",
        "EHR_PROJECTION_WAIT_SECONDS": "30",
    }


@contextmanager
def _deployment(settings: Settings, tmp_path: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    data = tmp_path / "ehr-data"
    env = _env(settings, data)
    with ExitStack() as stack:
        first, _ = stack.enter_context(running_server(data, env))
        second, _ = stack.enter_context(running_server(data, env))  # after the first made the master key
        yield [first, second], env


def _started(log: Path, count: int) -> None:
    """Wait until the worker process number ``count`` is applying (its banner is printed after start-up)."""
    wait_until(
        lambda: log.read_text().count("applying the log") >= count,
        f"worker {count} to start applying",
        interval=0.05,
        seen=lambda: log.read_text()[-2000:],
    )


def _observation(tag: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": tag},
        "identifier": [{"system": "urn:test:worker", "value": tag}],
        "valueQuantity": {"value": 70.5, "unit": "kg"},
    }


def _metric(base: str, name: str, projection: str) -> int:
    text = httpx.get(base.removesuffix("/fhir") + "/metrics", timeout=10).text
    match = re.search(rf'^{name}\{{projection="{projection}"\}} (\S+)$', text, re.MULTILINE)
    assert match is not None, text[-2000:]
    return int(float(match.group(1)))


def _caught_up(base: str, projection: str) -> None:
    def lag() -> int:
        return _metric(base, "ehr_projection_lag_events", projection)

    wait_until(lambda: lag() == 0, f"the worker to catch up ({projection})", interval=0.2, seen=lag)


def test_read_your_writes_across_two_api_processes_with_a_worker(postgres_settings: Settings, tmp_path: Path) -> None:
    with _deployment(postgres_settings, tmp_path) as (bases, env), running_worker(env, tmp_path / "worker.log"):
        with httpx.Client(timeout=60) as http:
            for i in range(20):
                writer, other = bases[i % 2], bases[(i + 1) % 2]
                created = http.post(f"{writer}/Observation", json=_observation(f"ryw-{i}"))
                assert created.status_code == 201, created.text
                resource_id = created.json()["id"]
                assert http.get(f"{writer}/Observation/{resource_id}").status_code == 200
                found = http.get(f"{writer}/Observation", params={"identifier": f"urn:test:worker|ryw-{i}"}).json()
                assert found["total"] == 1
                assert http.get(f"{other}/Observation/{resource_id}").status_code == 200
        assert _metric(bases[0], "ehr_projection_lag_events", "resources") == 0


def test_worker_killed_mid_batch_again_and_again_ends_equal_to_a_rebuild(
    postgres_settings: Settings, tmp_path: Path
) -> None:
    acknowledged: list[str] = []
    problems: list[str] = []
    stop = threading.Event()

    def write(base: str, name: str) -> None:
        with httpx.Client(timeout=90) as http:
            n = 0
            while not stop.is_set():
                n += 1
                if n % 5 == 0:  # a transaction of 40 entries: batches of many notifications
                    entries = [
                        {
                            "resource": _observation(f"{name}-{n}-{k}"),
                            "request": {"method": "POST", "url": "Observation"},
                        }
                        for k in range(40)
                    ]
                    response = http.post(base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
                    if response.status_code != 200:
                        problems.append(f"transaction: {response.status_code} {response.text[:300]}")
                        return
                    acknowledged.extend(e["response"]["location"].split("/")[1] for e in response.json()["entry"])
                else:
                    response = http.post(f"{base}/Observation", json=_observation(f"{name}-{n}"))
                    if response.status_code != 201:
                        problems.append(f"create: {response.status_code} {response.text[:300]}")
                        return
                    acknowledged.append(response.json()["id"])

    log = tmp_path / "worker.log"
    rng = random.Random(8)
    with _deployment(postgres_settings, tmp_path) as (bases, env):
        writers = [threading.Thread(target=write, args=(base, f"w{i}")) for i, base in enumerate(bases)]
        for thread in writers:
            thread.start()
        kills = 0
        try:
            while kills < KILLS:
                with running_worker(env, log) as worker:
                    _started(log, kills + 1)
                    time.sleep(rng.uniform(0.2, 1.0))  # it catches up with what piled up, then follows
                    worker.send_signal(signal.SIGKILL)
                    worker.wait(10)
                    kills += 1
                time.sleep(rng.uniform(0.1, 0.5))  # writes pile up while no worker runs
            with running_worker(env, log):
                _started(log, KILLS + 1)  # the last worker applies while writes still come in
                stop.set()
                for thread in writers:
                    thread.join(HANG)
                assert not any(thread.is_alive() for thread in writers), f"a writer still runs after {HANG:.0f} s"
                for projection in ("resources", "identity"):
                    _caught_up(bases[0], projection)
        finally:
            stop.set()
            for thread in writers:
                thread.join(120)
    assert problems == []
    assert kills == KILLS and len(acknowledged) > 200, len(acknowledged)
    print(f"{len(acknowledged)} writes acknowledged while the worker was killed {kills} times")

    settings = postgres_settings.model_copy(update={"projection": "worker", "data_dir": tmp_path / "ehr-data"})
    services = Services.open(settings, follow=False)  # opens without projecting: the worker did it
    try:
        live = services.projector.dump()
        # Every acknowledged write is there exactly once.
        current = {row[1] for row in live["resources"] if row[0] == "Observation" and row[4] is not None}
        assert set(acknowledged) <= current and len(acknowledged) == len(set(acknowledged))
        # Each resource event of the log is in the history view once: none applied twice, none skipped.
        with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
            logged = {
                int(row[0])
                for row in connection.execute(
                    f'SELECT notification_id FROM "{settings.postgres_schema}".ehr_events WHERE topic LIKE %s',
                    ("%ResourceStream%",),
                ).fetchall()
            }
        history = [int(row[0]) for row in live["resource_history"]]
        assert len(history) == len(set(history)) and set(history) == logged
        # And the views equal a rebuild from zero, built beside them.
        schema = f"{settings.postgres_schema}_ref"
        with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{schema}"')
        reference_db = PostgresViews(settings.postgres_conninfo(), schema, pool_size=2)
        try:
            reference = services.projector.beside(reference_db)
            reference.create_tables()
            reference.catch_up()
            assert reference.dump() == live
        finally:
            reference_db.close()
            drop_schema(settings.postgres_conninfo(), schema)
    finally:
        services.close()
    assert log.read_text().count("applying the log") == KILLS + 1
