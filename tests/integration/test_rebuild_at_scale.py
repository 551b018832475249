"""Rebuild equals live at scale: 200,000 events on PostgreSQL (a million with EHR_TEST_REBUILD_EVENTS).

The log gets ``EHR_TEST_REBUILD_EVENTS`` events (default 200,000; 1000000 gives the national figure, which
since the composite and full-text indexes joined the rebuild takes longer than the whole suite may):
creates, revisions and retractions of Observations in 2,000 patients' compartments (each under its
patient's data key), appended in chunks through the application and projected live after each chunk, as a
busy server would. Then every projection is rebuilt from zero beside the live one, and the two are compared
table by table in SQL (``EXCEPT ALL`` both ways, so duplicates count). The rates are printed.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ehr_core.context import WriteContext
from ehr_core.settings import Settings
from fhir_api.services import Services
from projections.rebuild import build_beside, drop_shadow

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

EVENTS = int(os.environ.get("EHR_TEST_REBUILD_EVENTS", "200000"))
CHUNK = 5_000
PATIENTS = 2_000


def _observation(n: int) -> dict[str, object]:
    moment = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(minutes=n)
    return {
        "resourceType": "Observation",
        "id": f"obs-{n}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": ("8480-6", "2339-0", "29463-7")[n % 3]}]},
        "subject": {"reference": f"Patient/pt-{n % PATIENTS}"},
        "effectiveDateTime": moment.isoformat(),
        "valueQuantity": {"value": 60 + n % 90, "unit": "mg/dL"},
    }


def _append(services: Services, total: int) -> int:
    """Append ``total`` events in chunks, projecting after each; return how many were appended."""
    application = services.application
    context = WriteContext(institution="IMSS", unit="DFIMS000020", user="scale-test")
    patients = [
        application._prepare(
            None, {"resourceType": "Patient", "id": f"pt-{i}", "gender": "female"}, context, "create", None
        )
        for i in range(PATIENTS)
    ]
    application.commit(patients)
    appended, n = PATIENTS, 0
    while appended < total:
        pendings = []
        chunk = min(CHUNK, total - appended)
        # Per 20 events: 18 creates, one revision of a resource created in this chunk, one retraction.
        # The resources are generated valid, so validation is skipped (``_prepare``): the events are the same.
        count = 0
        while count < chunk:
            resource = _observation(n)
            pending = application._prepare(None, resource, context, "create", None)
            count += 1
            if n % 19 == 0 and count < chunk and pending.stream is not None:
                revised = {**resource, "status": "amended"}
                pending = application._prepare(pending.stream, revised, context, "update", None)
                count += 1
            if n % 37 == 0 and count < chunk and pending.stream is not None:
                pending.stream.retract(context.as_dict() | {"interaction": "delete"}, datetime.now(UTC))
                count += 1
            pendings.append(pending)
            n += 1
        application.commit(pendings)
        appended += count
        services.projector.catch_up()
        assert services.identity is not None
        services.identity.catch_up()
    return appended


def _differences(connection: psycopg.Connection, live: str, rebuilt: str, table: str) -> int:
    a, b, t = sql.Identifier(live), sql.Identifier(rebuilt), sql.Identifier(table)
    query = sql.SQL(
        "SELECT (SELECT count(*) FROM (SELECT * FROM {a}.{t} EXCEPT ALL SELECT * FROM {b}.{t}) x)"
        " + (SELECT count(*) FROM (SELECT * FROM {b}.{t} EXCEPT ALL SELECT * FROM {a}.{t}) y)"
    ).format(a=a, b=b, t=t)
    # A check over a million rows both ways, not a request: the server's statement timeout does not apply.
    connection.execute("SET statement_timeout = 0")
    row = connection.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def test_rebuild_of_many_events_equals_the_live_views(postgres_settings: Settings, tmp_path: Path) -> None:
    settings = postgres_settings.model_copy(update={"data_dir": tmp_path / "ehr-data"})
    services = Services.open(settings, follow=False)
    try:
        started = time.perf_counter()
        appended = _append(services, EVENTS)
        print(f"\nappended and projected live: {appended:,} events in {time.perf_counter() - started:.0f} s")
        head = services.application.recorder.max_notification_id() or 0
        assert appended >= EVENTS and head >= EVENTS
        assert services.identity is not None
        for projector in (services.projector, services.identity):
            # The first half of ``ehr rebuild``: the whole log replayed beside the live tables.
            began = time.perf_counter()
            shadow = build_beside(settings, projector)
            try:
                seconds = time.perf_counter() - began
                position = shadow.projector.position
                print(f"rebuilt {projector.name}: {position:,} events in {seconds:.0f} s ({position / seconds:,.0f}/s)")
                assert position == projector.current_position() == head
                with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
                    for table in projector.tables:
                        assert _differences(connection, settings.postgres_schema, shadow.location, table) == 0, table
            finally:
                drop_shadow(settings, shadow)
        with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
            counted = connection.execute(
                sql.SQL("SELECT count(*) FROM {}.resource_history").format(sql.Identifier(settings.postgres_schema))
            ).fetchone()
            assert counted is not None and int(counted[0]) == appended
    finally:
        services.close()
