"""Ceilings (b): the same bytes into PostgreSQL with psycopg and nothing else.

The table has the event table's shape (primary key on stream and version, ``bigserial`` notification
id with a unique index) in a fresh schema. Three figures:

- single-row ``INSERT ... RETURNING notification_id``, one transaction each (autocommit: one round trip,
  one commit), one connection per thread: what one create costs the database at the least;
- ``SELECT state`` of the latest version of one stream by primary key: the least a read can cost;
- ``COPY ... FROM STDIN (FORMAT BINARY)`` in transactions of ``COPY_BATCH`` rows: the bulk-load ceiling.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg import sql

from bench.stats import CpuClock, Measurement
from bench.threaded import run_threads

__all__ = ["COPY_BATCH", "RawPostgres"]

COPY_BATCH = 1000

_DDL = """
CREATE TABLE {table} (
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    state bytea,
    notification_id bigserial,
    PRIMARY KEY (originator_id, originator_version));
CREATE UNIQUE INDEX ON {table} (notification_id ASC);
"""


class RawPostgres:
    def __init__(self, conninfo: str, schema: str, topic: str, state: bytes) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self.topic = topic
        self.state = state
        self.inserted: list[UUID] = []
        self._seeds = iter(range(1000, 100_000))
        self._lock = threading.Lock()
        with psycopg.connect(conninfo, autocommit=True) as connection:
            for name in ("raw_events", "copy_events"):
                connection.execute(sql.SQL(_DDL).format(table=self._table(name)))

    def _table(self, name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(name))

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.conninfo, autocommit=True) as connection:
            yield connection

    def _insert_worker(self) -> Any:
        statement = sql.SQL(
            "INSERT INTO {} (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s) RETURNING notification_id"
        ).format(self._table("raw_events"))

        @contextmanager
        def worker() -> Iterator[Callable[[], None]]:
            with self._connection() as connection:

                def insert() -> None:
                    originator = uuid4()
                    connection.execute(statement, (originator, 1, self.topic, self.state), prepare=True).fetchone()
                    self.inserted.append(originator)

                yield insert

        return worker

    def _read_worker(self) -> Any:
        statement = sql.SQL(
            "SELECT state FROM {} WHERE originator_id = %s ORDER BY originator_version DESC LIMIT 1"
        ).format(self._table("raw_events"))

        @contextmanager
        def worker() -> Iterator[Callable[[], None]]:
            with self._lock:
                chooser = random.Random(next(self._seeds))
            with self._connection() as connection:

                def read() -> None:
                    row = connection.execute(statement, (chooser.choice(self.inserted),), prepare=True).fetchone()
                    assert row is not None

                yield read

        return worker

    def inserts(self, concurrency: int, seconds: float, warmup: float, count: int, min_seconds: float) -> Measurement:
        worker = self._insert_worker()
        return run_threads("psycopg INSERT/tx", "postgres", worker, concurrency, seconds, warmup, count, min_seconds)

    def reads(self, concurrency: int, seconds: float, warmup: float, count: int, min_seconds: float) -> Measurement:
        worker = self._read_worker()
        name = "psycopg SELECT by PK"
        return run_threads(name, "postgres", worker, concurrency, seconds, warmup, count, min_seconds)

    def copy(self, seconds: float, count: int, min_seconds: float) -> Measurement:
        """COPY ``count`` rows (at most ``seconds``, at least ``min_seconds``), ``COPY_BATCH`` per transaction.

        One batch warms up first, not counted.
        """
        statement = sql.SQL(
            "COPY {} (originator_id, originator_version, topic, state) FROM STDIN (FORMAT BINARY)"
        ).format(self._table("copy_events"))

        def batch(connection: psycopg.Connection[Any], rows: int) -> None:
            with connection.transaction(), connection.cursor() as cursor, cursor.copy(statement) as copy:
                copy.set_types(["uuid", "int8", "text", "bytea"])
                for _ in range(rows):
                    copy.write_row((uuid4(), 1, self.topic, self.state))

        with self._connection() as connection:
            batch(connection, COPY_BATCH)  # warm-up, not counted
            clock = CpuClock()
            clock.start()
            began = time.perf_counter()
            deadline, minimum = began + seconds, began + min(min_seconds, seconds)
            copied, latencies = 0, []
            while time.perf_counter() < deadline and (copied < count or time.perf_counter() < minimum):
                rows = COPY_BATCH
                start = time.perf_counter()
                batch(connection, rows)
                latencies.append(time.perf_counter() - start)
                copied += rows
            elapsed = time.perf_counter() - began
        return Measurement(
            "psycopg COPY",
            "postgres",
            1,
            copied,
            elapsed,
            cpu=clock.stop(),
            notes={"batch_rows": COPY_BATCH, "batch_seconds": latencies},
        )
