"""The PostgreSQL event store, as the eventsourcing library's factory builds it, with two changes.

``Settings.event_store_env`` names this module as ``PERSISTENCE_MODULE``, so the library builds
:class:`Factory`, whose application recorder is :class:`EventRecorder`:

- A small append (:data:`PIPELINED_UP_TO` bytes of state at most: a create's resource, the master patient
  index's decisions, a batch of audit entries) goes as one pipeline: BEGIN, the lock timeout, the table
  lock, the notify, the insert and COMMIT are sent together and answered together, one round trip. The
  event table's lock is then held only while the server runs them, never while a message crosses the
  network: every create appends at least three times (the resource, the index's decisions, its audit
  entry), every read and search once (its audit entry), and each append holds the lock every other
  writer queues for.
- A large append runs without psycopg's pipeline mode. With a parameter of several MB (one large
  resource, a ~6 MB event) the pipeline's sync waited forever on a result while the transaction already
  held the event table's lock, so every other write queued behind it, and SIGTERM could not end the
  thread. Reproduced with psycopg 3.3.9 / eventsourcing 9.5.6 (see psycopg#685 for the same deadlock);
  outside pipeline mode the same append takes a second. Its round trips are saved another way: BEGIN,
  the lock timeout, the table lock and the notify go as one simple-protocol query (no parameters, so
  several statements are allowed), then the insert, then COMMIT: three round trips instead of six.
- The audit log's appends (one group commit of audit entries, :meth:`EventRecorder.append_in_one_statement`)
  go as ONE statement: a function in the schema takes the lock timeout and the table lock and inserts the
  rows, and the statement's implicit transaction commits as it ends (the connection is in autocommit),
  durably, before its answer comes back. Every read waits for its audit entry's commit, so the six
  statements of the pipeline above (BEGIN, the lock timeout, the lock, the notify, the insert, COMMIT),
  each parsed, executed and answered by the server and handled by psycopg, were paid on every read's wait;
  one statement is one message each way. The function is created on first use.
- That append announces nothing (no ``NOTIFY``). Its followers need no prompt wake for it: the AuditEvent
  views are projected when read, and the projection worker seals the audit log's ledger at its next poll
  or on the next clinical write; a break-the-glass access, which the review list must show at once, is
  saved through :meth:`insert_events` and announced. Announced, every group commit woke the worker for a
  round of queries (every log it follows, the ledgers' positions): PostgreSQL's CPU per audited read at 32
  clients was 0.44-0.65 ms in five runs with the notify, 0.33-0.39 ms in three without.
- The append is not retried on a lost connection. The library retries ``insert_events`` up to ten times
  on any operational error, but an error after COMMIT was sent leaves the outcome unknown: the retry then
  hits the unique key of its own first attempt and the write was answered 409 "nothing was stored"
  although it had been. The caller (``RecordApplication.commit``) decides instead, by looking.

Every connection also carries server-side timeouts (statement, lock, idle in transaction) and TCP
keepalives with a user timeout (``Settings.postgres_options``, ``Settings.postgres_socket_params``), so a
stuck statement or a dead peer ends in an error the API maps to 503 instead of a request that never answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import Any, cast
from uuid import UUID

import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from psycopg.sql import SQL, Composed, Identifier

__all__ = ["PIPELINED_UP_TO", "EventRecorder", "Factory"]

#: SQLSTATE 42883 undefined_function: the one-statement append's function is not (or no longer) there.
_UNDEFINED_FUNCTION = "42883"

#: Appends of at most this many bytes of event state go as one pipeline (see the module's docstring): far
#: below the multi-MB parameters that hung in pipeline mode, and above a group commit of tens of creates.
PIPELINED_UP_TO = 128 * 1024

#: Environment keys this module reads beside the library's own (set by ``Settings.event_store_env``).
OPTIONS = "EHR_POSTGRES_OPTIONS"
SOCKET = ("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout")


class EventRecorder(PostgresApplicationRecorder):
    @property
    def _prelude(self) -> Composed:
        """BEGIN, the lock timeout, the ordering lock and the notify (the library's statements, in its
        order), as one query."""
        prelude: Composed | None = getattr(self, "_prelude_sql", None)
        if prelude is None:
            notify = SQL("NOTIFY {0}").format(Identifier(self.channel_name))
            prelude = SQL("; ").join([SQL("BEGIN"), *self.lock_table_statements, notify])
            self._prelude_sql = prelude
        return prelude

    @property
    def _insert_rows_sql(self) -> Composed:
        """The library's insert (``INSERT ... SELECT ... FROM unnest(...) RETURNING notification_id``, the ids in
        the order of the events), from one array per column instead of one array of its composite type."""
        statement: Composed | None = getattr(self, "_insert_rows_statement", None)
        if statement is None:
            statement = SQL(
                "INSERT INTO {schema}.{table} AS t (originator_id, originator_version, topic, state) "
                "SELECT * FROM unnest(%s::{id_type}[], %s::bigint[], %s::text[], %s::bytea[]) "
                "RETURNING notification_id"
            ).format(
                schema=Identifier(self.datastore.schema),
                table=Identifier(self.events_table_name),
                id_type=Identifier(self.datastore.originator_id_type),
            )
            self._insert_rows_statement = statement
        return statement

    def _insert_rows(self, curs: Any, stored_events: Sequence[StoredEvent]) -> None:
        # Sent in binary: an array of the composite type goes as text, which psycopg builds by escaping every
        # event's bytes with regular expressions in Python (measured: a third of the CPU of appending a batch
        # of audit entries); a bytea array in binary is the bytes themselves.
        columns = (
            [event.originator_id for event in stored_events],
            [event.originator_version for event in stored_events],
            [event.topic for event in stored_events],
            [event.state for event in stored_events],
        )
        curs.execute(self._insert_rows_sql, columns, binary=True)

    @property
    def _prelude_statements(self) -> list[SQL | Composed]:
        """The prelude's statements one by one (a pipeline sends each with the extended protocol, which
        takes one statement per message)."""
        statements: list[SQL | Composed] | None = getattr(self, "_prelude_list", None)
        if statements is None:
            notify = SQL("NOTIFY {0}").format(Identifier(self.channel_name))
            statements = [SQL("BEGIN"), *cast(list[Composed], self.lock_table_statements), notify]
            self._prelude_list = statements
        return statements

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        # No retry; one round trip when small, else no pipeline and three: see the module's docstring.
        if not stored_events:
            return []
        small = sum(len(event.state) for event in stored_events) <= PIPELINED_UP_TO
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            assert conn.autocommit  # the library's pool: BEGIN and COMMIT are ours
            try:
                if small:
                    with conn.pipeline(), conn.cursor() as control:
                        for statement in self._prelude_statements:
                            control.execute(statement, prepare=False)
                        self._insert_events(curs, stored_events, **kwargs)
                        self._insert_rows(curs, stored_events)
                        control.execute(SQL("COMMIT"), prepare=False)
                    # The pipeline's one sync brought every answer, the insert's notification ids among them.
                    return self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
                curs.execute(self._prelude, prepare=False)
                self._insert_events(curs, stored_events, **kwargs)
                self._insert_rows(curs, stored_events)
                notification_ids = self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
                curs.execute(SQL("COMMIT"), prepare=False)
            except BaseException:
                if not conn.closed:
                    with suppress(psycopg.Error):  # a broken connection: the pool discards it
                        conn.rollback()
                raise
            return notification_ids

    @property
    def _append_function(self) -> Composed:
        """The schema-qualified name of this table's one-statement append function."""
        return SQL("{0}.{1}").format(
            Identifier(self.datastore.schema), Identifier(f"ehr_append_quietly_{self.events_table_name}"[:63])
        )

    def _create_append_function(self) -> None:
        """``ehr_append_quietly_<table>(ids, versions, topics, states, lock_timeout)``: what the pipeline of
        :meth:`insert_events` does but the notify, in the caller's one statement. ``LOCK TABLE`` outside a
        transaction block is refused only as a top-level statement: inside the function it holds the lock
        until the statement's implicit transaction commits, so notification ids still commit in their order."""
        table = SQL("{0}.{1}").format(Identifier(self.datastore.schema), Identifier(self.events_table_name))
        body = SQL(
            "BEGIN "
            "PERFORM set_config('lock_timeout', lock_timeout, true); "
            "LOCK TABLE {table} IN EXCLUSIVE MODE; "
            "RETURN QUERY INSERT INTO {table} AS t (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(ids, versions, topics, states) RETURNING t.notification_id; "
            "END"
        ).format(table=table)
        statement = SQL(
            "CREATE OR REPLACE FUNCTION {function}(ids {id_type}[], versions bigint[], topics text[], "
            "states bytea[], lock_timeout text) RETURNS SETOF bigint LANGUAGE plpgsql AS {body}"
        ).format(
            function=self._append_function,
            id_type=Identifier(self.datastore.originator_id_type),
            body=body.as_string(None),
        )
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            # Server processes start together: CREATE OR REPLACE of one function by two sessions at once fails.
            curs.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"ehr_append {self.datastore.schema}",))
            curs.execute(statement)

    @property
    def _append_sql(self) -> Composed:
        statement: Composed | None = getattr(self, "_append_statement", None)
        if statement is None:
            statement = SQL(
                "SELECT * FROM {function}(%s::{id_type}[], %s::bigint[], %s::text[], %s::bytea[], %s::text)"
            ).format(function=self._append_function, id_type=Identifier(self.datastore.originator_id_type))
            self._append_statement = statement
        return statement

    def append_in_one_statement(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        """Append ``stored_events`` in one statement and its implicit transaction; their notification ids, in
        order. Committed (durably: ``synchronous_commit``) once this returns. See the module's docstring."""
        if not stored_events:
            return []
        params = (
            [event.originator_id for event in stored_events],
            [event.originator_version for event in stored_events],
            [event.topic for event in stored_events],
            [event.state for event in stored_events],
            f"{self.datastore.lock_timeout}s",
        )
        for attempt in (1, 2):
            with self.datastore.get_connection() as conn, conn.cursor() as curs:
                assert conn.autocommit  # the statement is its own transaction: answered means committed
                try:
                    curs.execute(self._append_sql, params, binary=True)
                    return [row[next(iter(row))] if isinstance(row, dict) else row[0] for row in curs.fetchall()]
                except psycopg.Error as error:
                    if attempt == 2 or error.sqlstate != _UNDEFINED_FUNCTION:
                        raise
            self._create_append_function()  # first use in this schema: nothing was appended
        raise AssertionError("unreachable")

    def select_streams(self, originator_ids: Sequence[UUID]) -> list[StoredEvent]:
        """Every event of several streams in one query (each stream's in version order): what the master
        patient index reads of a whole projection batch's records at once, instead of one round trip per
        record inside the batch's transaction (``MasterPatientIndex.preload``)."""
        if not originator_ids:
            return []
        statement = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {0}.{1} "
            "WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version"
        ).format(Identifier(self.datastore.schema), Identifier(self.events_table_name))
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, (list(originator_ids),))
            return [
                StoredEvent(
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in curs.fetchall()
            ]

    def notification_id_of(self, originator_id: UUID, originator_version: int) -> int | None:
        """The notification id of one stored event (None: not stored)."""
        statement = SQL("SELECT notification_id FROM {0}.{1} WHERE originator_id = %s AND originator_version = %s")
        query = statement.format(Identifier(self.datastore.schema), Identifier(self.events_table_name))
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(query, (originator_id, originator_version))
            row = curs.fetchone()
        return int(row["notification_id"]) if row else None


class Factory(PostgresFactory):
    application_recorder_class = EventRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        datastore = self.datastore
        # The pool opens on first use: every connection it makes carries the timeouts.
        kwargs = datastore.pool.kwargs
        assert isinstance(kwargs, dict)  # the library passes a dict (host, user, row factory...)
        kwargs.update(
            connect_timeout=int(self.env.get(self.POSTGRES_CONNECT_TIMEOUT) or 5),
            options=self.env.get(OPTIONS) or "",
            **{key: value for key in SOCKET if (value := self.env.get(f"EHR_POSTGRES_{key.upper()}"))},
        )
