"""``ehr import`` as a user runs it: a real process, progress, a summary, resumable, on every backend."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from ehr_core.references import CONDITIONAL_REFERENCE
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.services import Services
from projections.resources import ResourceViews
from tests.conftest import CORPUS
from tests.support.bulk_sample import write_bulk_sample
from tests.support.processes import children, running
from tests.support.references import references
from tests.support.server import REPO
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

SYNTHEA = CORPUS / "synthea" / "smart-r4-2019"


@pytest.fixture
def store_env(settings: Settings) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    if settings.uses_postgres:
        env |= {"EHR_DATABASE_URL": str(settings.database_url), "EHR_POSTGRES_SCHEMA": settings.postgres_schema}
    env["EHR_DATA_DIR"] = str(settings.data_dir)
    yield env


def _import(env: dict[str, str], *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fhir_api.cli", "import", *map(str, paths)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _counts(settings: Settings) -> dict[str, int]:
    services = Services.open(settings, follow=False)
    try:
        with services.views.read() as tx:
            rows = tx.execute(
                "SELECT resource_type, COUNT(*) FROM resources WHERE body IS NOT NULL GROUP BY resource_type"
            ).fetchall()
        return {str(row[0]): int(row[1]) for row in rows}
    finally:
        services.close()


@pytest.mark.slow
def test_import_synthea_then_again_then_every_reference_resolves(settings: Settings, store_env: dict[str, str]) -> None:
    first = _import(store_env, SYNTHEA)
    assert first.returncode == 0, first.stderr
    assert "3507 versions stored" in first.stderr and "0 rejected" in first.stderr
    again = _import(store_env, SYNTHEA)
    assert again.returncode == 0, again.stderr
    assert "0 versions stored" in again.stderr and "30 chunks already imported" in again.stderr
    counts = _counts(settings)
    assert sum(counts.values()) == 3507 and counts["Patient"] == 30
    services = Services.open(settings, follow=False)
    try:
        with services.views.read() as tx:
            bodies = tx.execute("SELECT body FROM resources").fetchall()
            for (body,) in bodies:
                for reference in references(json.loads(bytes(body))):
                    if reference.startswith("#"):
                        continue  # contained resources
                    resource_type, resource_id = reference.split("/")
                    found = ResourceViews.read(tx, resource_type, resource_id)
                    assert found is not None and not found.deleted, reference
    finally:
        services.close()


def _logged(settings: Settings) -> int:
    """Events in the clinical log so far, read without opening the store (the import holds it open)."""
    try:
        if settings.uses_postgres:
            with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
                row = connection.execute(f'SELECT count(*) FROM "{settings.postgres_schema}".ehr_events').fetchone()
        else:
            path = settings.data_dir / "events.sqlite"
            if not path.exists():
                return 0
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as connection:
                row = connection.execute("SELECT count(*) FROM stored_events").fetchone()
    except (psycopg.errors.UndefinedTable, sqlite3.OperationalError):  # not created yet
        return 0
    return int(row[0]) if row else 0


@pytest.mark.slow
def _start_import(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``ehr import`` of the Synthea sample, running (to be interrupted)."""
    return subprocess.Popen(
        [sys.executable, "-m", "fhir_api.cli", "import", str(SYNTHEA)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_an_interrupted_import_resumes_without_duplicates(settings: Settings, store_env: dict[str, str]) -> None:
    process = _start_import(store_env)
    # Killed once part of it is stored (a fixed delay could land before the first chunk, or after the last).
    wait_until(lambda: _logged(settings) > 0 or process.poll() is not None, "the import to store its first chunk")
    assert process.poll() is None, f"the import ended (status {process.returncode}) before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = sum(_counts(settings).values())
    resumed = _import(store_env, SYNTHEA)
    assert resumed.returncode == 0, resumed.stderr
    counts = _counts(settings)
    assert sum(counts.values()) == 3507 and counts["Patient"] == 30, (partial, counts)
    print(f"killed after {partial} resources; the resumed import completed the rest")


def test_a_killed_import_leaves_no_process_behind(settings: Settings, store_env: dict[str, str]) -> None:
    """SIGKILL cannot be caught: the import's projector (and workers) must notice on their own and end,
    or they hold the store's connections and locks for ever (a schema could then not even be dropped)."""
    process = _start_import(store_env)
    try:
        wait_until(lambda: _logged(settings) > 0 or process.poll() is not None, "the import to store its first chunk")
        spawned = [pid for pid in children(process.pid) if running(pid)]
        assert process.poll() is None and spawned, "the import ended before it could be interrupted"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    wait_until(lambda: not any(running(pid) for pid in spawned), "the import's children to end with it", timeout=30)


def test_ndjson_with_bad_lines_keeps_the_rest(settings: Settings, store_env: dict[str, str], tmp_path: Path) -> None:
    lines = [
        '{"resourceType":"Patient","id":"a","gender":"female"}',
        "{not json",
        '{"resourceType":"Patient","id":"b","gender":7}',
        '{"resourceType":"Patient","gender":"male"}',
        '{"resourceType":"Patient","id":"c","birthDate":"1970-01-01"}',
        '{"resourceType":"Patient","id":"a","gender":"female","active":true}',
    ]
    source = tmp_path / "patients.ndjson"
    source.write_text("\n".join(lines) + "\n")
    result = _import(store_env, source)
    assert result.returncode == 1  # something was rejected
    assert "3 rejected" in result.stderr
    for position in ("line 2", "line 3", "line 4"):
        assert position in result.stderr
    assert _counts(settings) == {"Patient": 2}  # a (twice) and c
    services = Services.open(settings, follow=False)
    try:
        stream = services.application.stream("Patient", "a")
        assert stream is not None and stream.version == 2  # two lines, two versions, in file order
    finally:
        services.close()


def test_missing_path_says_what_to_do(store_env: dict[str, str], tmp_path: Path) -> None:
    result = _import(store_env, tmp_path / "nope.ndjson")
    assert result.returncode == 2 and "no such file" in result.stderr


def _stored_bodies(services: Services) -> list[dict[str, object]]:
    with services.views.read() as tx:
        rows = tx.execute("SELECT body FROM resources WHERE body IS NOT NULL").fetchall()
    return [json.loads(bytes(row[0])) for row in rows]


@pytest.mark.parametrize("workers", [1, 2])
def test_bulk_export_with_conditional_references_imports_completely(
    settings: Settings, store_env: dict[str, str], tmp_path: Path, workers: int
) -> None:
    """The SMART sample bulk data shape: Encounter.ndjson (first by name) names its practitioners, locations
    and organizations by ``Type?identifier=…``; Location.ndjson names organizations in a later file. Loaded in
    dependency order with the lines whose targets come later resolved last, every reference resolves, and
    ``Encounter?participant=Practitioner/{id}`` finds each practitioner's encounters."""
    sample = write_bulk_sample(tmp_path / "export")
    result = subprocess.run(
        [sys.executable, "-m", "fhir_api.cli", "import", "--quiet", "--workers", str(workers), str(sample.directory)],
        cwd=REPO,
        env=store_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert f"{sample.lines} versions stored" in result.stderr and "0 rejected" in result.stderr, result.stderr
    services = Services.open(settings, follow=False)
    try:
        bodies = _stored_bodies(services)
        assert len(bodies) == sample.lines
        unresolved = [r for body in bodies for r in references(body) if CONDITIONAL_REFERENCE.match(r)]
        assert unresolved == []
        stored = {(str(body["resourceType"]), str(body["id"])) for body in bodies}
        dangling = [r for body in bodies for r in references(body) if tuple(r.split("/")) not in stored]
        assert dangling == []
        with TestClient(create_app(services=services)) as client:
            for practitioner, encounters in sample.encounters_of.items():
                found = client.get(
                    "/fhir/Encounter", params={"participant": f"Practitioner/{practitioner}", "_count": "500"}
                )
                assert found.status_code == 200, found.text
                assert sorted(e["resource"]["id"] for e in found.json()["entry"]) == sorted(encounters)
    finally:
        services.close()


def test_bulk_line_whose_reference_matches_nothing_is_rejected_and_listed(
    settings: Settings, store_env: dict[str, str], tmp_path: Path
) -> None:
    """A line whose conditional reference still matches nothing once everything is loaded is rejected and
    listed with the element it names (the 422 of a REST write); every other line is stored."""
    sample = write_bulk_sample(tmp_path / "export", encounters=40, unknown_npi="1234567893")
    result = _import(store_env, sample.directory)
    assert result.returncode == 1, result.stderr
    stored = sample.lines - 1  # all but the orphan
    assert "1 rejected" in result.stderr and f"{stored} versions stored" in result.stderr, result.stderr
    assert f"Encounter.ndjson line {40 + 1}" in result.stderr
    assert "Encounter.participant[0].individual" in result.stderr and "us-npi|1234567893" in result.stderr
    services = Services.open(settings, follow=False)
    try:
        bodies = _stored_bodies(services)
        assert len(bodies) == stored
        assert not [r for body in bodies for r in references(body) if CONDITIONAL_REFERENCE.match(r)]
    finally:
        services.close()
