"""The projections a deployment keeps, named once.

The server keeps them current (read-your-writes), ``ehr project`` applies them, ``ehr rebuild`` rebuilds
them and ``/metrics`` reports their lag: all four read this table, so a new projection (a full-text
index, a terminology store) is added here and built in ``fhir_api/bootstrap.py``, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NAMES", "PROJECTIONS", "REBUILT", "Projection", "log_of", "per_store"]


@dataclass(frozen=True)
class Projection:
    #: Its name: the tracking row (``name@store`` for one institution's part in a federation), ``ehr rebuild NAME``.
    name: str
    #: The log it follows: ``ehr`` (the clinical log) or ``audit`` (the separate audit log).
    log: str
    #: What it holds, for ``ehr rebuild --help``.
    summary: str
    #: In a federation, one projector per institution's store writes into the national views.
    per_store: bool
    #: Whether ``ehr rebuild`` replays it. A projection whose rows record what was done in the world (sent
    #: notifications) is not a view of the log that can be thrown away and derived again.
    rebuilt: bool = True


PROJECTIONS: tuple[Projection, ...] = (
    Projection(
        "resources",
        "ehr",
        "read, history, search, provenance, access (owners, consent and referral grants, denials), erasures",
        per_store=True,
    ),
    Projection("identity", "ehr", "the master patient index", per_store=True),
    Projection("audit", "audit", "the AuditEvent views", per_store=False),
    Projection("terminology", "ehr", "the CodeSystems, ValueSets, ConceptMaps of $expand...", per_store=True),
    Projection("break_glass", "audit", "the break-the-glass review list", per_store=False),
    # After ``resources``: the matcher searches the resource views and never runs ahead of them.
    # Not rebuilt: its outbox numbers the events each subscriber was or will be sent (SubscriptionStatus
    # event numbers, `$events`); replayed from zero it would notify every subscriber of the whole log again.
    Projection(
        "subscriptions", "ehr", "the subscriptions' matched events (their outbox)", per_store=False, rebuilt=False
    ),
)

NAMES: tuple[str, ...] = tuple(projection.name for projection in PROJECTIONS)
#: What ``ehr rebuild`` may replay (all of them when no name is given).
REBUILT: tuple[str, ...] = tuple(projection.name for projection in PROJECTIONS if projection.rebuilt)


def per_store() -> tuple[str, ...]:
    """The projections a federation keeps per institution's store, in registry order."""
    return tuple(projection.name for projection in PROJECTIONS if projection.per_store)


def log_of(tracking_name: str) -> str:
    """The log a tracking row follows (``resources@imss`` follows a clinical log); unknown rows: the clinical log."""
    base = tracking_name.split("@", 1)[0]
    return next((projection.log for projection in PROJECTIONS if projection.name == base), "ehr")
