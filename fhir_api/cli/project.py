"""``ehr project``: the projection worker — applies the log to every view, apart from the API.

Run it beside API servers started with ``EHR_PROJECTION=worker``: they append and wait for its announcements
(read-your-writes), it applies. It follows the clinical log and the audit log (LISTEN on PostgreSQL, polling
on SQLite; the audit log's group commits are not announced, so they wait for the next poll or clinical write:
``ehr_core/pgstore.py``), in batches of ``EHR_PROJECTION_BATCH_SIZE`` notifications, each batch one
transaction with its tracking row; killed at any moment, it resumes at the recorded positions with no event
applied twice or skipped. Several workers may run at once: the tracking rows' locks make them take turns.

In a federation (``EHR_STORES``) it follows every institution's store on a thread of its own
(LISTEN on that store's server), with the national logs (MPI decisions, audit) on the main thread: a store
that goes down stops only its own thread's progress, which resumes where it stopped when the store returns.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any

import psycopg
from rich.console import Console

from ehr_core.errors import StoreUnavailable
from ehr_core.federation import StoreDown
from ehr_core.settings import Settings
from fhir_api.bootstrap import construct_store_ledger, open_services, start_deliverer
from fhir_api.search_registry import reindex_if_stale
from fhir_api.services import Services
from projections.ledger import Ledger
from projections.projector import Projector

__all__ = ["add_parser", "follow"]


def _channels(services: Services) -> list[str]:
    """The logs the main thread follows: one channel per distinct log (a store's, the audit log)."""
    recorders = {id(p.application.recorder): p.application.recorder for p in _projectors(services)}
    return [str(r.channel_name) for r in recorders.values() if hasattr(r, "channel_name")]


def _projectors(services: Services) -> list[Projector]:
    """What the main thread applies: every log of the one database (in a federation: the national logs)."""
    return list(services.main_projectors.values())


def _catch_up(services: Services) -> int:
    applied = 0
    for projector in _projectors(services):
        if services.deliverer is not None and projector is services.deliverer.matcher:
            continue  # matched on the delivery thread: the resource views never wait for the subscriptions
        if projector is services.compliance.audit_projector:
            # On demand, as in the API process (fhir_api/compliance.py): readers of AuditEvent catch the views
            # up first. Every read appends an audit entry; projecting each at once cost PostgreSQL as much
            # CPU per read again as the read itself, on the cores the reads share with it.
            continue
        before = projector.position
        applied += projector.catch_up() - before
    # Full ledger blocks are sealed as the log grows
    if services.federation is None:  # a federation's store ledgers are sealed by their StoreFollower
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


class StoreFollower(threading.Thread):
    """One institution's store into the national views — resources, identity, its ledger."""

    def __init__(self, services: Services, store: str, stop: threading.Event, poll_seconds: float = 0.5) -> None:
        super().__init__(name=f"ehr-store-{store}", daemon=True)
        self.services, self.store, self.stop, self.poll_seconds = services, store, stop, poll_seconds
        self.projectors: list[Projector] = []
        self.down: str | None = None
        self.head = 0  # the store's last notification id, as this thread last read it

    def run(self) -> None:
        conninfo = self.services.settings.for_store(self.store).postgres_conninfo()
        ledger: Ledger | None = None
        while not self.stop.is_set():
            try:
                if ledger is None:
                    self.projectors = self.services.store_projectors(self.store)
                    ledger = self._ledger()
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as connection:
                    channel = str(getattr(self.projectors[0].application.recorder, "channel_name", "ehr_events"))
                    connection.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
                    if self.down is not None:
                        print(f"ehr project: {self.store}'s store is back; catching up", flush=True)
                        self.down = None
                    while not self.stop.is_set():
                        self.head = self.projectors[0].application.recorder.max_notification_id() or 0
                        for projector in self.projectors:
                            projector.catch_up()
                        ledger.seal()
                        for _ in connection.notifies(timeout=self.poll_seconds, stop_after=1):
                            pass
            except (*StoreDown, StoreUnavailable) as error:
                if self.down is None and not self.stop.is_set():
                    self.down = str(error).strip().splitlines()[0][:160]
                    print(
                        f"ehr project: {self.store}'s store is unavailable ({self.down}); the other stores go on, "
                        "retrying every second",
                        flush=True,
                    )
                self.stop.wait(1.0)

    def _ledger(self) -> Ledger:
        return construct_store_ledger(self.services, self.store, self.projectors[0].application)


class _Reporter:
    """A line every few seconds: each projection's position, lag and rate (the worker's progress)."""

    def __init__(self, services: Services, console: Console, every: float, stores: list[StoreFollower]) -> None:
        self.services, self.console, self.every, self.stores = services, console, every, stores
        self.last = time.monotonic()
        self.positions: dict[str, int] = {}

    def __call__(self) -> None:
        now = time.monotonic()
        if self.every <= 0 or now - self.last < self.every:
            return
        parts = [f"{f.store} unavailable" for f in self.stores if f.down is not None]
        # A store's head is read by its own thread: asking here would stall on a store that just went down.
        heads = {p.name: f.head for f in self.stores if f.down is None for p in f.projectors}
        projectors = [*_projectors(self.services), *(p for f in self.stores if f.down is None for p in f.projectors)]
        for projector in projectors:
            head = heads.get(projector.name)
            if head is None:
                head = projector.application.recorder.max_notification_id() or 0
            head = max(head, projector.position)  # read before its last batch
            rate = (projector.position - self.positions.get(projector.name, 0)) / (now - self.last)
            self.positions[projector.name] = projector.position
            parts.append(
                f"{projector.name} {projector.position:,}/{head:,} (lag {head - projector.position:,}, {rate:,.0f}/s)"
            )
        self.console.print("ehr project: " + "; ".join(parts))
        self.last = now


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)
    # The worker itself projects: it opens the store as an inline projector whatever EHR_PROJECTION says.
    configured = Settings()
    settings = configured.model_copy(update={"projection": "inline"})
    if settings.federated:  # a thread per store, each with a views connection, and the national logs
        pool = max(settings.postgres_pool_size, len(settings.store_urls()) + 2)
        settings = settings.model_copy(update={"postgres_pool_size": pool})
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    if args.until_stdin_closes:
        # The worker of ``ehr serve`` (fhir_api/projection_process.py): the server says when to stop, by
        # closing this pipe (as the kernel does when the server dies), not Ctrl-C sent to the terminal's
        # process group, which the server handles first.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        threading.Thread(target=_stop_at_end_of_input, args=(stop,), name="ehr-parent-watch", daemon=True).start()
    try:
        services = open_services(settings, follow=False)
    except psycopg.OperationalError as error:
        console.print(f"ehr project: cannot reach the database ({str(error).strip()}); check EHR_DATABASE_URL")
        return 1
    where = f"PostgreSQL schema {settings.postgres_schema}" if settings.uses_postgres else str(settings.data_dir)
    if args.retry_quarantined:
        return _retry_quarantined(services, console)
    reindex_if_stale(services)  # the worker projects: the index follows this version's search registry
    stopping = "stops with the server" if args.until_stdin_closes else "Ctrl-C stops after the current batch"
    console.print(f"ehr project: applying the log to the views of {where}; {stopping}")
    stores = [
        StoreFollower(services, name, stop) for name in (services.federation.names if services.federation else [])
    ]
    for thread in stores:
        thread.start()
    if not configured.projects_inline:
        # The API processes leave projection to this worker: it matches and delivers the subscriptions too.
        start_deliverer(services)
    try:
        follow(services, stop, report=_Reporter(services, console, args.report_seconds, stores))
    finally:
        stop.set()
        for thread in stores:
            thread.join(timeout=10)
        services.close()
    console.print("ehr project: stopped")
    return 0


def _stop_at_end_of_input(stop: threading.Event) -> None:
    # The descriptor itself, not sys.stdin's buffer: a daemon thread blocked inside a buffered read holds its
    # lock, and the interpreter aborts (SIGABRT, "could not acquire lock ... at interpreter shutdown") when the
    # worker exits for another reason (the database unreachable) while this thread still waits.
    while os.read(sys.stdin.fileno(), 4096):
        pass
    stop.set()


def _retry_quarantined(services: Services, console: Console) -> int:
    """Apply the events a projection quarantined (after the fix that lets them apply); exit 1 if any still fails."""
    try:
        failing = 0
        for projector in _projectors(services):
            applied, still = projector.retry_quarantined()
            failing += still
            if applied or still:
                console.print(
                    f"ehr project: {projector.name}: {applied} quarantined events applied, {still} still fail"
                )
        console.print(f"ehr project: {failing} quarantined events still fail" if failing else "ehr project: none left")
        return 1 if failing else 0
    finally:
        services.close()


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "project",
        help="run the projection worker (pair with API servers started with EHR_PROJECTION=worker)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--report-seconds", type=float, default=5.0, help="progress line interval (0: none)")
    parser.add_argument(
        "--retry-quarantined",
        action="store_true",
        help="apply again the events a projection quarantined (skipped because they failed), then exit",
    )
    parser.add_argument(
        "--until-stdin-closes",
        action="store_true",
        help="stop (after the current batch) when standard input closes: how `ehr serve` runs its own worker",
    )
    parser.set_defaults(handler=run)
