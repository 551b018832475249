"""Compliance services, opened beside the record: the audit log, its views, and the ledgers.

- ``audit_log`` / ``audit_writer``: the separate append-only audit log and its group-commit writer;
- ``audit_projector``: AuditEvent views over the audit log (caught up on demand, by their readers);
- ``break_glass_review``: the break-the-glass review list, a projection of the audit log's break-the-glass
  events (brought up to each one before its access is answered: ``Services.wait_until_projected``);
- ``ledger`` / ``audit_ledger``: signed Merkle blocks over the clinical log and over the audit log;
- ``sealer``: seals partly filled blocks every ``EHR_LEDGER_SEAL_SECONDS``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.application import Application

from ehr_core.audit import AuditLog, AuditSettings, AuditWriter
from ehr_core.ledger import LedgerKey, LedgerSettings
from ehr_core.settings import Settings
from projections.access import BreakGlassReview
from projections.audit import AuditProjector
from projections.db import ViewDatabase
from projections.ledger import Ledger, LedgerSealer, witness_path
from projections.setup import audit_projector as audit_views_projector
from projections.setup import break_glass_projector

__all__ = ["Compliance"]

log = logging.getLogger(__name__)


@dataclass
class Compliance:
    audit_log: AuditLog
    audit_writer: AuditWriter
    audit_projector: AuditProjector
    break_glass_review: BreakGlassReview
    ledger: Ledger
    audit_ledger: Ledger
    key: LedgerKey
    #: False only when ``EHR_AUDIT_ENABLED=false`` (benchmarks): the middleware then records nothing.
    audit_enabled: bool = True
    threads: list[Any] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        settings: Settings,
        application: Application[Any],
        views: ViewDatabase,
        follow: bool,
        ledger_name: str = "ledger",
    ) -> Compliance:
        """``ledger_name``: the tables of the clinical log's ledger (one per institution's store)."""
        ledger_settings = LedgerSettings()
        key = LedgerKey.configured(settings.data_dir, ledger_settings)
        audit_log = AuditLog(settings)
        projector = audit_views_projector(audit_log, views, settings)
        projector.catch_up()
        review = break_glass_projector(audit_log, views, settings)
        review.catch_up()
        ledger = Ledger(
            application,
            views,
            key,
            ledger_name,
            ledger_settings.block_size,
            witness_path(settings, ledger_name),
        )
        ledger.create_tables()
        audit_ledger = Ledger(
            audit_log,
            views,
            key,
            "audit_ledger",
            ledger_settings.block_size,
            witness_path(settings, "audit_ledger"),
        )
        audit_ledger.create_tables()
        # The AuditEvent views are projected on demand, not per request: readers of AuditEvent and
        # ``ehr audit replay`` catch them up first (read-your-audits). A background projector thread
        # cost a third of the read throughput (GIL contention with the event loop), so there is none.
        audit_settings = AuditSettings()
        writer = AuditWriter(audit_log, probe_seconds=audit_settings.probe_seconds)
        writer.start()
        compliance = cls(audit_log, writer, projector, review, ledger, audit_ledger, key, audit_settings.enabled)
        if follow and ledger_settings.seal_seconds > 0:
            compliance.threads.append(LedgerSealer([ledger, audit_ledger], ledger_settings.seal_seconds))
        for thread in compliance.threads:
            thread.start()
        return compliance

    def audit_views_current(self) -> None:
        """Bring the AuditEvent views up to every audit entry submitted so far (read-your-audits)."""
        self.audit_writer.flush()
        position = self.audit_projector.catch_up()
        self.audit_projector.database.settle({self.audit_projector.name: position}, 30.0)  # A replica

    def close(self) -> None:
        self.audit_writer.stop()
        for thread in self.threads:
            thread.stop()
        self.audit_log.close()
