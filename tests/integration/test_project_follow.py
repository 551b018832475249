"""``ehr project``'s loop (``follow``), the projection worker of ``ehr serve`` on PostgreSQL.

The AuditEvent views are projected on demand, by their readers, in the worker as in the API process: every
read appends an audit entry, and a batch of those views per audited read cost PostgreSQL as much again as
the read. The loop still applies the clinical log at once (read-your-writes).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ehr_core.context import WriteContext
from ehr_core.settings import Settings
from fhir_api.cli.project import follow
from fhir_api.services import Services
from tests.support.audit_entries import patient_read
from tests.support.waiting import wait_until

pytestmark = pytest.mark.postgres


def test_the_worker_leaves_the_audit_views_to_their_readers(postgres_settings: Settings, tmp_path: Path) -> None:
    settings = postgres_settings.model_copy(update={"data_dir": tmp_path / "ehr-data"})
    services = Services.open(settings, follow=False)
    stop = threading.Event()
    loop = threading.Thread(target=follow, args=(services, stop), kwargs={"poll_seconds": 0.1}, daemon=True)
    try:
        audit = services.compliance.audit_projector
        before = audit.position
        loop.start()
        last = max(services.compliance.audit_log.append([patient_read(n)]) for n in range(10))
        context = WriteContext(institution="IMSS", user="u1")
        written = services.application.create({"resourceType": "Organization", "name": "Clínica"}, context)
        clinical = written.notification_id
        assert clinical is not None
        wait_until(lambda: services.projector.position >= clinical, "the clinical write projected by the loop")
        stop.wait(0.5)  # several more rounds of the loop
        assert audit.position == before  # ten audit entries, no batch of the AuditEvent views
        services.compliance.audit_views_current()  # what a reader of AuditEvent does first
        assert audit.position >= last
    finally:
        stop.set()
        loop.join(timeout=30)
        services.close()
