"""Compliance services, opened beside the record (issue 6): the audit log, its views, and the ledgers.

- ``audit_log`` / ``audit_writer``: the separate append-only audit log and its group-commit writer;
- ``audit_projector``: AuditEvent views over the audit log (caught up after every audit commit);
- ``ledger`` / ``audit_ledger``: signed Merkle blocks over the clinical log and over the audit log;
- ``sealer``: seals partly filled blocks every ``EHR_LEDGER_SEAL_SECONDS``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.application import Application

from ehr_core.audit import AuditLog, AuditSettings, AuditWriter
from ehr_core.ledger import LedgerKey, LedgerSettings
from ehr_core.settings import Settings
from projections.audit import AuditProjector
from projections.db import ViewDatabase
from projections.follower import LogFollower
from projections.ledger import Ledger, LedgerSealer

__all__ = ["Compliance"]

log = logging.getLogger(__name__)


@dataclass
class Compliance:
    audit_log: AuditLog
    audit_writer: AuditWriter
    audit_projector: AuditProjector
    ledger: Ledger
    audit_ledger: Ledger
    key: LedgerKey
    #: False only when ``EHR_AUDIT_ENABLED=false`` (benchmarks): the middleware then records nothing.
    audit_enabled: bool = True
    threads: list[Any] = field(default_factory=list)

    @classmethod
    def open(cls, settings: Settings, application: Application[Any], views: ViewDatabase, follow: bool) -> Compliance:
        ledger_settings = LedgerSettings()
        key = LedgerKey.configured(settings.data_dir, ledger_settings)
        audit_log = AuditLog(settings)
        projector = AuditProjector(audit_log, views, [], name="audit", batch_size=settings.projection_batch_size)
        projector.create_tables()
        projector.catch_up()
        ledger = Ledger(application, views, key, "ledger", ledger_settings.block_size)
        ledger.create_tables()
        audit_ledger = Ledger(audit_log, views, key, "audit_ledger", ledger_settings.block_size)
        audit_ledger.create_tables()
        # Audit entries are projected off the request path, in batches: requests wait for the audit
        # commit only; readers of AuditEvent catch the views up first (read-your-audits).
        updater = _Updater(projector)
        writer = AuditWriter(audit_log, on_commit=lambda _last: updater.wake())
        writer.start()
        compliance = cls(audit_log, writer, projector, ledger, audit_ledger, key, AuditSettings().enabled)
        compliance.threads.append(updater)
        if follow:
            if ledger_settings.seal_seconds > 0:
                compliance.threads.append(LedgerSealer([ledger, audit_ledger], ledger_settings.seal_seconds))
            if settings.uses_postgres:
                channel = getattr(audit_log.recorder, "channel_name", "audit_events")
                compliance.threads.append(LogFollower([projector], settings.postgres_conninfo(), channel))
        for thread in compliance.threads:
            thread.start()
        return compliance

    def audit_views_current(self) -> None:
        """Bring the AuditEvent views up to every committed audit entry."""
        self.audit_projector.catch_up()

    def close(self) -> None:
        self.audit_writer.stop()
        for thread in self.threads:
            thread.stop()
        self.audit_log.close()


class _Updater(threading.Thread):
    """Catches the AuditEvent views up after audit commits, at most every ``pause`` seconds (batches)."""

    def __init__(self, projector: AuditProjector, pause: float = 0.5) -> None:
        super().__init__(name="ehr-audit-views", daemon=True)
        self.projector = projector
        self.pause = pause
        self._wake = threading.Event()
        self._stopping = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self.join(timeout=10)

    def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            try:
                self.projector.catch_up()
            except Exception:  # the views are rebuilt from the log; never let this thread die
                log.warning("audit views could not catch up; retrying", exc_info=True)
            self._stopping.wait(self.pause)
