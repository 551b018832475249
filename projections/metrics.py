"""Projection metrics, in the Prometheus client's default registry: what ``/metrics`` serves.

Counters and histograms are updated by every projector as it applies batches; the positions and the lag
are read at scrape time by a collector the API registers (it knows the log head), so a scrape always sees
the database's truth rather than this process's last guess.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["applied"]

EVENTS = Counter("ehr_projection_events", "Notifications applied to the views, by projection", ["projection"])
BATCHES = Histogram(
    "ehr_projection_batch_seconds",
    "Time to apply one batch of notifications (one transaction), by projection",
    ["projection"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def applied(projection: str, events: int, seconds: float) -> None:
    EVENTS.labels(projection).inc(events)
    BATCHES.labels(projection).observe(seconds)
