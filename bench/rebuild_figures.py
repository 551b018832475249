"""Rebuild figures: every projection rebuilt from zero over a real log, events/s, beside reading that log.

The log is the one the larger import wrote (Synthea: many resource types, the master patient index's
events). When ``projections.rebuild`` exists (``ehr rebuild``), its ``rebuild(settings)`` is what is
timed; until then each projector of the services (resources, master patient index, AuditEvent views) is
reset and caught up in turn, in place. The baseline is the floor of any rebuild: every notification read
in batches of the projection batch size and decoded (decrypted) into domain events, nothing written.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["RebuildRun", "measure_rebuild"]


@dataclass
class RebuildRun:
    events: int
    seconds: float
    how: str
    read_seconds: float

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
    from fhir_api.services import Services

    services = Services.open(settings, follow=False)
    try:
        assert services.compliance is not None and services.identity is not None
        audit = services.compliance.audit_log
        read_events, read_seconds = _read_log(services.application, settings.projection_batch_size)
        audit_events, audit_seconds = _read_log(audit, settings.projection_batch_size)
        if importlib.util.find_spec("projections.rebuild") is not None:
            module: Any = importlib.import_module("projections.rebuild")  # `ehr rebuild` (issue 8)
            how = "projections.rebuild.rebuild(settings)"
            started = time.perf_counter()
            module.rebuild(settings)
            seconds = time.perf_counter() - started
        else:
            how = "reset() + catch_up() of each projector (projections/rebuild.py not there yet)"
            projectors: list[Any] = [services.projector, services.identity, services.compliance.audit_projector]
            started = time.perf_counter()
            for projector in projectors:
                projector.reset()
                projector.catch_up()
            seconds = time.perf_counter() - started
    finally:
        services.close()
    # Counted by reading, not from max(notification id): a rolled-back PostgreSQL transaction leaves gaps.
    return RebuildRun(read_events + audit_events, seconds, how, read_seconds + audit_seconds)
