"""The views' database: SQLite (embedded default) or PostgreSQL, behind one small interface.

Views write their SQL once with ``?`` placeholders; the PostgreSQL side rewrites them to ``%s``.
Each view owns its tables; nothing here knows any table.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal, Protocol

import psycopg

from ehr_core.files import private_sqlite
from projections.statistics import PlannerStatistics, analyze_changed_tables

__all__ = ["Dialect", "PostgresViews", "SQLiteViews", "Tx", "ViewDatabase"]

Dialect = Literal["sqlite", "postgres"]
Row = tuple[Any, ...]


class Tx(Protocol):
    """A cursor inside a transaction."""

    #: The database's SQL dialect, for the few statements written differently on each.
    dialect: Dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Tx: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Plain inserts of many rows (no conflict handling): COPY on PostgreSQL, one statement per row elsewhere."""

    def upsert(self, table: str, columns: Sequence[str], key: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert rows or replace those with the same ``key`` (the leading columns); the last row of a key wins."""

    def insert_new(self, table: str, columns: Sequence[str], key: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert the rows whose ``key`` (the leading columns) no row has yet; of rows sharing a key the first wins."""

    def delete_keys(self, table: str, key: Sequence[str], keys: Sequence[Sequence[Any]]) -> None:
        """Delete the rows whose ``key`` columns equal one of ``keys``."""

    def pipelined(self, commit: bool = False) -> AbstractContextManager[None]:
        """Statements inside go out without waiting for each answer (PostgreSQL); results are read at fetches.

        ``commit``: the transaction ends with the block, its COMMIT sent in the same pipeline (one round trip
        for the statements and the COMMIT, where the COMMIT would wait for one more on its own)."""

    def unprepared(self) -> Tx:
        """The same transaction, whose statements are never prepared (PostgreSQL): planned for their values
        each time, and no Parse round trip for a statement text seen once (a search's SQL has many shapes)."""

    def reusing_plans(self) -> Tx:
        """The same transaction, whose statements are prepared once a connection has run them a few times
        (PostgreSQL): their plan is then kept, for statements whose plan does not depend on their values."""

    def fetchone(self) -> Row | None: ...
    def fetchall(self) -> list[Row]: ...


class ViewDatabase(Protocol):
    dialect: Dialect

    def write(self) -> Any:
        """A context manager giving a :class:`Tx` that commits on exit (serialised writers)."""

    def read(self) -> Any:
        """A context manager giving a :class:`Tx` with a consistent snapshot for reads (maybe on a replica)."""

    def read_primary(self) -> Any:
        """Like :meth:`read`, always on the database the projectors write (their own positions, the ledger)."""

    def settle(self, positions: dict[str, int], timeout: float) -> bool:
        """Wait until :meth:`read` sees each tracking row at least at ``positions`` (a replica's lag)."""

    def batch_committed(self) -> None:
        """A projection batch committed: the planner's statistics of the tables may be due a refresh."""

    def close(self) -> None: ...


class _SQLiteTx:
    dialect: Dialect = "sqlite"

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._cursor = connection.cursor()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _SQLiteTx:
        self._cursor.execute(sql, params)
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(sql, rows)

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            marks = ", ".join("?" * len(columns))
            self._cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def upsert(self, table: str, columns: Sequence[str], key: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(_upsert_sql(table, tuple(columns), tuple(key), "?"), _last_per_key(rows, len(key)))

    def insert_new(self, table: str, columns: Sequence[str], key: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(_insert_new_sql(table, tuple(columns), tuple(key), "?"), rows)

    def delete_keys(self, table: str, key: Sequence[str], keys: Sequence[Sequence[Any]]) -> None:
        if keys:
            condition = " AND ".join(f"{column} = ?" for column in key)
            self._cursor.executemany(f"DELETE FROM {table} WHERE {condition}", keys)

    def pipelined(self, commit: bool = False) -> AbstractContextManager[None]:
        return nullcontext()  # in-process: there are no round trips to save (it commits when the block ends)

    def unprepared(self) -> _SQLiteTx:
        return self  # sqlite3 caches its statements itself; there is no generic plan to avoid

    def reusing_plans(self) -> _SQLiteTx:
        return self

    def fetchone(self) -> Row | None:
        row: Row | None = self._cursor.fetchone()
        return row

    def fetchall(self) -> list[Row]:
        return self._cursor.fetchall()


def sqlite_tx(connection: sqlite3.Connection) -> Tx:
    """A :class:`Tx` over a connection already in a transaction (``ehr rebuild``'s SQLite swap opens its own)."""
    return _SQLiteTx(connection)


class _ThreadConnection:
    """Holds one thread's connection in its ``threading.local``: freed when the thread ends."""

    __slots__ = ("__weakref__", "connection")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection


def _close_for_ended_thread(
    connections: list[sqlite3.Connection], lock: threading.RLock, connection: sqlite3.Connection
) -> None:
    with lock:
        if not any(c is connection for c in connections):
            return  # already closed by SQLiteViews.close
        connections[:] = [c for c in connections if c is not connection]
    connection.close()


#: Page cache a connection keeps between its transactions, in KiB (``PRAGMA cache_size=-N``). SQLite's default
#: is 2,000 KiB per connection; the server has a connection per request thread (up to 40), so under a load
#: that reads much (``$everything``, searches) the caches filled to 35 x 2 MiB = 70 MiB of the process, most of
#: its growth under the benchmark's load. They buy little: in WAL mode a connection drops its whole cache when
#: it begins a read after another connection committed (any write to the views), and the pages it would
#: re-read are in the operating system's file cache. What stays is the B-tree roots and inner pages.
CACHE_KIB = 512
#: Pages a transaction may hold in its cache before SQLite writes dirty ones to the WAL mid-transaction
#: (``PRAGMA cache_spill``; the threshold is the larger of this and ``cache_size``): SQLite's default for a
#: 2,000 KiB cache, so a projection batch writes as it did before the smaller cache above. The pages beyond
#: ``cache_size`` are freed when the transaction ends.
SPILL_PAGES = 483


class SQLiteViews:
    """Views in one SQLite file (WAL: readers never wait for the projection writer).

    One connection per thread, closed when its thread ends. The API's request threads live as long as the
    server (at most its pool's size); other thread pools (anyio's, for the few routes FastAPI hands off
    itself) end threads idle for 10 s and start new ones for the next burst: a connection kept open past
    its thread would hold its file handles and page cache (up to :data:`CACHE_KIB`) for the life of the
    process.
    """

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = private_sqlite(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        # Reentrant: a thread-local's holder can be freed (and its finalizer run) while this thread holds it.
        self._lock = threading.RLock()

    def _connection(self) -> sqlite3.Connection:
        holder: _ThreadConnection | None = getattr(self._local, "holder", None)
        if holder is None:
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            connection.execute("PRAGMA journal_mode=WAL")
            private_sqlite(self.path)  # the -wal and -shm files WAL mode just created
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=30000")
            connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            connection.execute(f"PRAGMA cache_spill={SPILL_PAGES}")
            holder = _ThreadConnection(connection)
            weakref.finalize(holder, _close_for_ended_thread, self._connections, self._lock, connection)
            self._local.holder = holder
            with self._lock:
                self._connections.append(connection)
        return holder.connection

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[Tx]:
        connection = self._connection()
        connection.execute(begin)
        try:
            yield _SQLiteTx(connection)
        except BaseException:
            if connection.in_transaction:  # SQLite may have rolled back already (a full disk, an I/O error)
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def write(self) -> Any:
        return self._transaction("BEGIN IMMEDIATE")

    def read(self) -> Any:
        return self._transaction("BEGIN")

    def read_primary(self) -> Any:
        return self.read()

    def settle(self, positions: dict[str, int], timeout: float) -> bool:
        return True  # one file: what is committed is what readers see

    def batch_committed(self) -> None:
        # SQLite 3.40's PRAGMA optimize analyses only the tables its own connection has queried, so a
        # background connection would do nothing, and the request threads' connections must not pay for it.
        return None

    def open_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def close(self) -> None:
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            connection.close()
        self._local = threading.local()


#: From this many rows, :meth:`_PostgresTx.insert` uses COPY (and ``upsert`` a staging table filled by COPY).
_COPY_FROM = 64
#: Parameters of one multi-row ``VALUES`` statement at most (the protocol allows 65,535).
_VALUES_PARAMETERS = 8_000


def _last_per_key(rows: Sequence[Sequence[Any]], width: int) -> list[Sequence[Any]]:
    # ON CONFLICT DO UPDATE may not touch one row twice in a statement: keep each key's last row.
    return list({tuple(row[:width]): row for row in rows}.values())


@lru_cache(maxsize=256)
def _upsert_sql(table: str, columns: tuple[str, ...], key: tuple[str, ...], mark: str) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(mark for _ in columns)}) "
        f"ON CONFLICT ({', '.join(key)}) {action}"
    )


@lru_cache(maxsize=64)  # the texts of the shapes seen most (a few KiB each; a batch's largest, tens)
def _value_marks(width: int, count: int) -> str:
    """``($1, $2), ($3, $4)`` for ``count`` rows of ``width`` columns: a multi-row ``VALUES`` list."""
    return ", ".join(
        "(" + ", ".join(f"${row * width + column}" for column in range(1, width + 1)) + ")" for row in range(count)
    )


@lru_cache(maxsize=64)
def _insert_new_sql(table: str, columns: tuple[str, ...], key: tuple[str, ...], mark: str) -> str:
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(mark for _ in columns)}) "
        f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
    )


@lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class _Opening:
    """A write transaction's BEGIN while not sent yet: it goes out with the transaction's first statement."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = True


class _PostgresTx:
    dialect: Dialect = "postgres"

    def __init__(self, cursor: Any, prepare: bool | None = True, opening: _Opening | None = None) -> None:
        self._cursor = cursor
        #: COPY cannot run in pipeline mode: inside :meth:`pipelined`, many rows go as pipelined INSERTs.
        self._in_pipeline = False
        #: Statements with parameters are prepared at once (True) or never (False, :meth:`unprepared`).
        self._prepare = prepare
        #: A write transaction's BEGIN, sent with its first statement (None: autocommit reads).
        self._opening = opening
        self._raw: Any = None

    def unprepared(self) -> _PostgresTx:
        return _PostgresTx(self._cursor, prepare=False, opening=self._opening)

    def reusing_plans(self) -> _PostgresTx:
        # None: psycopg prepares a statement on its fifth run on the connection (prepare_threshold).
        return _PostgresTx(self._cursor, prepare=None, opening=self._opening)

    def _begin(self) -> None:
        """Send the pending BEGIN: queued when in a pipeline, else on its own (before COPY or executemany,
        which cannot share a round trip with it)."""
        if self._opening is not None and self._opening.pending:
            self._opening.pending = False
            self._cursor.connection.execute("BEGIN", prepare=False)

    @contextmanager
    def pipelined(self, commit: bool = False) -> Iterator[None]:
        # A projection batch of a few events is ~20 small statements; one after another they cost a round
        # trip each, pipelined they cost about one (a create's latency is mostly round trips).
        connection = self._cursor.connection
        with connection.pipeline():
            self._begin()
            self._in_pipeline = True
            try:
                yield
            finally:
                self._in_pipeline = False
            if commit and self._opening is not None and not self._opening.pending:
                # Queued behind the statements and answered with them at the pipeline's one sync (``commit()``
                # would sync on its own); ``PostgresViews._transaction`` then finds the connection idle.
                connection.execute("COMMIT", prepare=False)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _PostgresTx:
        prepare = self._prepare if params else None
        if params and self._opening is not None and self._opening.pending and not self._in_pipeline:
            # BEGIN and the first statement (a projector's lock of its tracking row) in one round trip. Only
            # with parameters: a pipeline sends one statement per message, and a text without parameters
            # may hold several (it goes as a simple query after its own BEGIN).
            with self._cursor.connection.pipeline():
                self._begin()
                self._cursor.execute(_to_pyformat(sql), params, prepare=prepare)
            return self
        self._begin()
        self._cursor.execute(_to_pyformat(sql), params, prepare=prepare)
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._begin()
        self._cursor.executemany(_to_pyformat(sql), rows)

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        # COPY streams every row in one statement: a projection batch writes tens of thousands of index
        # rows, and executemany's one-statement-per-row pipeline cost ~20 us a row. A few rows go as one
        # multi-row INSERT (:meth:`_values`): COPY costs three round trips however small.
        self._begin()
        if len(rows) >= _COPY_FROM and not self._in_pipeline:
            with self._cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        elif rows:
            self._values(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ", len(columns), rows, "")

    def _values(self, head: str, width: int, rows: Sequence[Sequence[Any]], tail: str) -> None:
        """``head`` + one ``VALUES`` list of every row + ``tail``, as one statement per ``_VALUES_PARAMETERS``
        parameters. A projection batch of one create writes ~30 index rows to a few tables: one statement
        per table instead of one per row is fewer messages for the server and much less client CPU (each
        statement costs psycopg tens of microseconds). Not prepared: the row count changes the text.

        Written with PostgreSQL's own ``$n`` placeholders on a raw cursor: psycopg rewrites ``%s`` ones
        with a regular expression over the whole text, uncached past 4 KiB, which for a transaction
        Bundle's index rows (thousands of parameters) cost more than building the rows."""
        per_statement = max(1, _VALUES_PARAMETERS // width)
        raw = self._raw_cursor()
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            params = [value for row in chunk for value in row]
            raw.execute(head + _value_marks(width, len(chunk)) + tail, params, prepare=False)

    def _raw_cursor(self) -> Any:
        """A cursor of the same connection (so the same transaction and pipeline) taking ``$n`` placeholders."""
        if self._raw is None:
            from psycopg import RawCursor

            self._raw = RawCursor(self._cursor.connection)
        return self._raw

    def upsert(self, table: str, columns: Sequence[str], key: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        rows = _last_per_key(rows, len(key))
        self._begin()
        if len(rows) < _COPY_FROM or self._in_pipeline:
            if rows:
                upsert = _upsert_sql(table, tuple(columns), tuple(key), "%s")
                conflict = upsert[upsert.index(" ON CONFLICT") :]
                self._values(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ", len(columns), rows, conflict)
            return
        # Many rows: COPY them into a temporary twin of the table, then one INSERT … SELECT … ON CONFLICT.
        staging = f"staging_{table}"
        names = ", ".join(columns)
        self._cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with self._cursor.copy(f"COPY {staging} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        insert = _upsert_sql(table, tuple(columns), tuple(key), "%s")
        conflict = insert[insert.index(" ON CONFLICT") :]
        self._cursor.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {staging}{conflict}")
        self._cursor.execute(f"TRUNCATE {staging}")

    def insert_new(self, table: str, columns: Sequence[str], key: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        # One statement for the batch (a transaction Bundle's resources), not one per row: DO NOTHING may meet
        # the same key twice in one statement, the first row inserted standing.
        if rows:
            self._begin()
            head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
            self._values(head, len(columns), rows, f" ON CONFLICT ({', '.join(key)}) DO NOTHING")

    def delete_keys(self, table: str, key: Sequence[str], keys: Sequence[Sequence[Any]]) -> None:
        if not keys:
            return
        self._begin()
        if len(keys) < _COPY_FROM:
            condition = " AND ".join(f"{column} = %s" for column in key)
            self._cursor.executemany(f"DELETE FROM {table} WHERE {condition}", keys)
            return
        # One statement: the keys travel as one array per key column.
        arrays = ", ".join("%s::text[]" for _ in key)
        self._cursor.execute(
            f"DELETE FROM {table} WHERE ({', '.join(key)}) IN (SELECT * FROM unnest({arrays}))",
            [[str(k[i]) for k in keys] for i in range(len(key))],
        )

    def fetchone(self) -> Row | None:
        row: Row | None = self._cursor.fetchone()
        return row

    def fetchall(self) -> list[Row]:
        rows: list[Row] = self._cursor.fetchall()
        return rows


class PostgresViews:
    """Views in a PostgreSQL schema, through a connection pool."""

    dialect: Dialect = "postgres"

    def __init__(
        self,
        conninfo: str,
        schema: str = "public",
        pool_size: int = 10,
        replica_conninfo: str | None = None,
        auto_analyze: bool = False,
    ) -> None:
        self.conninfo = conninfo
        self.schema = schema
        #: ``auto_analyze``: the tables analysed as projections change them (``EHR_POSTGRES_AUTO_ANALYZE``),
        #: for servers whose autovacuum is off; off for the short-lived shadows and tools that analyse themselves.
        self.statistics = (
            PlannerStatistics(partial(analyze_changed_tables, conninfo, schema), schema) if auto_analyze else None
        )
        self._pool = self._open_pool(conninfo, pool_size)
        #: A streaming replica of this database that answers the queries (``EHR_VIEWS_REPLICA_URL``).
        self._replica = self._open_pool(replica_conninfo, pool_size) if replica_conninfo else None

    def _open_pool(self, conninfo: str, size: int) -> Any:
        from psycopg.conninfo import conninfo_to_dict
        from psycopg_pool import ConnectionPool

        # The conninfo's own options (statement and lock timeouts, see Settings.postgres_options) are kept.
        # No JIT: the access policy's per-row subqueries inflate a search's cost estimate past
        # jit_above_cost, and compiling them costs about a second (measured) for a query answered in
        # milliseconds; nothing the views run is long enough to gain from it. Set once per connection,
        # not SET and RESET around each query (two round trips each time).
        options = f"{conninfo_to_dict(conninfo).get('options') or ''} -c search_path={self.schema} -c jit=off".strip()
        return ConnectionPool(
            conninfo,
            min_size=1,
            max_size=size,
            kwargs={"options": options, "autocommit": True},
            open=True,
            # No health check on every checkout (a round trip each): a connection broken by a server
            # restart fails its request (503) and the pool discards it on return.
        )

    @contextmanager
    def _transaction(self) -> Iterator[Tx]:
        # The pool's connections are in autocommit: BEGIN is sent with the first statement instead of on
        # its own (a projector's batch begins by locking its tracking row: one round trip, not two), and a
        # transaction that sent nothing sends neither BEGIN nor COMMIT.
        with self._pool.connection() as connection, connection.cursor() as cursor:
            opening = _Opening()
            try:
                yield _PostgresTx(cursor, opening=opening)
            except BaseException:
                if not opening.pending and not connection.closed:
                    with suppress(psycopg.Error):  # a broken connection: the pool discards it
                        connection.rollback()
                raise
            if not opening.pending:
                connection.commit()

    @contextmanager
    def _autocommit(self, pool: Any) -> Iterator[Tx]:
        with pool.connection() as connection, connection.cursor() as cursor:
            yield _PostgresTx(cursor)

    def write(self) -> Any:
        return self._transaction()

    def read(self) -> Any:
        """Reads without BEGIN/COMMIT: a read by id is one round trip, not four.

        Each statement sees the latest committed state (READ COMMITTED). Pages stay consistent anyway,
        because paging cursors are notification ids, not offsets. With a replica, it answers them.
        """
        return self._autocommit(self._replica or self._pool)

    def read_primary(self) -> Any:
        return self._autocommit(self._pool)

    def settle(self, positions: dict[str, int], timeout: float) -> bool:
        """A standby cannot LISTEN: its replay is polled, every few milliseconds, until it caught up."""
        if self._replica is None or not positions:
            return True
        deadline = time.monotonic() + timeout
        names = list(positions)
        while True:
            with self._autocommit(self._replica) as tx:
                rows: dict[str, int] = dict(
                    tx.execute(
                        "SELECT name, position FROM projection_tracking WHERE name = ANY(?)", (names,)
                    ).fetchall()
                )
            if all(int(rows.get(name, 0)) >= position for name, position in positions.items()):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.003)

    def batch_committed(self) -> None:
        if self.statistics is not None:
            self.statistics.changed()

    def close(self) -> None:
        if self.statistics is not None:
            self.statistics.close()
        self._pool.close()
        if self._replica is not None:
            self._replica.close()
