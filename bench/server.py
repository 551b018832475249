"""A real server process on a free 127.0.0.1 port: started, waited for, stopped, its log kept."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["RunningServer", "free_port", "issue_token", "running_server", "running_worker"]

HOST = "127.0.0.1"
PROJECT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _clean_env(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without the developer's ``EHR_*`` settings, plus ``overrides``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EHR_")}
    env.update(overrides or {})
    return env


def issue_token(data_dir: Path, claims: dict[str, str], minutes: int = 120) -> str:
    """A bearer token from the project's own development issuer (``ehr token``; key in ``data_dir``).

    Run before the server starts, so the server finds the issuer key when it loads its trusted issuers.
    """
    command = [sys.executable, "-m", "fhir_api.cli", "token", "--data", str(data_dir), "--minutes", str(minutes)]
    for name, value in claims.items():
        command += [f"--{name}", value]
    result = subprocess.run(command, cwd=PROJECT, env=_clean_env(), capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"ehr token failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    token = result.stdout.strip().splitlines()[-1].strip() if result.stdout.strip() else ""
    if token.count(".") != 2:
        raise RuntimeError(f"ehr token printed no JWT: {result.stdout[-500:]!r}")
    return token


@dataclass(frozen=True)
class RunningServer:
    pid: int
    base_url: str
    log: Path


def _wait_ready(
    process: subprocess.Popen[bytes], url: str, log: Path, timeout: float, headers: dict[str, str] | None
) -> None:
    deadline = time.monotonic() + timeout
    # The first answer builds what later ones reuse (15 s on a busy 2-core machine): a slow answer is no reason
    # to give up on it and ask again, which only queues more work behind it.
    with httpx.Client(timeout=httpx.Timeout(30.0, connect=2.0), trust_env=False, headers=headers) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}; log:\n{log.read_text()[-3000:]}")
            try:
                if client.get(f"{url}/metadata").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"server not ready after {timeout:.0f}s; log:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: the lifespan closes the store
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextmanager
def running_server(
    data_dir: Path,
    log: Path,
    env_overrides: dict[str, str] | None = None,
    wrapper: list[str] | None = None,
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
    workers: int = 1,
) -> Iterator[RunningServer]:
    """``python -m fhir_api.cli serve`` on a free port; ``wrapper`` runs it under e.g. the sampler;
    ``workers`` > 1 starts that many server processes (uvicorn's, PostgreSQL only)."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("EHR_")}
    env["EHR_AUTH"] = "disabled-for-development"  # Benchmarks send no bearer tokens
    env.update(env_overrides or {})
    command = [
        sys.executable,
        *(wrapper or ["-m", "fhir_api.cli"]),
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--data",
        str(data_dir),
        *(["--workers", str(workers)] if workers > 1 else []),
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}/fhir"
    try:
        _wait_ready(process, url, log, timeout, headers)
        yield RunningServer(process.pid, url, log)
    finally:
        _stop(process)


@contextmanager
def running_worker(data_dir: Path, log: Path, env_overrides: dict[str, str], timeout: float = 60.0) -> Iterator[int]:
    """``ehr project`` (the projection worker) on the same store as a server started with
    ``EHR_PROJECTION=worker``; yields its pid once it says it is applying the log. Start it after the server,
    so both do not create the same tables at once and the server's data directory already holds the keys."""
    env = _clean_env(env_overrides)
    env["EHR_DATA_DIR"] = str(data_dir)
    command = [sys.executable, "-m", "fhir_api.cli", "project", "--report-seconds", "0"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while "applying the log" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ehr project did not start ({process.poll()}); log:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield process.pid
    finally:
        _stop(process)
