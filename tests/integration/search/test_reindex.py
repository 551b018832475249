"""A store indexed under another search registry is indexed again when the server (or ``ehr project``)
starts, so a parameter the old registry lacked finds the resources stored before (fhir_api/search_registry.py).

"Another registry" is made the way an upgrade leaves it: the rows of a parameter missing from the index
(the old version did not have it) and the index's recorded fingerprint not this version's — or no
fingerprint at all, as an index built before fingerprints were recorded has.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from ehr_core.context import WriteContext
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.search_registry import reindex_if_stale
from fhir_api.services import Services
from projections.search.extract import FINGERPRINT

SYSTEM = "http://example.org/fhir/CodeSystem/basic-kind"
COUNT = 30


def _store_without_code_rows(settings: Settings) -> None:
    """Basic resources stored, then their ``code`` rows removed: an index built without that parameter."""
    services = Services.open(settings, follow=False)
    try:
        application = services.application
        pendings = [
            application.prepare_update(
                "Basic", f"b{n}", {"resourceType": "Basic", "id": f"b{n}", "code": _code(n)}, WriteContext()
            )
            for n in range(COUNT)
        ]
        application.commit(pendings)
        services.projector.catch_up()
        with services.views.write() as tx:
            tx.execute("DELETE FROM search_token WHERE resource_type = 'Basic' AND param = 'code'")
    finally:
        services.close()


def _code(n: int) -> dict[str, Any]:
    return {"coding": [{"system": SYSTEM, "code": f"kind-{n}"}]}


def _set_fingerprint(settings: Settings, value: str | None) -> None:
    """Record ``value`` as the index's registry fingerprint (None: drop the table, as before fingerprints)."""
    services = Services.open(settings, follow=False)
    try:
        with services.views.write() as tx:
            if value is None:
                tx.execute("DROP TABLE search_registry")
            else:
                tx.execute("UPDATE search_registry SET fingerprint = ?", (value,))
    finally:
        services.close()


def _found(client: TestClient, n: int) -> list[str]:
    bundle = client.get("/fhir/Basic", params={"code": f"{SYSTEM}|kind-{n}"}).json()
    return [entry["resource"]["id"] for entry in bundle.get("entry", [])]


def test_a_fresh_store_is_current(services: Services) -> None:
    assert reindex_if_stale(services) is None


def test_the_same_registry_starts_without_reindexing(settings: Settings, capfd: pytest.CaptureFixture[str]) -> None:
    _store_without_code_rows(settings)
    with TestClient(create_app(settings=settings)) as client:
        assert _found(client, 3) == []  # nothing says the index is stale: no re-index, no rows
    assert "re-index" not in capfd.readouterr().err


@pytest.mark.parametrize("recorded", ["0123456789abcdef", None], ids=["another-registry", "before-fingerprints"])
def test_the_server_reindexes_at_start_when_the_registry_changed(
    settings: Settings, recorded: str | None, capfd: pytest.CaptureFixture[str]
) -> None:
    _store_without_code_rows(settings)
    _set_fingerprint(settings, recorded)
    with TestClient(create_app(settings=settings)) as client:
        assert [_found(client, n) for n in (0, 17, COUNT - 1)] == [["b0"], ["b17"], [f"b{COUNT - 1}"]]
        services: Services = client.app.state.services  # type: ignore[attr-defined]
        with services.views.read_primary() as tx:
            assert tx.execute("SELECT fingerprint FROM search_registry").fetchall() == [(FINGERPRINT,)]
        assert reindex_if_stale(services) is None  # done once
    assert f"re-indexed {COUNT} resources" in capfd.readouterr().err
