"""Rebuild figures: every projection rebuilt from zero over a real log, events/s, beside reading that log.

The log is the one the larger import wrote (Synthea: many resource types, the master patient index's
events). What is timed is what ``ehr rebuild`` runs with no names: ``projections.rebuild.rebuild`` over
the resources, master patient index and AuditEvent projectors, each replayed beside the live views into
a shadow schema and swapped in. events/s = the events in the logs (resource and audit) ÷ the wall time of
the whole rebuild (the resource log is replayed by two projectors: that is part of rebuilding "all").
The baseline is the floor of any rebuild: every notification read in batches of the projection batch
size and decoded (decrypted) into domain events, nothing written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bench.stats import Noise

__all__ = ["RebuildRun", "measure_rebuild"]


@dataclass
class RebuildRun:
    events: int
    seconds: float
    read_seconds: float
    #: Per projector: (name, events it replayed, seconds), as ``ehr rebuild`` reports them.
    projectors: list[tuple[str, int, float]] = field(default_factory=list)
    #: Other processes' CPU during the rebuild, % of one core (noise).
    other_cpu: float = float("nan")

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")

    @property
    def read_rate(self) -> float:
        return self.events / self.read_seconds if self.read_seconds > 0 else float("nan")


def _read_log(application: Any, batch: int) -> tuple[int, float]:
    """(events, seconds) to read and decode the whole log, as a projector would, writing nothing."""
    started = time.perf_counter()
    position, events = 0, 0
    while True:
        notifications = application.recorder.select_notifications(start=position + 1, limit=batch)
        if not notifications:
            return events, time.perf_counter() - started
        for notification in notifications:
            application.mapper.to_domain_event(notification)
        events += len(notifications)
        position = notifications[-1].id


def measure_rebuild(settings: Any) -> RebuildRun:
    from fhir_api.cli.rebuild import projectors_named
    from fhir_api.services import Services
    from projections.rebuild import rebuild

    services = Services.open(settings, follow=False)
    try:
        assert services.compliance is not None
        read_events, read_seconds = _read_log(services.application, settings.projection_batch_size)
        audit_events, audit_seconds = _read_log(services.compliance.audit_log, settings.projection_batch_size)
        started = time.perf_counter()
        with Noise.watch() as noise:
            done = rebuild(settings, projectors_named(services, []))
        seconds = time.perf_counter() - started
    finally:
        services.close()
    # Counted by reading, not from max(notification id): a rolled-back PostgreSQL transaction leaves gaps.
    return RebuildRun(
        read_events + audit_events,
        seconds,
        read_seconds + audit_seconds,
        [(item.name, item.events, item.seconds) for item in done],
        noise.percent,
    )
