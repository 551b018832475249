"""SIGTERM ends the server within a bound, even with a write stuck in the database.

A write blocked on the event table's lock used to keep the process alive after SIGTERM (the worker thread
blocked in the driver cannot be cancelled). Now requests in flight get ``EHR_SHUTDOWN_TIMEOUT_SECONDS``,
then the process exits.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from ehr_core.settings import Settings
from tests.support.processes import children, end_of
from tests.support.server import REPO, STARTUP_TIMEOUT, _server_env, _wait_until_ready, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

#: Only a shutdown that never ends reaches this (grace 2 s, plus at most 10 s for what is still blocked).
HANG = 40.0


def test_sigterm_with_a_stuck_write_exits_within_bound(postgres_settings: Settings, tmp_path: Path) -> None:
    env = {
        "EHR_DATABASE_URL": str(postgres_settings.database_url),
        "EHR_POSTGRES_SCHEMA": postgres_settings.postgres_schema,
        "EHR_SHUTDOWN_TIMEOUT_SECONDS": "2",
        # The write would wait for the lock far longer than the test: only the shutdown can end it.
        "EHR_POSTGRES_LOCK_TIMEOUT_SECONDS": "300",
        "EHR_POSTGRES_STATEMENT_TIMEOUT_SECONDS": "300",
        "EHR_REQUEST_TIMEOUT_SECONDS": "300",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "fhir_api.cli", "serve", "--port", str(port), "--data", str(tmp_path / "d")]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=REPO, env=_server_env(env), stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_until_ready(process, base, log, STARTUP_TIMEOUT)
        body = {"resourceType": "Observation", "status": "final", "code": {"text": "peso"}}
        assert httpx.post(f"{base}/Observation", json=body, timeout=30).status_code == 201
        with psycopg.connect(postgres_settings.postgres_conninfo()) as blocker:
            blocker.execute(f'LOCK TABLE "{postgres_settings.postgres_schema}".ehr_events IN ACCESS EXCLUSIVE MODE')

            def stuck_write() -> None:
                # The connection closes with the process: the point is that it does.
                with contextlib.suppress(httpx.HTTPError):
                    httpx.post(f"{base}/Observation", json=body, timeout=HANG + 10)

            writer = threading.Thread(target=stuck_write, daemon=True)
            writer.start()
            time.sleep(1.0)  # the write is now waiting for the lock
            workers = children(process.pid)  # the projection worker, waiting for the same lock
            assert len(workers) == 1, "the server on PostgreSQL projects in a worker process of its own"
            started = time.monotonic()
            process.terminate()
            try:
                process.wait(HANG)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the server was still running {HANG:.0f} s after SIGTERM:\n{log.read_text()[-2000:]}")
            assert time.monotonic() - started < HANG
            blocker.rollback()
        # The worker outlives its server only by the batch it was in; the schema is dropped after this.
        assert end_of(workers, HANG) == [], "the projection worker was still running after its server ended"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
