"""``ehr rebuild``: projections rebuilt from zero beside the live ones, then swapped in atomically.

Readers and the live projector keep using the current tables while a *shadow* projector of the same kind
replays the whole log into empty tables elsewhere: a schema ``<schema>__rebuild`` on PostgreSQL, a file
``views.rebuild.sqlite`` beside ``views.sqlite`` on SQLite. The swap takes the live tracking row's lock
(the live projector pauses; writers never do), applies what arrived meanwhile to the shadow, and replaces
the tables in one transaction: ``DROP`` + ``ALTER TABLE … SET SCHEMA`` on PostgreSQL, ``DELETE`` +
``INSERT … SELECT`` from the attached file on SQLite. A reader sees the old views or the new, never a mix;
a rebuild killed before the swap leaves the live views untouched.

Every projection asked for is built at once, in one shadow: the shadows take turns, a batch each, and those
following the same log share each batch read and decoded (``projections.replay``), so a log is decrypted
once per rebuild, not once per projector. A shadow's batches are larger than the live ones
(``REBUILD_BATCH_SIZE``). Then each is swapped in, one transaction each, in the order asked.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from ehr_core.settings import Settings
from projections.db import PostgresViews, SQLiteViews, ViewDatabase, sqlite_tx
from projections.projector import Projector
from projections.replay import SharedLog
from projections.view import View

__all__ = [
    "REBUILD_BATCH_SIZE",
    "Rebuilt",
    "Shadow",
    "build_all_beside",
    "build_beside",
    "drop_shadow",
    "rebuild",
    "swap",
]

#: Events per batch of a shadow (at least the live projector's). The live batch size bounds how long a
#: request waits for its own write to be projected; a shadow has no one waiting, and each batch costs a
#: transaction, a lock of its tracking row and a few statements per table (COPY: three round trips each)
#: whatever its length: ten times fewer batches are ten times fewer of those.
REBUILD_BATCH_SIZE = 5_000

#: Connections building the shadow's deferred indexes at once (:func:`_create_indexes`).
INDEX_BUILDERS = 2

#: ``progress(name, position, head)`` after each batch.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Rebuilt:
    name: str
    events: int
    #: Its own batches, last catch-up and swap (the readers' indexes, built once for all after the load, not).
    seconds: float
    tables: tuple[str, ...]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Shadow:
    """A projector built from zero beside a live one, not yet swapped in."""

    projector: Projector
    database: ViewDatabase
    #: Where its tables are: a PostgreSQL schema, or a SQLite file.
    location: str
    #: Time spent applying this shadow's batches (the shadows are built in turns).
    seconds: float = 0.0


def rebuild(settings: Settings, live: Sequence[Projector], progress: Progress | None = None) -> list[Rebuilt]:
    """Rebuild each projector in ``live`` beside itself, then swap each in (one transaction each).

    The shadows are built together: they advance in turn, a batch each, so that the projectors following
    the same log share each batch read and decoded (``projections.replay``). A rebuild stopped before a swap
    leaves that projection's live views untouched; each swap is whole or not at all, as before.
    """
    if not live:
        return []
    shadows = build_all_beside(settings, live, progress)
    try:
        done = []
        for projector, shadow in zip(live, shadows, strict=True):
            began = time.perf_counter()
            swap(settings, projector, shadow)
            seconds = shadow.seconds + time.perf_counter() - began
            done.append(Rebuilt(projector.name, shadow.projector.position, seconds, projector.tables))
    finally:
        drop_shadow(settings, shadows[0])
    return done


def build_beside(settings: Settings, live: Projector, progress: Progress | None = None) -> Shadow:
    """Replay the whole log into empty tables beside ``live``'s (the first half of a rebuild)."""
    return build_all_beside(settings, [live], progress)[0]


def build_all_beside(settings: Settings, lives: Sequence[Projector], progress: Progress | None = None) -> list[Shadow]:
    """Replay the whole log into empty tables beside each of ``lives`` (one shadow database for all)."""
    database = _open_shadow(settings)
    shadows: list[Shadow] = []
    try:
        shadows += [Shadow(live.beside(database), database, _location(settings)) for live in lives]
        shared: dict[int, SharedLog] = {}
        deferred: list[tuple[str, str]] = []
        heads = []
        for live, shadow in zip(lives, shadows, strict=True):
            shadow.projector.create_tables()
            _suspend_derived(shadow.projector)
            deferred += _defer_indexes(settings, live.query_indexes)
            heads.append(live.head())
            for member in _members(shadow.projector):
                member.batch_size = max(member.batch_size, REBUILD_BATCH_SIZE)
                log = shared.setdefault(id(member.application), SharedLog(member.application, member.batch_size))
                member.application = log  # type: ignore[assignment]
        _replay_in_turn(lives, shadows, heads, progress)
        for log in shared.values():
            log.stop_sharing()
        for live, shadow, head in zip(lives, shadows, heads, strict=True):
            began = time.perf_counter()
            # What the turns may not have seen (appended meanwhile), and what a projector does after its
            # batches (a federated identity's national decisions).
            shadow.projector.catch_up(progress=_ticker(progress, live.name, head))
            shadow.seconds += time.perf_counter() - began
        _create_indexes(settings, deferred)
        if settings.uses_postgres:  # the shadow's tables become the live ones as they are
            for shadow in shadows:
                _rebuild_derived(shadow.projector)
    except BaseException:
        database.close()
        _drop_shadow(settings)
        raise
    return shadows


def _views(projector: Projector) -> list[View]:
    """The views of ``projector`` (of every member of a federation's group), each once."""
    return list({id(view): view for member in _members(projector) for view in member.views}.values())


def _suspend_derived(projector: Projector) -> None:
    """What the views keep beside their rows, made once after the bulk load (:meth:`View.suspend_derived`).
    On SQLite the swap copies the rows and makes it there; the shadow's own is never read."""
    with projector.database.write() as tx:
        for view in _views(projector):
            view.suspend_derived(tx, projector.database.dialect)


def _rebuild_derived(projector: Projector) -> None:
    with projector.database.write() as tx:
        for view in _views(projector):
            view.rebuild_derived(tx, projector.database.dialect)


def _members(projector: Projector) -> list[Projector]:
    """The projectors that read a log: a federation's group is one per store."""
    members: list[Projector] | None = getattr(projector, "members", None)
    return list(members) if members is not None else [projector]


def _ticker(progress: Progress | None, name: str, head: int) -> Callable[[int, int], None]:
    def tick(position: int, _applied: int) -> None:
        if progress is not None:
            progress(name, position, max(head, position))

    return tick


def _replay_in_turn(
    lives: Sequence[Projector], shadows: Sequence[Shadow], heads: Sequence[int], progress: Progress | None
) -> None:
    """Each shadow applies one batch, then the next shadow the same batch (read and decoded once), until
    every one has found nothing more to apply."""
    turns = [
        (live.name, shadow, head, _members(shadow.projector))
        for live, shadow, head in zip(lives, shadows, heads, strict=True)
    ]
    pending = {id(member) for _, _, _, members in turns for member in members}
    while pending:
        for name, shadow, head, members in turns:
            for member in members:
                if id(member) not in pending:
                    continue
                began = time.perf_counter()
                applied = member.catch_up_batch()
                shadow.seconds += time.perf_counter() - began
                if applied == 0:
                    pending.discard(id(member))
            if progress is not None:
                position = sum(member.position for member in members)
                progress(name, position, max(head, position))


def swap(settings: Settings, live: Projector, shadow: Shadow) -> None:
    """Replace ``live``'s tables by the shadow's in one transaction (the second half of a rebuild)."""
    if settings.uses_postgres:
        _swap_postgres(settings, live, shadow.projector)
    else:
        _swap_sqlite(settings, live, shadow.projector)


def drop_shadow(settings: Settings, shadow: Shadow) -> None:
    shadow.database.close()
    _drop_shadow(settings)


def _location(settings: Settings) -> str:
    return _shadow_schema(settings) if settings.uses_postgres else str(_shadow_file(settings))


def _defer_indexes(settings: Settings, names: Sequence[str]) -> list[tuple[str, str]]:
    """Drop the shadow's reader-only indexes before the bulk load; return how to create them again: (its
    table, schema-qualified, its definition) each.

    Building an index once over loaded rows is several times cheaper than keeping it up to date row by
    row (PostgreSQL only: SQLite's file is rebuilt in one writer anyway).
    """
    if not settings.uses_postgres or not names:
        return []
    schema = _shadow_schema(settings)
    with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
        rows = connection.execute(
            "SELECT indexname, indexdef, format('%%I.%%I', schemaname, tablename) FROM pg_indexes "
            "WHERE schemaname = %s AND indexname = ANY(%s)",
            (schema, list(names)),
        ).fetchall()
        for name, _, _ in rows:
            connection.execute(sql.SQL("DROP INDEX {}.{}").format(sql.Identifier(schema), sql.Identifier(name)))
    return [(str(table), str(definition)) for _, definition, table in rows]


def _create_indexes(settings: Settings, definitions: Sequence[tuple[str, str]]) -> None:
    """Build the deferred indexes on :data:`INDEX_BUILDERS` connections side by side, the largest tables'
    first: PostgreSQL builds an index in one backend (its parallel workers help only large b-trees), and
    the views' indexes are on different tables, so two builds use the two cores a build alone leaves at one
    (measured on 9,397 events: the full-text GIN index 0.49 s, the token and string look-ups 0.20 and 0.17 s,
    a dozen more under 0.13 s each)."""
    if not definitions:
        return
    waiting = deque(_largest_first(settings, definitions))

    def build() -> None:
        with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
            connection.execute("SET maintenance_work_mem = '256MB'")
            # An operator's rebuild, not a request: an index over a national log's views takes longer than the
            # statement timeout that protects requests, and nothing waits on it but the rebuild itself.
            connection.execute("SET statement_timeout = 0")
            while True:
                try:
                    definition = waiting.popleft()
                except IndexError:
                    return
                connection.execute(definition)

    with ThreadPoolExecutor(INDEX_BUILDERS, thread_name_prefix="ehr-rebuild-index") as builders:
        for built in [builders.submit(build) for _ in range(INDEX_BUILDERS)]:
            built.result()


def _largest_first(settings: Settings, definitions: Sequence[tuple[str, str]]) -> list[str]:
    """The (table, definition) pairs' definitions, the largest table's first."""
    tables = sorted({table for table, _ in definitions})
    with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
        rows = connection.execute(
            "SELECT t, pg_relation_size(t::regclass) FROM unnest(%s::text[]) AS t", (tables,)
        ).fetchall()
    sizes = {str(table): int(size) for table, size in rows}
    return [definition for table, definition in sorted(definitions, key=lambda pair: -sizes[pair[0]])]


def _shadow_schema(settings: Settings) -> str:
    return f"{settings.postgres_schema}__rebuild"


def _shadow_file(settings: Settings) -> Path:
    return settings.data_dir / "views.rebuild.sqlite"


def _open_shadow(settings: Settings) -> ViewDatabase:
    if settings.uses_postgres:
        shadow = _shadow_schema(settings)
        with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
            connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(shadow)))
            connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(shadow)))
        return PostgresViews(settings.postgres_conninfo(), shadow, pool_size=2)
    path = _shadow_file(settings)
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    return SQLiteViews(path)


def _drop_shadow(settings: Settings) -> None:
    if settings.uses_postgres:
        with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(_shadow_schema(settings)))
            )
    else:
        path = _shadow_file(settings)
        for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)


def _swap_postgres(settings: Settings, live: Projector, shadow: Projector) -> None:
    schema, shadow_schema = sql.Identifier(settings.postgres_schema), sql.Identifier(_shadow_schema(settings))
    names = list(live.tracking_names)
    with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection, connection.transaction():
        # Holding the live rows pauses the live projector (it locks the same rows for each batch), in the
        # order it locks them.
        for name in names:
            connection.execute(
                sql.SQL("SELECT position FROM {}.projection_tracking WHERE name = %s FOR UPDATE").format(schema),
                (name,),
            )
        shadow.catch_up()  # what arrived while the shadow was being built
        for table in live.tables:
            identifier = sql.Identifier(table)
            connection.execute(sql.SQL("DROP TABLE IF EXISTS {}.{}").format(schema, identifier))
            connection.execute(sql.SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(shadow_schema, identifier, schema))
        connection.execute(
            sql.SQL(
                "UPDATE {}.projection_tracking l SET position = s.position FROM {}.projection_tracking s "
                "WHERE l.name = s.name AND l.name = ANY(%s)"
            ).format(schema, shadow_schema),
            (names,),
        )
    live.forget_position()


def _swap_sqlite(settings: Settings, live: Projector, shadow: Projector) -> None:
    # Rows are copied through Python rather than by ATTACH: BEGIN IMMEDIATE would reserve the attached
    # file too, and the shadow projector could then not write its last batch.
    connection = sqlite3.connect(settings.data_dir / "views.sqlite", isolation_level=None, timeout=60)
    source = sqlite3.connect(_shadow_file(settings), isolation_level=None, timeout=60)
    try:
        connection.execute("BEGIN IMMEDIATE")  # the live projector (and every view writer) waits
        try:
            shadow.catch_up()
            tx = sqlite_tx(connection)
            # What the views derive from their rows (FTS5's index) is made once from the copied rows, not
            # row by row as the copy's DELETE and INSERT would (View.suspend_derived).
            for view in _views(live):
                view.suspend_derived(tx, "sqlite")
            for table in live.tables:
                connection.execute(f"DELETE FROM {table}")
                rows = source.execute(f"SELECT * FROM {table}")
                marks = ", ".join("?" for _ in rows.description)
                while chunk := rows.fetchmany(10_000):
                    connection.executemany(f"INSERT INTO {table} VALUES ({marks})", chunk)
            for view in _views(live):
                view.rebuild_derived(tx, "sqlite")
            for name in live.tracking_names:
                found = source.execute("SELECT position FROM projection_tracking WHERE name = ?", (name,)).fetchone()
                position = int(found[0]) if found else 0
                connection.execute("UPDATE projection_tracking SET position = ? WHERE name = ?", (position, name))
        except BaseException:
            if connection.in_transaction:  # SQLite may have rolled back already (a full disk, an I/O error)
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    finally:
        source.close()
        connection.close()
    live.forget_position()
