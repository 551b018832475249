"""A real server process on a real port, for end-to-end tests with real HTTP clients.

``fhir_server`` starts ``python -m fhir_api.cli serve`` on a free port, once on SQLite (files under the
test's ``tmp_path``) and once on PostgreSQL (a fresh schema from ``postgres_settings``, dropped after),
waits until ``GET /fhir/metadata`` answers and yields the FHIR base URL. The process is stopped afterwards.
Register it with ``from tests.support.server import fhir_server`` in a ``conftest.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from ehr_core.settings import Settings
from tests.support.processes import children, end_of, listens_on

__all__ = [
    "ServerFailed",
    "ehr",
    "fhir_server",
    "free_port",
    "running_server",
    "running_worker",
    "start_server",
    "store_health",
]

#: Seconds for a server to answer its first ``GET /metadata``: a bound only a hang reaches (it usually takes
#: 2-3 s, but several times that on a machine whose cores other test runs keep busy).
STARTUP_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[2]


class ServerFailed(RuntimeError):
    """The server process did not come up; the message carries its output."""


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it; another process could still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _server_env(overrides: dict[str, str]) -> dict[str, str]:
    # Settings the developer's shell may carry (EHR_DATABASE_URL...) must not pick the backend for us.
    env = {key: value for key, value in os.environ.items() if not key.startswith("EHR_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["EHR_AUTH"] = "disabled-for-development"  # End-to-end clients send no bearer tokens
    return env | overrides


def _output(log: Path) -> str:
    text = log.read_text(errors="replace").strip() if log.exists() else ""
    return text[-4000:] or "(no output)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server and what it started (its projection worker, its worker processes)."""
    if process.poll() is not None:
        return
    started = children(process.pid)
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)
    end_of(started, STOP_TIMEOUT)


def _wait_until_ready(process: subprocess.Popen[bytes], base_url: str, log: Path, timeout: float) -> None:
    """Until ``process`` answers ``GET /metadata`` on ``base_url``'s port: it, not another server that took
    the port first (this one then exits, "address already in use")."""
    port = urlsplit(base_url).port
    assert port is not None, base_url
    deadline = time.monotonic() + timeout
    last_problem = "no answer yet"
    # A slow first answer is no reason to give up on it and ask again (that only queues more work).
    with httpx.Client(timeout=httpx.Timeout(30.0, connect=2.0)) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerFailed(f"the server exited with status {process.returncode}:\n{_output(log)}")
            try:
                response = http.get(f"{base_url}/metadata")
            except httpx.TransportError as error:
                last_problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code == 200 and '"CapabilityStatement"' in response.text:
                    if listens_on(process.pid, port):
                        return
                    last_problem = "another process answers on this port"
                last_problem = f"GET /metadata answered {response.status_code}: {response.text[:200]}"
            time.sleep(0.1)
    raise ServerFailed(f"no CapabilityStatement within {timeout:.0f}s ({last_problem}); output:\n{_output(log)}")


def ehr(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """``ehr ARGS --data DATA_DIR`` run as a process (as the README says), its output; fails the test on error."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")} | {"EHR_AUTH": "required"} | (env or {})
    done = subprocess.run(
        [sys.executable, "-m", "fhir_api.cli", *args, "--data", str(data_dir)],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def store_health(base_url: str) -> dict[str, dict[str, object]]:
    """The stores as ``GET /health`` reports them (``{"audit": {"writable": ..., "lastProbe": ...}}``)."""
    response = httpx.get(base_url.removesuffix("/fhir") + "/health", timeout=30)
    assert response.status_code in (200, 503), f"GET /health answered {response.status_code}: {response.text[:300]}"
    stores: dict[str, dict[str, object]] = response.json()["stores"]
    return stores


@contextmanager
def running_server(
    data_dir: Path,
    env: dict[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT,
    attempts: int = 3,
    workers: int = 1,
) -> Iterator[tuple[str, Path]]:
    """Run ``ehr serve`` until the block ends; yield the FHIR base URL and the file with its output.

    A port taken between choosing it and binding it makes the server exit at once: that is retried.
    """
    for attempt in range(1, attempts + 1):
        port = free_port()
        log = data_dir.parent / f"server-{port}.log"
        command = [sys.executable, "-m", "fhir_api.cli", "serve", "--port", str(port), "--data", str(data_dir)]
        if workers > 1:
            command += ["--workers", str(workers)]
        # Output goes to a file, not a pipe: a pipe nobody reads would fill up and block the server.
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, cwd=REPO, env=_server_env(env or {}), stdout=output, stderr=subprocess.STDOUT
            )
        base_url = f"http://127.0.0.1:{port}/fhir"
        try:
            _wait_until_ready(process, base_url, log, timeout)
        except ServerFailed:
            _stop(process)
            if attempt < attempts and "address already in use" in _output(log).lower():
                continue
            raise
        except BaseException:  # interrupted while waiting: never leave the process behind
            _stop(process)
            raise
        try:
            yield base_url, log
        finally:
            _stop(process)
        return


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fhir_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The base URL (``http://127.0.0.1:PORT/fhir``) of a real server process, on each backend."""
    env: dict[str, str] = {}
    if request.param == "postgres":
        # postgres_settings (tests/conftest.py) names a fresh schema and drops it after this fixture ends,
        # that is after the server process has stopped.
        settings: Settings = request.getfixturevalue("postgres_settings")
        assert settings.database_url is not None
        env = {"EHR_DATABASE_URL": settings.database_url, "EHR_POSTGRES_SCHEMA": settings.postgres_schema}
    try:
        with running_server(tmp_path / "ehr-data", env) as (base_url, log):
            # The banner names the backend: make sure the parameter really chose it.
            banner = next((line for line in _output(log).splitlines() if "FHIR R4 server at" in line), "")
            data_dir = (tmp_path / "ehr-data").resolve()
            expected = "(PostgreSQL)" if request.param == "postgres" else f"(SQLite in {data_dir})"
            assert expected in banner, f"the server did not start on {request.param}: {banner!r}"
            yield base_url
    except ServerFailed as error:
        pytest.fail(f"the {request.param} server did not start: {error}", pytrace=False)


@contextmanager
def running_worker(
    env: dict[str, str], log: Path, report_seconds: float = 0, stop_seconds: float = 15
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``ehr project`` (the projection worker) with ``env`` until the block ends; output appended to ``log``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    full |= env | {"EHR_AUTH": "disabled-for-development", "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "fhir_api.cli", "project", "--report-seconds", str(report_seconds)],
            cwd=REPO,
            env=full,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(stop_seconds)


def start_server(env: dict[str, str], logs: Path, attempts: int = 3) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``ehr serve`` with exactly ``env`` (its data directory from ``EHR_DATA_DIR``), output in ``logs``;
    return the process and the FHIR base URL once ``GET /metadata`` answers. The caller stops it (crash
    tests kill it with SIGKILL; ``process.terminate()`` otherwise). A port taken between choosing it and
    binding it is retried, as in :func:`running_server`."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        base = f"http://127.0.0.1:{port}/fhir"
        log = logs / f"server-{port}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "fhir_api.cli", "serve", "--port", str(port)],
                cwd=REPO,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_until_ready(process, base, log, STARTUP_TIMEOUT)
        except ServerFailed:
            process.kill()
            process.wait()
            if attempt < attempts and "address already in use" in _output(log).lower():
                continue
            raise
        except BaseException:
            process.kill()
            process.wait()
            raise
        return process, base
    raise AssertionError("unreachable: the last attempt returns or raises")
