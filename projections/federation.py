"""Every institution's log projected into one set of national views (DESIGN.md "Beyond one machine").

Each institution (IMSS, ISSSTE, IMSS-Bienestar) appends to its own event store, with its own ordering lock
and its own notification ids. The national views follow every store with one tracking row per store and
projection (``resources@IMSS``, ``identity@ISSSTE``), so a store that is down only stops its own row: the
others move on, and its row resumes where it stopped when the store returns.

Views that order by notification id (history paging, ``_since``, search keys, ``$everything`` pages) need
one order across stores. :class:`FederatedProjector` gives each event it applies the next *national
position*, under the lock of the national row (``resources``), and records the key it came from in
``federation_log`` (position -> store, notification id): the views are unchanged, their ids are national,
and any national row can be traced back to the one stored event it came from.

The master patient index decides across stores: :class:`FederatedIdentity` follows one store's Patient
records and appends its decisions (Person, Membership) to the *national* log, serialised with every other
store's identity batches by the lock of the national ``identity`` row, and applies them in the same
transaction (read-your-writes for links holds as on one store).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import Notification

from projections.db import Tx, ViewDatabase
from projections.identity import IdentityIndex, _DecisionsRaced
from projections.projector import Projector
from projections.view import View

__all__ = ["FederatedIdentity", "FederatedProjector", "StoreGroup", "origin_of", "tracking_name"]


def tracking_name(projection: str, store: str) -> str:
    """The tracking row of one projection of one institution's log."""
    return f"{projection}@{store}"


def _lock_row(tx: Tx, dialect: str, name: str) -> int:
    suffix = " FOR UPDATE" if dialect == "postgres" else ""
    row = tx.execute(f"SELECT position FROM projection_tracking WHERE name = ?{suffix}", (name,)).fetchone()
    return int(row[0]) if row else 0


class _ReadsStoreFirst(Projector):
    """A batch reads its store's notifications *before* taking the national row's lock.

    The national rows are shared by every store's batches: holding one while waiting on a store that has
    just gone down would stall every other store for the length of a connection timeout. So the store is
    read first, with no lock held, and the batch is applied under the lock only if no other process moved
    this store's row meanwhile (then the read is done again, under the lock: correct, merely slower).
    """

    _prefetched: tuple[int, Sequence[Notification]] | None = None

    def _apply_batch(self, until: int | None) -> int:
        position = self.current_position()
        if until is not None and position >= until:
            self._position = position
            return 0
        self._prefetched = (position, self.application.recorder.select_notifications(position + 1, self.batch_size))
        try:
            return super()._apply_batch(until)
        finally:
            self._prefetched = None

    def _read_store(self, tx: Tx, position: int) -> Sequence[Notification]:
        if self._prefetched is not None and self._prefetched[0] == position:
            return self._prefetched[1][: self.batch_size]  # smaller when a failed batch is applied event by event
        return super()._fetch(tx, position)


class FederatedProjector(_ReadsStoreFirst):
    """One institution's log into the national views: tracking row ``{name}@{store}``, national positions."""

    def __init__(
        self,
        store: str,
        application: Application[Any],
        database: ViewDatabase,
        views: Sequence[View],
        name: str = "resources",
        batch_size: int = 500,
    ) -> None:
        super().__init__(application, database, views, tracking_name(name, store), batch_size)
        self.store = store
        self.national = name
        self._national_head = 0
        self._store_last = 0

    def create_tables(self) -> None:
        super().create_tables()
        with self.database.write() as tx:
            tx.execute(
                """CREATE TABLE IF NOT EXISTS federation_log (
                    position BIGINT PRIMARY KEY,
                    store TEXT NOT NULL,
                    notification_id BIGINT NOT NULL,
                    UNIQUE (store, notification_id))"""
            )
            tx.execute(
                "INSERT INTO projection_tracking (name, position) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
                (self.national,),
            )

    @property
    def tables(self) -> tuple[str, ...]:
        return (*super().tables, "federation_log")

    @property
    def tracking_names(self) -> tuple[str, ...]:
        return (self.national, self.name)

    def beside(self, database: ViewDatabase) -> FederatedProjector:
        views = [type(view)() for view in self.views]
        return FederatedProjector(self.store, self.application, database, views, self.national, self.batch_size)

    def _read_position(self, tx: Tx, *, lock: bool) -> int:
        if lock:
            # Every store's batches take national positions from this one row: they are applied one at a
            # time, so positions are handed out in commit order and a history page never gains a row
            # below a cursor already given out.
            self._national_head = _lock_row(tx, self.database.dialect, self.national)
        return super()._read_position(tx, lock=False)

    def _fetch(self, tx: Tx, position: int) -> Sequence[Notification]:
        found = self._read_store(tx, position)
        if not found:
            return found
        head = self._national_head
        renumbered = [replace(n, id=head + offset) for offset, n in enumerate(found, 1)]
        tx.insert(
            "federation_log",
            ("position", "store", "notification_id"),
            [(national.id, self.store, n.id) for national, n in zip(renumbered, found, strict=True)],
        )
        self._store_last = found[-1].id
        return renumbered

    def _advance(self, tx: Tx, last: int) -> int:
        tx.execute("UPDATE projection_tracking SET position = ? WHERE name = ?", (last, self.national))
        return super()._advance(tx, self._store_last)


def origin_of(tx: Tx, positions: Sequence[int]) -> dict[int, tuple[str, int]]:
    """Which store and notification id each national position came from."""
    if not positions:
        return {}
    marks = ", ".join("?" for _ in positions)
    rows = tx.execute(
        f"SELECT position, store, notification_id FROM federation_log WHERE position IN ({marks})", list(positions)
    ).fetchall()
    return {int(r[0]): (str(r[1]), int(r[2])) for r in rows}


class FederatedIdentity(IdentityIndex, _ReadsStoreFirst):
    """The MPI over one institution's Patient records (row ``identity@{store}``), deciding on the national log.

    ``national`` is the index that follows the national log alone (row ``identity``): the decisions of data
    stewards (``$link``, ``$unlink``) and of every store's batches. Each batch here first brings the views up
    to that log, decides, appends, and applies its own decisions, all under the national row's lock.
    """

    def __init__(
        self,
        store: str,
        application: Application[UUID],
        national: IdentityIndex,
        batch_size: int = 500,
    ) -> None:
        super().__init__(
            application,
            national.database,
            batch_size,
            name=tracking_name("identity", store),
            decisions=national.application,
        )
        self.store = store
        self.national = national
        self._national_position = 0

    def create_tables(self) -> None:
        super().create_tables()
        self.national.create_tables()

    @property
    def tracking_names(self) -> tuple[str, ...]:
        return (self.national.name, self.name)

    def catch_up(self, until: int | None = None, progress: Any = None) -> int:
        position = super().catch_up(until, progress)
        self.national.catch_up()  # a steward's $link or $unlink, with no Patient of this store after it
        return position

    def beside(self, database: ViewDatabase) -> FederatedIdentity:
        national = IdentityIndex(self.national.application, database, self.national.batch_size)
        return FederatedIdentity(self.store, self.application, national, self.batch_size)

    def _read_position(self, tx: Tx, *, lock: bool) -> int:
        if lock:
            self._national_position = _lock_row(tx, self.database.dialect, self.national.name)
        return super()._read_position(tx, lock=False)

    def _fetch(self, tx: Tx, position: int) -> Sequence[Notification]:
        return self._read_store(tx, position)

    def apply_notifications(self, tx: Tx, notifications: Sequence[Notification]) -> int | None:
        self._apply_national(tx)  # what stewards and other stores decided first: candidates see their links
        if self._batched:
            self.mpi.begin()
        try:
            self._apply_notifications(tx, notifications)
        except BaseException:
            self.mpi.abandon()
            raise
        if self._batched and self.mpi.flush() is None:
            raise _DecisionsRaced
        self._apply_national(tx)  # this batch's own decisions: visible with the Patient that caused them
        return None

    def _apply_national(self, tx: Tx) -> None:
        log = self.national.application
        while True:
            found = log.recorder.select_notifications(start=self._national_position + 1, limit=self.batch_size)
            if not found:
                return
            for notification in found:
                self._apply(tx, log.mapper.to_domain_event(notification))
            self._national_position = found[-1].id
            tx.execute(
                "UPDATE projection_tracking SET position = ? WHERE name = ?",
                (self._national_position, self.national.name),
            )


class StoreGroup(Projector):
    """One national projection over every store (``ehr rebuild`` in a federation): its per-store projectors
    as one, so a rebuild builds them all beside the live views and swaps them in together."""

    def __init__(self, members: Sequence[Projector], name: str) -> None:
        super().__init__(members[0].application, members[0].database, [], name=name)
        self.members = list(members)

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(table for member in self.members for table in member.tables))

    @property
    def query_indexes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(index for member in self.members for index in member.query_indexes))

    @property
    def tracking_names(self) -> tuple[str, ...]:
        # National rows (no ``@``) first: every member's batch locks its national row before its own.
        names = dict.fromkeys(name for member in self.members for name in member.tracking_names)
        return tuple(sorted(names, key=lambda name: ("@" in name, name)))

    def head(self) -> int:
        return sum(member.head() for member in self.members)

    def create_tables(self) -> None:
        for member in self.members:
            member.create_tables()

    def catch_up(self, until: int | None = None, progress: Any = None) -> int:
        done = 0
        for member in self.members:
            start = done

            def tick(position: int, applied: int, start: int = start) -> None:
                if progress is not None:
                    progress(start + position, applied)

            done += member.catch_up(None, tick)
        self._position = done
        return done

    def beside(self, database: ViewDatabase) -> StoreGroup:
        return StoreGroup([member.beside(database) for member in self.members], self.name)

    def forget_position(self) -> None:
        for member in self.members:
            member.forget_position()
