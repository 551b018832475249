"""Shared fixtures: every backend-facing test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``EHR_TEST_POSTGRES_URL`` (default: the local server's ``test`` database). Each
test gets its own schema, dropped afterwards. Without a server the PostgreSQL cases are skipped, except
under ``CI=true``, where they fail: a green CI must mean both backends passed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.services import Services
from tests.support.schemas import drop_schema

# Authentication is on by default; the tests that send no bearer token run with the explicit
# development switch (here, and in settings built anywhere in-process); tests/integration/test_auth.py turns it on.
DEV_AUTH = "disabled-for-development"
os.environ.setdefault("EHR_AUTH", DEV_AUTH)

POSTGRES_URL = os.environ.get("EHR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
CORPUS = Path(os.environ.get("EHR_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _postgres_available() -> str | None:
    try:
        with psycopg.connect(Settings(database_url=POSTGRES_URL).postgres_conninfo(), connect_timeout=3):
            return None
    except psycopg.Error as error:
        return str(error).strip()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    problem = _postgres_available()
    if problem is not None:
        message = f"PostgreSQL at {POSTGRES_URL} is not answering: {problem}"
        if IN_CI:
            pytest.fail(message + " (required under CI=true)")
        pytest.skip(message)
    return POSTGRES_URL


@pytest.fixture
def postgres_settings(postgres_url: str) -> Iterator[Settings]:
    """Settings for a fresh PostgreSQL schema, dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    settings = Settings(database_url=postgres_url, postgres_schema=schema, postgres_pool_size=2, auth=DEV_AUTH)
    yield settings
    drop_schema(settings.postgres_conninfo(), schema)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "ehr-data", auth=DEV_AUTH)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest) -> Settings:
    """One test, both backends: the contract every backend must keep."""
    fixture = "sqlite_settings" if request.param == "sqlite" else "postgres_settings"
    value: Settings = request.getfixturevalue(fixture)
    return value


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    opened = Services.open(settings)
    yield opened
    opened.close()


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services=services)) as test_client:
        yield test_client


@pytest.fixture
def secured_client(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Iterator[tuple[TestClient, Settings]]:
    """A server with authentication on over the ``settings`` backend, for one test (tests/support/access.py)."""
    from tests.support.access import secured_server

    backend = "sqlite" if settings.database_url is None else "postgres"
    with secured_server(request, backend, tmp_path / "ehr-data") as (client, _, configured):
        yield client, configured
