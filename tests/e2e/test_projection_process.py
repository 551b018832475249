"""``ehr serve`` on PostgreSQL with its own projection worker (the default, ``EHR_PROJECTION=auto``).

- The worker is a child of the server; a write is readable and searchable the moment it is answered.
- Killed on its own, the worker is started again and writes go on being visible when answered.
- A restarted server answers once its new worker has applied the log as the server found it: what was
  committed before the restart is in every view, as when the server projects itself.
- A worker that cannot reach the database exits 1 with its message (not an abort) while its pipe is open.
- The server SIGKILLed: the worker ends by itself (it never outlives the server, holding connections and
  tracking-row locks); the server stopped with SIGTERM: both end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ehr_core.settings import Settings
from tests.support.processes import children, command_line, running
from tests.support.server import start_server
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def _env(settings: Settings, data: Path) -> dict[str, str]:
    assert settings.database_url is not None
    env = {key: value for key, value in os.environ.items() if not key.startswith("EHR_")}
    return env | {
        "PYTHONUNBUFFERED": "1",
        "EHR_AUTH": "disabled-for-development",
        "EHR_DATABASE_URL": settings.database_url,
        "EHR_POSTGRES_SCHEMA": settings.postgres_schema,
        "EHR_DATA_DIR": str(data),
    }


def _worker_of(server: subprocess.Popen[bytes]) -> int:
    found = [pid for pid in children(server.pid) if running(pid) and "--until-stdin-closes" in command_line(pid)]
    assert len(found) == 1, f"the server's children: {[command_line(pid) for pid in children(server.pid)]}"
    return found[0]


def _write_and_find(base: str, family: str) -> None:
    """Create a Patient, then read and search it at once, on a new connection: read-your-writes."""
    headers = {"X-EHR-Institution": "IMSS", "X-EHR-User": "registro"}
    patient: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": family, "given": ["Ana"]}]}
    created = httpx.post(f"{base}/Patient", json=patient, headers=headers, timeout=60)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    assert httpx.get(f"{base}/Patient/{rid}", headers=headers, timeout=30).status_code == 200
    found = httpx.get(f"{base}/Patient", params={"family": family}, headers=headers, timeout=30).json()
    assert [entry["resource"]["id"] for entry in found.get("entry", [])] == [rid]


def _in_history(base: str) -> int:
    """The system history's total: the resource views' count, read as they are (no catch-up first)."""
    answer = httpx.get(f"{base}/_history", params={"_count": "0"}, timeout=30)
    assert answer.status_code == 200, answer.text
    total: int = answer.json()["total"]
    return total


def test_the_server_projects_in_a_worker_of_its_own(postgres_settings: Settings, tmp_path: Path) -> None:
    server, base = start_server(_env(postgres_settings, tmp_path / "ehr-data"), tmp_path)
    try:
        worker = _worker_of(server)
        _write_and_find(base, "Primera")
        os.kill(worker, signal.SIGKILL)  # on its own: the server starts another
        wait_until(lambda: not running(worker), "the killed worker to end")
        _write_and_find(base, "Segunda")  # waits for the new worker's batch (read-your-writes)
        replaced = _worker_of(server)
        assert replaced != worker
        server.send_signal(signal.SIGKILL)
        server.wait()
        wait_until(lambda: not running(replaced), "the worker to end with its server", timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_stopped_server_stops_its_worker(postgres_settings: Settings, tmp_path: Path) -> None:
    server, base = start_server(_env(postgres_settings, tmp_path / "ehr-data"), tmp_path)
    try:
        worker = _worker_of(server)
        _write_and_find(base, "Tercera")
        server.terminate()
        server.wait(30)  # uvicorn ends by SIGTERM again once it has shut down: the code is -15
        wait_until(lambda: not running(worker), "the worker to stop with the server", timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_restarted_server_answers_once_its_worker_has_the_log(postgres_settings: Settings, tmp_path: Path) -> None:
    """What was committed before a restart is readable as soon as the new server answers: it waits for its
    new worker to apply the log as it found it, as a server that projects itself catches up before serving."""
    env = _env(postgres_settings, tmp_path / "ehr-data")
    # A server whose worker never comes: the writes are committed, answered after a short wait, not projected.
    lagging, base = start_server(env | {"EHR_PROJECTION": "worker", "EHR_PROJECTION_WAIT_SECONDS": "0.05"}, tmp_path)
    try:
        for i in range(60):
            patient = {"resourceType": "Patient", "name": [{"family": "Reinicio", "given": [f"N{i}"]}]}
            assert httpx.post(f"{base}/Patient", json=patient, timeout=60).status_code == 201
    finally:
        lagging.terminate()
        lagging.wait()
    with psycopg.connect(postgres_settings.postgres_conninfo()) as connection:
        schema = postgres_settings.postgres_schema
        applied = connection.execute(f"SELECT position FROM \"{schema}\".projection_tracking WHERE name = 'resources'")
        head = connection.execute(f'SELECT MAX(notification_id) FROM "{schema}".ehr_events')
        assert applied.fetchone()[0] < head.fetchone()[0], "the premise: the log is ahead of the resource views"
    server, base = start_server(env, tmp_path)  # with a worker of its own, which starts behind the log
    try:
        assert _in_history(base) == 60
    finally:
        server.terminate()
        server.wait()


def test_a_worker_that_cannot_reach_the_database_exits_with_an_error(tmp_path: Path) -> None:
    """Its server still holds the pipe open: the worker must exit 1 with its message, not abort (SIGABRT)
    on a thread still reading that pipe; its server starts it again."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EHR_")}
    env |= {"EHR_AUTH": "disabled-for-development", "EHR_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    command = [sys.executable, "-m", "fhir_api.cli", "project", "--until-stdin-closes", "--report-seconds", "0"]
    command += ["--data", str(tmp_path / "ehr-data")]
    worker = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert worker.stdin is not None and worker.stderr is not None
    try:
        errors = worker.stderr.read()  # until it exits: its standard input stays open meanwhile
        worker.wait(60)
    finally:
        worker.stdin.close()
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 1, errors.decode(errors="replace")[-2000:]
    assert b"cannot reach the database" in errors
