"""The index follows the log exactly once in effect: a replay (crash before the tracking commit, or a
rebuild) appends no new decision and gives the same views; the decisions are events with who and how."""

from __future__ import annotations

from ehr_core.context import WriteContext
from ehr_core.demo.labelled import labelled_records
from ehr_core.demo.people import patient_resource
from ehr_core.identity.person import Person
from ehr_core.settings import Settings
from fhir_api.services import Services


def test_replaying_the_log_appends_nothing_and_rebuilds_the_same_views(settings: Settings) -> None:
    services = Services.open(settings, follow=False)
    try:
        for n, record in enumerate(labelled_records(people=60, seed=3)):
            context = WriteContext(institution=record.institution, user="registro")
            services.application.update("Patient", f"r{n}", patient_resource(record, f"r{n}"), context)
        identity = services.identity
        assert identity is not None
        identity.catch_up()
        before = identity.dump()
        last = services.application.recorder.max_notification_id()
        assert any(len(rows) for rows in before.values())

        identity.reset()  # as if every batch had crashed before its tracking commit
        identity.catch_up()
        assert services.application.recorder.max_notification_id() == last
        assert identity.dump() == before

        # Links are Person events carrying method, score and who decided.
        linked = [
            event
            for notification in services.application.recorder.select_notifications(start=1, limit=100_000)
            if isinstance(event := services.application.mapper.to_domain_event(notification), Person.Linked)
        ]
        assert linked
        assert all(event.by == "mpi" and event.method in ("curp", "fellegi-sunter") for event in linked)
        assert all(event.score > 0 for event in linked)
    finally:
        services.close()
