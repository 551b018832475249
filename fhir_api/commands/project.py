"""``ehr project``: the projection worker (issue 8) — applies the log to every view, apart from the API.

Run it beside API servers started with ``EHR_PROJECTION=worker``: they append and wait for its
announcements (read-your-writes), it applies. It follows the clinical log and the audit log (LISTEN on
PostgreSQL, polling on SQLite), in batches of ``EHR_PROJECTION_BATCH_SIZE`` notifications, each batch one
transaction with its tracking row; killed at any moment, it resumes at the recorded positions with no event
applied twice or skipped. Several workers may run at once: the tracking rows' locks make them take turns.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import Any

import psycopg
from rich.console import Console

from ehr_core.settings import Settings
from fhir_api.services import Services
from projections.projector import Projector

__all__ = ["add_parser", "follow"]


def _channels(services: Services) -> list[str]:
    recorders = [services.application.recorder]
    if services.compliance is not None:
        recorders.append(services.compliance.audit_log.recorder)
    return [str(r.channel_name) for r in recorders if hasattr(r, "channel_name")]


def _projectors(services: Services) -> list[Projector]:
    found: list[Projector] = [services.projector]
    if services.identity is not None:
        found.append(services.identity)
    if services.compliance is not None:
        found.append(services.compliance.audit_projector)
    return found


def _catch_up(services: Services) -> int:
    applied = 0
    for projector in _projectors(services):
        before = projector.position
        applied += projector.catch_up() - before
    if services.compliance is not None:  # full ledger blocks are sealed as the log grows
        services.compliance.ledger.seal()
        services.compliance.audit_ledger.seal()
    return applied


def follow(services: Services, stop: threading.Event, poll_seconds: float = 0.5, report: Any = None) -> None:
    """Apply until ``stop`` is set; wake on the logs' notifications, or every ``poll_seconds``."""
    channels = _channels(services) if services.settings.uses_postgres else []
    while not stop.is_set():
        try:
            if not channels:
                while not stop.is_set():
                    if _catch_up(services) == 0:
                        stop.wait(min(poll_seconds, 0.1))
                    if report is not None:
                        report()
                return
            with psycopg.connect(services.settings.postgres_conninfo(), autocommit=True) as connection:
                for channel in channels:
                    connection.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
                while not stop.is_set():
                    _catch_up(services)
                    if report is not None:
                        report()
                    for _ in connection.notifies(timeout=poll_seconds, stop_after=1):
                        pass
        except psycopg.OperationalError as error:  # a database restart: keep trying, say so
            if not stop.is_set():
                print(f"ehr project: database unavailable ({str(error).strip()[:200]}); retrying", flush=True)
                stop.wait(1.0)


class _Reporter:
    """A line every few seconds: each projection's position, lag and rate (the worker's progress)."""

    def __init__(self, services: Services, console: Console, every: float) -> None:
        self.services, self.console, self.every = services, console, every
        self.last = time.monotonic()
        self.positions = {p.name: p.position for p in _projectors(services)}

    def __call__(self) -> None:
        now = time.monotonic()
        if self.every <= 0 or now - self.last < self.every:
            return
        parts = []
        for projector in _projectors(self.services):
            head = projector.application.recorder.max_notification_id() or 0
            rate = (projector.position - self.positions[projector.name]) / (now - self.last)
            self.positions[projector.name] = projector.position
            parts.append(
                f"{projector.name} {projector.position:,}/{head:,} (lag {head - projector.position:,}, {rate:,.0f}/s)"
            )
        self.console.print("ehr project: " + "; ".join(parts))
        self.last = now


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)
    # The worker itself projects: it opens the store as an inline projector whatever EHR_PROJECTION says.
    settings = Settings().model_copy(update={"projection": "inline"})
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    try:
        services = Services.open(settings, follow=False)
    except psycopg.OperationalError as error:
        console.print(f"ehr project: cannot reach the database ({str(error).strip()}); check EHR_DATABASE_URL")
        return 1
    where = f"PostgreSQL schema {settings.postgres_schema}" if settings.uses_postgres else str(settings.data_dir)
    console.print(f"ehr project: applying the log to the views of {where}; Ctrl-C stops after the current batch")
    try:
        follow(services, stop, report=_Reporter(services, console, args.report_seconds))
    finally:
        services.close()
    console.print("ehr project: stopped")
    return 0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "project",
        help="run the projection worker (pair with API servers started with EHR_PROJECTION=worker)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--report-seconds", type=float, default=5.0, help="progress line interval (0: none)")
    parser.set_defaults(handler=run)
