"""Following the log: exactly-once, batched projection of events into views.

The tracking position and the view rows are written in one transaction, so a crash between them
is impossible: after a restart the projector resumes at the recorded position, no event applied
twice or skipped. The tracking row is locked for the whole batch (``FOR UPDATE`` on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite), so any number of threads or processes may call :meth:`catch_up`;
they take turns, and whoever comes second finds the work done.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import DataError as PersistenceDataError
from eventsourcing.persistence import IntegrityError as PersistenceIntegrityError
from eventsourcing.persistence import Notification, PersistenceError
from eventsourcing.persistence import OperationalError as PersistenceOperationalError

from ehr_core.errors import StoreUnavailable
from projections import metrics
from projections.changes import Change, change_from_event
from projections.db import Tx, ViewDatabase
from projections.privacy import erase, erasure_from_event
from projections.view import View

__all__ = [
    "Projector",
    "Retry",
    "create_quarantine_table",
    "projected_channel",
    "quarantine_counts",
    "quarantined_events",
    "tracking_position",
    "tracking_positions",
    "transient",
]

log = logging.getLogger(__name__)


def projected_channel(schema: str) -> str:
    """The PostgreSQL channel on which projectors announce new positions (``ehr project``).

    One per schema (a deployment), and a valid identifier whatever the schema's name.
    """
    return "ehr_projected_" + hashlib.sha256(schema.encode()).hexdigest()[:16]


Progress = Callable[[int, int], None]

#: Batches of at most this many notifications are applied in pipeline mode (see ``Tx.pipelined``).
_PIPELINED_UP_TO = 32


def create_quarantine_table(tx: Tx) -> None:
    tx.execute(
        "CREATE TABLE IF NOT EXISTS quarantined_events (projection TEXT NOT NULL, notification_id BIGINT NOT NULL, "
        "error TEXT NOT NULL, PRIMARY KEY (projection, notification_id))"
    )


class Retry(Exception):
    """A batch that must be applied again (e.g. it raced another writer): never a reason to quarantine."""


#: SQLSTATE classes of the database's state, not of an event: connection (08), transaction rollback
#: (40: serialization, deadlock), insufficient resources (53), lock not available (55P03), operator
#: intervention (57: statement timeout, shutdown), system error (58), idle-in-transaction timeout (25P03),
#: read_only_sql_transaction (25006: a database turned read-only, a standby or
#: ``default_transaction_read_only``, is writable again later; an event it refused is not a bad event).
_TRANSIENT_STATES = ("08", "40", "53", "55P03", "57", "58", "25P03", "25006")


def tracking_position(tx: Tx, name: str) -> int:
    """Where the projection ``name`` stands, as whichever process applied it last left it (0: never applied)."""
    row = tx.execute("SELECT position FROM projection_tracking WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def tracking_positions(tx: Tx) -> dict[str, int]:
    """Every tracking row: projection name (``name@store`` in a federation) to its position."""
    rows = tx.execute("SELECT name, position FROM projection_tracking").fetchall()
    return {str(name): int(position) for name, position in rows}


def quarantine_counts(tx: Tx) -> dict[str, int]:
    """How many events each projection quarantined (skipped because applying them failed)."""
    rows = tx.execute("SELECT projection, COUNT(*) FROM quarantined_events GROUP BY projection").fetchall()
    return {str(projection): int(count) for projection, count in rows}


def quarantined_events(tx: Tx) -> list[tuple[str, int, str]]:
    """(projection, notification id, error) of every quarantined event, oldest first."""
    rows = tx.execute(
        "SELECT projection, notification_id, error FROM quarantined_events ORDER BY notification_id"
    ).fetchall()
    return [(str(r[0]), int(r[1]), str(r[2])) for r in rows]


def transient(error: BaseException) -> bool:
    """Whether ``error`` says the database could not do the work now (retry later), not that an event is bad."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, Retry | TimeoutError | ConnectionError | sqlite3.OperationalError | StoreUnavailable):
            return True
        if isinstance(seen, PersistenceError | psycopg.Error) and not isinstance(
            seen, PersistenceIntegrityError | PersistenceDataError
        ):
            sqlstate = getattr(seen, "sqlstate", None)
            if isinstance(seen, psycopg.Error) and isinstance(sqlstate, str) and sqlstate:
                return sqlstate.startswith(_TRANSIENT_STATES)
            lost = isinstance(seen, psycopg.OperationalError | psycopg.InterfaceError | PersistenceOperationalError)
            if lost and seen.__cause__ is None:
                return True  # no answer from the server: a lost connection
        if type(seen).__name__ == "PoolTimeout":
            return True
        seen = seen.__cause__
    return False


class Projector:
    def __init__(
        self,
        application: Application[Any],
        database: ViewDatabase,
        views: Sequence[View],
        name: str = "resources",
        batch_size: int = 500,
    ) -> None:
        self.application = application
        self.database = database
        self.views = list(views)
        self.name = name
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._position = 0
        #: Called (with the new position) after each batch this process commits: what follows this projection
        #: in the same process (the subscriptions' matcher follows ``resources``) wakes on it instead of polling.
        self.on_applied: list[Callable[[int], None]] = []

    def create_tables(self) -> None:
        with self.database.write() as tx:
            tx.execute(
                "CREATE TABLE IF NOT EXISTS projection_tracking (name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
            )
            for view in self.views:
                view.create(tx, self.database.dialect)
            create_quarantine_table(tx)
            tx.execute(
                "INSERT INTO projection_tracking (name, position) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
                (self.name,),
            )

    @property
    def position(self) -> int:
        """The last notification id this process saw applied (cheap; may lag other processes)."""
        return self._position

    def current_position(self) -> int:
        with self.database.read_primary() as tx:
            return self._read_position(tx, lock=False)

    def _read_position(self, tx: Tx, *, lock: bool) -> int:
        suffix = " FOR UPDATE" if lock and self.database.dialect == "postgres" else ""
        row = tx.execute(f"SELECT position FROM projection_tracking WHERE name = ?{suffix}", (self.name,)).fetchone()
        return int(row[0]) if row else 0

    def catch_up(self, until: int | None = None, progress: Progress | None = None) -> int:
        """Apply every pending event (or at least up to ``until``); return the new position."""
        if until is not None and self._position >= until:
            return self._position
        with self._lock:
            # Another thread may have done the work while this one waited for the lock.
            if until is not None and self._position >= until:
                return self._position
            while True:
                applied = self._apply_batch(until)
                if progress is not None:
                    progress(self._position, applied)
                if applied == 0 or (until is not None and self._position >= until):
                    return self._position

    def catch_up_batch(self) -> int:
        """Apply at most one batch; return how many events it applied (0: none pending).

        ``ehr rebuild`` advances its shadows in turn, one batch each, so that those following the same log
        read and decode each batch once (``projections.replay``)."""
        with self._lock:
            return self._apply_batch(None)

    def catch_up_if_behind(self) -> int:
        """Catch up only when the log holds more than this process has seen applied (a cheap check)."""
        latest = self.application.recorder.max_notification_id() or 0
        if latest > self._position:
            return self.catch_up(until=latest)
        return self._position

    def wait_until(self, notification_id: int) -> None:
        """Read-your-writes: return once ``notification_id`` is applied."""
        self.catch_up(until=notification_id)

    @property
    def tables(self) -> tuple[str, ...]:
        """Every table this projector writes (what ``ehr rebuild`` builds beside and swaps)."""
        return tuple(table for view in self.views for table in view.tables)

    @property
    def tracking_names(self) -> tuple[str, ...]:
        """The tracking rows this projector moves, in the order they are locked (``ehr rebuild`` swaps them)."""
        return (self.name,)

    def head(self) -> int:
        """How far the log it follows goes (a rebuild's progress bar measures against it)."""
        return self.application.recorder.max_notification_id() or 0

    @property
    def query_indexes(self) -> tuple[str, ...]:
        """Indexes no write of this projector reads (a rebuild creates them after loading)."""
        return tuple(index for view in self.views for index in view.query_indexes)

    def _apply_batch(self, until: int | None) -> int:
        """Apply the next batch; should it fail on an event, apply it event by event and quarantine the
        event(s) that fail (``quarantined_events``), so that one event no view can hold never blocks the
        log behind it (every later write waiting for its projection, a server that cannot start).

        Errors of the database's state (a lost connection, a timeout, a full disk, a lock not taken) are
        not the event's fault: they propagate, and the batch is applied again later, whole."""
        try:
            return self._apply_whole_batch(until)
        except Exception as error:
            if transient(error):
                raise
            if self.batch_size <= 1:
                return self._quarantine(error)
            log.warning("projection %r: a batch failed (%s); applying it event by event", self.name, error)
        size = self.batch_size
        applied = 0
        self.batch_size = 1  # each event in its own transaction: the failing one rolls back alone
        try:
            for _ in range(size):
                try:
                    done = self._apply_whole_batch(until)
                except Exception as error:
                    if transient(error):
                        raise
                    done = self._quarantine(error)
                applied += done
                if done == 0 or (until is not None and self._position >= until):
                    break
        finally:
            self.batch_size = size
        return applied

    def _quarantine(self, error: Exception) -> int:
        """Record the next notification as quarantined and move the tracking row past it (one transaction)."""
        with self.database.write() as tx:
            position = self._read_position(tx, lock=True)
            notifications = self._fetch(tx, position)[:1]
            if not notifications:
                self._position = position
                return 0
            failed = notifications[0].id
            create_quarantine_table(tx)
            tx.execute(
                "INSERT INTO quarantined_events (projection, notification_id, error) VALUES (?, ?, ?) "
                "ON CONFLICT (projection, notification_id) DO UPDATE SET error = excluded.error",
                (self.name, failed, f"{type(error).__name__}: {error}"[:2000]),
            )
            last = self._advance(tx, failed)
        self._position = last
        log.error("projection %r quarantined notification %s: %s", self.name, failed, error)
        return 1

    def quarantined(self) -> list[tuple[int, str]]:
        """(notification id, error) of each event this projection skipped, oldest first."""
        with self.database.read_primary() as tx:
            create_quarantine_table(tx)
            rows = tx.execute(
                "SELECT notification_id, error FROM quarantined_events WHERE projection = ? ORDER BY notification_id",
                (self.name,),
            ).fetchall()
        return [(int(row[0]), str(row[1])) for row in rows]

    def retry_quarantined(self) -> tuple[int, int]:
        """Apply each quarantined event again (after a fix); (applied, still failing).

        An applied event leaves the quarantine in the transaction that applies it; the tracking row stays
        where it is (it passed the event when it was quarantined)."""
        applied = failing = 0
        with self._lock:
            for notification_id, _ in self.quarantined():
                found = self.application.recorder.select_notifications(start=notification_id, limit=1)
                try:
                    with self.database.write() as tx:
                        if found and found[0].id == notification_id:
                            self.apply_notifications(tx, found)
                        tx.execute(
                            "DELETE FROM quarantined_events WHERE projection = ? AND notification_id = ?",
                            (self.name, notification_id),
                        )
                    applied += 1
                except Exception as error:
                    if transient(error):
                        raise
                    failing += 1
                    log.error("projection %r: notification %s still fails: %s", self.name, notification_id, error)
        return applied, failing

    def _apply_whole_batch(self, until: int | None) -> int:
        """One transaction: lock the tracking row, apply the next notifications, move the row."""
        started = time.perf_counter()
        with self.database.write() as tx:
            position, notifications = self._lock_and_fetch(tx, until)
            if until is not None and position >= until:
                self._moved_to(position)
                return 0
            if not notifications:
                self._moved_to(position)  # another process applied up to here
                return 0
            # A small batch (a request's own write) is many tiny statements: pipelined with the COMMIT. A large
            # one is COPY.
            small = len(notifications) <= _PIPELINED_UP_TO
            with tx.pipelined(commit=True) if small else nullcontext():
                last = self._advance(tx, self.apply_notifications(tx, notifications) or notifications[-1].id)
        metrics.applied(self.name, len(notifications), time.perf_counter() - started)
        self.database.batch_committed()
        self._moved_to(last)
        return len(notifications)

    def _moved_to(self, position: int) -> None:
        """Record that the views stand at ``position``; tell ``on_applied`` if they moved."""
        moved = position > self._position
        self._position = position
        if moved:
            for listener in self.on_applied:
                listener(position)

    #: The log's event table, schema-qualified, when it lives in the views' own PostgreSQL database (set by the
    #: deployment, ``fhir_api/bootstrap.py``): a batch then reads its events in the statement that locks its
    #: tracking row. None: the log is read through its recorder (SQLite, another database, a federation).
    log_table: str | None = None

    def _lock_and_fetch(self, tx: Tx, until: int | None) -> tuple[int, Sequence[Notification]]:
        """Lock the tracking row; its position and the next batch after it (none once past ``until``).

        Every create waits for a batch of each projection it needs (read-your-writes), and a batch holds its
        tracking row, so every create behind it waits for each of its round trips. Locking the row and then
        reading the log on the event store's connection were two of them, one after the other; with the log
        in the same database, one statement does both: the locked row's position (the latest, should the
        statement have waited for another batch's commit) bounds the read of the log's next events. Its
        snapshot may predate that wait: events committed meanwhile are the next batch's (the log commits
        its notification ids in order, so what it sees has no gaps)."""
        if self.log_table is None or self.database.dialect != "postgres" or not self._reads_own_log():
            position = self._read_position(tx, lock=True)
            if until is not None and position >= until:
                return position, ()
            return position, self._fetch(tx, position)
        bound = "" if until is None else " AND t.position < ?"
        rows = tx.execute(
            "WITH t AS (SELECT position FROM projection_tracking WHERE name = ? FOR UPDATE) "
            "SELECT t.position, e.notification_id, e.originator_id, e.originator_version, e.topic, e.state FROM t "
            f"LEFT JOIN LATERAL (SELECT * FROM {self.log_table} WHERE notification_id > t.position{bound} "
            "ORDER BY notification_id LIMIT ?) e ON TRUE ORDER BY e.notification_id",
            (self.name, *(() if until is None else (until,)), self.batch_size),
        ).fetchall()
        if not rows:
            return 0, ()  # no tracking row (never created): as _read_position reads it
        notifications = [
            Notification(id=row[1], originator_id=row[2], originator_version=row[3], topic=row[4], state=bytes(row[5]))
            for row in rows
            if row[1] is not None
        ]
        return int(rows[0][0]), notifications

    def _reads_own_log(self) -> bool:
        """Whether this projector reads the log as it is, where it is (no subclass renumbers or relocates it)."""
        cls = type(self)
        return cls._fetch is Projector._fetch and cls._read_position is Projector._read_position

    def _fetch(self, tx: Tx, position: int) -> Sequence[Notification]:
        """The next batch after ``position`` (a federation's projector renumbers what it reads)."""
        return self.application.recorder.select_notifications(start=position + 1, limit=self.batch_size)

    def _advance(self, tx: Tx, last: int) -> int:
        """Move the tracking row to ``last`` in the batch's transaction; return the position now applied."""
        tx.execute("UPDATE projection_tracking SET position = ? WHERE name = ?", (last, self.name))
        if self.announce_to is not None:
            # Delivered on commit: API processes waiting for this position (read-your-writes) wake up.
            tx.execute("SELECT pg_notify(?, ?)", (self.announce_to, f"{self.name}:{last}"))
        return last

    #: The channel to NOTIFY after each batch (PostgreSQL only; set by the deployment, see ``projected_channel``).
    announce_to: str | None = None

    def apply_notifications(self, tx: Tx, notifications: Sequence[Notification]) -> int | None:
        """Apply a batch in the caller's transaction (subclasses that follow other logs override this).

        Returns the notification id the tracking row moves to, when a subclass applied beyond the batch
        (None: the batch's last)."""
        mapper = self.application.mapper
        changes: list[Change] = []
        for notification in notifications:
            event = mapper.to_domain_event(notification)
            erasure = erasure_from_event(notification.id, event)  # A block or shredding
            if erasure is not None:
                for view in self.views:
                    view.apply(tx, changes)
                changes = []
                erase(tx, self.database.dialect, self.views, erasure)
                continue
            change = change_from_event(notification.id, event)
            if change is not None:
                changes.append(change)
        for view in self.views:
            view.apply(tx, changes)
        return None

    def beside(self, database: ViewDatabase) -> Projector:
        """A projector of the same kind and views over another database (``ehr rebuild``'s shadow)."""
        return Projector(self.application, database, [type(view)() for view in self.views], self.name, self.batch_size)

    def forget_position(self) -> None:
        """The tracking row was replaced under this projector (a rebuild's swap): read it again next time."""
        with self._lock:
            self._position = 0

    def reset(self) -> None:
        """Empty the views and rewind to zero (a rebuild in place; see ``ehr rebuild`` for beside-and-swap)."""
        with self._lock, self.database.write() as tx:
            for view in self.views:
                view.reset(tx)
            tx.execute("UPDATE projection_tracking SET position = 0 WHERE name = ?", (self.name,))
            self._position = 0

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        rows: dict[str, list[tuple[Any, ...]]] = {}
        with self.database.read() as tx:
            for view in self.views:
                rows.update(view.dump(tx))
        return rows

    def lag(self) -> int:
        """Events recorded but not yet projected."""
        latest = self.application.recorder.max_notification_id() or 0
        return max(0, latest - self.current_position())
