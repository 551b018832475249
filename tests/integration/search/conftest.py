"""A store loaded with the whole search corpus, once per backend per test session.

Loading goes through the domain's validation and append (``prepare_update`` + one ``commit`` per chunk,
like a transaction of PUTs) and then one projector catch-up: the search index is built by the same
projector as in production, in batches. See ``corpus.py`` for how the Synthea references are rewritten.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from ehr_core.context import WriteContext
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.services import Services
from tests.integration.search.corpus import corpus_resources
from tests.support.schemas import drop_schema

_CHUNK = 200
# The corpus client sends no bearer token: authentication is off for this store (where the server has it).
_NO_AUTH = {"auth": "disabled-for-development"} if "auth" in Settings.model_fields else {}


def _load(services: Services) -> None:
    application, context = services.application, WriteContext(institution="corpus", user="search-tests")
    resources = corpus_resources()
    for start in range(0, len(resources), _CHUNK):
        chunk = resources[start : start + _CHUNK]
        application.commit([application.prepare_update(r["resourceType"], r["id"], r, context) for r in chunk])
    services.projector.catch_up()


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("sqlite", marks=pytest.mark.xdist_group("search-corpus-sqlite")),
        pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.xdist_group("search-corpus-postgres")]),
    ],
)
def corpus_client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A client over a store holding every corpus resource (read-only for the tests that use it)."""
    schema = None
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path_factory.mktemp("search-corpus"), **_NO_AUTH)
    else:
        url: str = request.getfixturevalue("postgres_url")
        schema = f"search_{uuid.uuid4().hex[:12]}"
        settings = Settings(database_url=url, postgres_schema=schema, postgres_pool_size=2, **_NO_AUTH)
    services = Services.open(settings, follow=False)
    try:
        _load(services)
        with TestClient(create_app(services=services)) as client:
            yield client
    finally:
        services.close()
        if schema is not None:
            drop_schema(settings.postgres_conninfo(), schema)
