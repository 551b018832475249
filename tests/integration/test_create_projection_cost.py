"""What making a Patient create visible costs (read-your-writes): the resource views and the master patient
index each apply it in one batch, side by side on PostgreSQL, and the index applies the decisions it
appended as it made them, not read back from the log it just wrote; on PostgreSQL each batch of the views is
two round trips (BEGIN with the lock of its tracking row and the log's next events, the statements with the
COMMIT) and a new patient's data key one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ehr_core.context import WriteContext
from ehr_core.demo.labelled import labelled_records
from ehr_core.demo.people import patient_resource
from ehr_core.settings import Settings
from fhir_api.services import Services
from tests.support.round_trips import counting_round_trips


@pytest.fixture
def unfollowed(settings: Settings) -> Iterator[Services]:
    """Services without the log follower: only the request's own catch-up applies the create."""
    services = Services.open(settings, follow=False)
    yield services
    services.close()


def _patient(family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Ana"]}], "birthDate": "1980-02-03"}


def test_a_patient_create_is_made_visible_reading_the_log_once_per_projection(
    unfollowed: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = unfollowed
    context = WriteContext(institution="IMSS", user="registro")
    services.wait_until_visible(services.application.create(_patient("Pérez"), context, "Patient"))
    recorder = services.application.recorder
    reads: list[int] = []
    select = recorder.select_notifications

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return select(*args, **kwargs)

    monkeypatch.setattr(recorder, "select_notifications", counted)
    batches: list[str] = []
    for projector in (services.projector, services.identity):

        def batch(
            tx: Any, until: int | None, projector: Any = projector, original: Any = projector._lock_and_fetch
        ) -> Any:
            batches.append(projector.name)
            return original(tx, until)

        monkeypatch.setattr(projector, "_lock_and_fetch", batch)
    written = services.application.create(_patient("Gómez"), context, "Patient")
    services.wait_until_visible(written)

    # One batch of the resource views, one of the index, each reading the log once (through the event
    # store, or in the statement that locks its tracking row when the log is in the views' database): not
    # a read-back of the index's own decisions, nor one more batch that finds nothing.
    assert sorted(batches) == ["identity", "resources"]
    assert len(reads) == (0 if services.projector.log_table is not None else 2)
    head = recorder.max_notification_id()
    assert services.identity.position == services.identity.current_position() == head  # its decisions applied
    with services.views.read() as tx:
        person = services.identity.person_of(tx, written.resource_id)
        assert person is not None
        links = services.identity.links(tx, person)
    assert [(link.record, link.method) for link in links] == [(written.resource_id, "enrolment")]


def _on_postgres(postgres_settings: Settings, tmp_path: Path) -> Services:
    services = Services.open(postgres_settings.model_copy(update={"data_dir": tmp_path / "ehr-data"}), follow=False)
    # The subscription delivery thread projects what the log held at its previous round: on a loaded
    # machine it could apply the write a test is about to project and count (then fewer round trips).
    if services.deliverer is not None:
        services.deliverer.stop()
    return services


@pytest.mark.postgres
def test_a_projection_batch_is_two_round_trips(postgres_settings: Settings, tmp_path: Path) -> None:
    services = _on_postgres(postgres_settings, tmp_path)
    try:
        context = WriteContext(institution="IMSS", user="registro")
        written = services.application.create({"resourceType": "Organization", "name": "Clínica"}, context)
        assert written.notification_id is not None
        with counting_round_trips() as round_trips:
            services.projector.catch_up(until=written.notification_id)
        # BEGIN with the lock of the tracking row and the log's next events (one statement), then the
        # statements with the COMMIT: the log read on the event store's connection was a third, in between.
        # At most, not exactly: on a loaded machine the pipeline's answers can arrive while it still waits to
        # send, in a wait to read or write, which is not counted as a new wait to read.
        assert round_trips.count <= 2
        with services.views.read() as tx:
            found = tx.execute(
                "SELECT version FROM resources WHERE resource_type = ? AND resource_id = ?",
                ("Organization", written.resource_id),
            ).fetchone()
        assert found is not None and found[0] == 1
    finally:
        services.close()


@pytest.mark.postgres
def test_a_new_patients_data_key_is_one_round_trip(postgres_settings: Settings, tmp_path: Path) -> None:
    services = _on_postgres(postgres_settings, tmp_path)
    try:
        keys = services.application.keys
        with counting_round_trips() as round_trips:
            keys.prepare({"p-new-1", "p-new-2"})
        assert round_trips.count == 1
        # The keys are stored: the row holds the key the cache serves.
        first = keys.for_compartment("p-new-1")
        row = keys.row("p-new-1")
        assert row is not None and row.key_id == first.key_id and row.status == "active"
        keys.prepare({"p-new-1"})  # cached: nothing to do
        assert keys.for_compartment("p-new-1").key_id == first.key_id
    finally:
        services.close()


@pytest.mark.postgres
def test_a_patient_create_waits_for_its_two_projections_side_by_side(
    postgres_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read-your-writes of a Patient waits for the resource views and the master patient index. Each batch
    # holds its own tracking row, and neither reads the other's views: run one after the other, a create
    # under load waited for two queues of batches, added up. Here the views' batch waits (a bounded time)
    # for the index's to start: only projections applied side by side get past that wait in time.
    services = _on_postgres(postgres_settings, tmp_path)
    try:
        context = WriteContext(institution="IMSS", user="registro")
        services.wait_until_visible(services.application.create(_patient("Pérez"), context, "Patient"))
        index_started = threading.Event()
        overlapped: list[bool] = []
        views_batch = services.projector._apply_whole_batch
        index_batch = services.identity._apply_whole_batch

        def views(until: int | None) -> int:
            overlapped.append(index_started.wait(timeout=10))
            return views_batch(until)

        def index(until: int | None) -> int:
            index_started.set()
            return index_batch(until)

        monkeypatch.setattr(services.projector, "_apply_whole_batch", views)
        monkeypatch.setattr(services.identity, "_apply_whole_batch", index)
        written = services.application.create(_patient("Gómez"), context, "Patient")
        services.wait_until_visible(written)

        assert overlapped == [True]
        # Both applied it before the answer: the record is readable and its person linked.
        with services.views.read() as tx:
            found = tx.execute(
                "SELECT version FROM resources WHERE resource_type = ? AND resource_id = ?",
                ("Patient", written.resource_id),
            ).fetchone()
            person = services.identity.person_of(tx, written.resource_id)
            assert person is not None
            links = services.identity.links(tx, person)
        assert found is not None and found[0] == 1
        assert [(link.record, link.method) for link in links] == [(written.resource_id, "enrolment")]
    finally:
        services.close()


def _people(count: int) -> list[dict[str, Any]]:
    """Distinct people (no two share a blocking key with the others' names), so each founds a person."""
    families = ["Pérez", "Gómez", "López", "Ruiz", "Díaz", "Mora", "Vega", "Soto"]
    return [
        {
            "resourceType": "Patient",
            "name": [{"family": families[n], "given": [f"Nombre{n}"]}],
            "birthDate": f"19{50 + n}-0{1 + n % 9}-1{n % 9}",
        }
        for n in range(count)
    ]


@pytest.mark.postgres
def test_the_index_reads_a_batchs_memberships_in_one_query(postgres_settings: Settings, tmp_path: Path) -> None:
    # Concurrent creates of Patients are projected by the master patient index in one batch, and each waits
    # for that batch (read-your-writes): reading every record's Membership stream on its own made the batch,
    # which holds the index's tracking row, one round trip longer per Patient.
    services = _on_postgres(postgres_settings, tmp_path)
    try:
        context = WriteContext(institution="IMSS", user="registro")
        written = [services.application.create(patient, context, "Patient") for patient in _people(6)]
        recorder = services.application.recorder
        per_stream: list[Any] = []
        select = recorder.select_events

        def counted(originator_id: Any, *args: Any, **kwargs: Any) -> Any:
            per_stream.append(originator_id)
            return select(originator_id, *args, **kwargs)

        recorder.select_events = counted  # type: ignore[method-assign]
        try:
            services.identity.catch_up(until=written[-1].notification_id)
        finally:
            del recorder.select_events
        assert per_stream == []
        with services.views.read() as tx:
            persons = [services.identity.person_of(tx, w.resource_id) for w in written]
            assert all(persons) and len(set(persons)) == len(written)  # each founded its own person, once
            for w, person in zip(written, persons, strict=True):
                assert person is not None
                links = services.identity.links(tx, person)
                assert [(link.record, link.method) for link in links] == [(w.resource_id, "enrolment")]
    finally:
        services.close()


def _index_state(services: Services) -> dict[str, Any]:
    """The index's links, review queue and each record's person, in a comparable order."""
    with services.views.read() as tx:
        return {
            "links": sorted(tx.execute("SELECT person_id, record_id, method, score FROM mpi_links").fetchall()),
            "review": sorted(tx.execute("SELECT record_id, person_id, score FROM mpi_review").fetchall()),
            "persons": sorted(tx.execute("SELECT record_id, person_id FROM mpi_records").fetchall()),
        }


def _index_of(settings: Settings, batched: bool) -> tuple[dict[str, Any], int]:
    """The index's links, review queue and persons after the same records (some of one person, so they
    link or are flagged within one batch), caught up in one batch or record by record; and the round
    trips of the index's work."""
    services = Services.open(settings, follow=False)
    try:
        records = labelled_records(people=18, seed=3)[:24]
        last = 0
        trips = 0
        for n, record in enumerate(records):
            context = WriteContext(institution=record.institution, user="registro")
            written = services.application.update("Patient", f"r{n}", patient_resource(record, f"r{n}"), context)
            assert written.notification_id is not None
            last = written.notification_id
            if not batched or n == 0:  # the first makes the system key the index's decisions are sealed with
                services.identity.catch_up(until=last)
        with counting_round_trips() as round_trips:
            services.identity.catch_up(until=last)
        trips = round_trips.count
        return _index_state(services), trips
    finally:
        services.close()


@pytest.mark.postgres
def test_a_batch_of_patients_is_matched_in_a_constant_number_of_round_trips(
    postgres_settings: Settings, sqlite_settings: Settings, tmp_path: Path
) -> None:
    # The batch that concurrent creates of Patients wait for reads every record's candidates in one
    # statement: its round trips no longer grow with the batch (two per Patient before, its candidates and
    # its Membership), and each record still meets the records decided before it in the same batch.
    settings = postgres_settings.model_copy(update={"data_dir": tmp_path / "ehr-data"})
    batched, trips = _index_of(settings, batched=True)
    assert trips <= 5  # the lock with the log, the memberships, the candidates, the decisions, the COMMIT
    assert any(method != "enrolment" for _, _, method, _ in batched["links"])  # records linked within the batch
    one_by_one, _ = _index_of(sqlite_settings, batched=False)
    assert batched == one_by_one


def test_concurrent_creates_are_each_projected_and_matched_once(settings: Settings, tmp_path: Path) -> None:
    # Concurrent creates share the group commit and the projection batches (the index's candidates and
    # memberships read for a whole batch): each is still stored, visible when answered, and founds its own
    # person exactly once.
    services = Services.open(settings.model_copy(update={"data_dir": tmp_path / "ehr-data"}), follow=False)
    try:
        context = WriteContext(institution="IMSS", user="registro")
        people = _people(8)

        def create(patient: dict[str, Any]) -> str:
            written = services.application.create(patient, context, "Patient")
            services.wait_until_visible(written)
            with services.views.read() as tx:  # read-your-writes: visible to its writer once answered
                assert services.identity.person_of(tx, written.resource_id) is not None
            return written.resource_id

        with ThreadPoolExecutor(max_workers=len(people)) as pool:
            ids = list(pool.map(create, people))
        with services.views.read() as tx:
            persons = [services.identity.person_of(tx, rid) for rid in ids]
            links = sorted(tx.execute("SELECT person_id, record_id, method FROM mpi_links").fetchall())
            stored = tx.execute("SELECT COUNT(*) FROM resources WHERE resource_type = 'Patient'").fetchone()
        assert stored is not None and stored[0] == len(ids)
        assert len(set(persons)) == len(ids)
        assert links == sorted((person, rid, "enrolment") for person, rid in zip(persons, ids, strict=True))
    finally:
        services.close()


def _index_with_a_steward_link(settings: Settings) -> tuple[dict[str, Any], int]:
    """The index after records written around a data steward's link (its Person events in the log between
    two runs of Patients), the last catch-up taking all of them in one batch; and that catch-up's round trips."""
    services = Services.open(settings, follow=False)
    try:
        records = labelled_records(people=18, seed=3)[:24]

        def write(n: int) -> int:
            record = records[n]
            context = WriteContext(institution=record.institution, user="registro")
            written = services.application.update("Patient", f"r{n}", patient_resource(record, f"r{n}"), context)
            assert written.notification_id is not None
            return written.notification_id

        for n in range(6):
            services.identity.catch_up(until=write(n))
        last = max(write(n) for n in range(6, 12))
        with services.views.read() as tx:
            person = services.identity.person_of(tx, "r1")
        assert person is not None
        services.identity.mpi.link("Patient/r0", person, by="steward")  # Person events after r11 in the log
        last = max(write(n) for n in range(12, len(records)))
        with counting_round_trips() as round_trips:
            services.identity.catch_up(until=last)
        return _index_state(services), round_trips.count
    finally:
        services.close()


@pytest.mark.postgres
def test_a_batch_with_a_stewards_link_reads_ahead_run_by_run(
    postgres_settings: Settings, sqlite_settings: Settings, tmp_path: Path
) -> None:
    # Under concurrent creates a batch also holds Person events (the decisions of the batch before, a data
    # steward's links): the Patients on either side of them are read ahead as a run each, not record by
    # record (17 Patients here: 17 more round trips that way), and each still meets what came before it.
    settings = postgres_settings.model_copy(update={"data_dir": tmp_path / "ehr-data"})
    batched, trips = _index_with_a_steward_link(settings)
    assert trips <= 8  # the lock with the log, the memberships, a run's candidates twice, the link, the decisions
    assert any(method == "manual" for _, _, method, _ in batched["links"])  # the steward's link is applied
    one_by_one, _ = _index_with_a_steward_link(sqlite_settings.model_copy(update={"data_dir": tmp_path / "lite"}))
    assert batched == one_by_one
