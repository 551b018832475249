"""The "no event sourcing" alternative a user might pick: one plain PostgreSQL table of JSONB documents.

``(id text primary key, resource jsonb)`` with a GIN index on ``resource`` (what makes such a table
searchable at all), written and read by psycopg with the same Patients the HTTP figures send, at the same
concurrency (one connection per thread, autocommit: one round trip and one commit per create). No
history, no audit, no projections, no validation: what the event-sourced design is paid for is the gap.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from bench.payload import PatientFactory
from bench.stats import Measurement
from bench.threaded import run_threads

__all__ = ["JsonbTable"]

#: Far from the HTTP figures' persons, so both could even share a database without colliding.
FIRST_PERSON = 60_000


class JsonbTable:
    def __init__(self, conninfo: str, schema: str) -> None:
        self.conninfo = conninfo
        self.table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier("fhir_documents"))
        self.ids: list[str] = []
        self.patients = PatientFactory(FIRST_PERSON)
        self._seeds = iter(range(2000, 100_000))
        self._lock = threading.Lock()
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(
                sql.SQL("CREATE TABLE {} (id text PRIMARY KEY, resource jsonb NOT NULL)").format(self.table)
            )
            connection.execute(sql.SQL("CREATE INDEX ON {} USING gin (resource)").format(self.table))

    def _insert_worker(self) -> Any:
        statement = sql.SQL("INSERT INTO {} (id, resource) VALUES (%s, %s::jsonb)").format(self.table)

        @contextmanager
        def worker() -> Iterator[Callable[[], None]]:
            with psycopg.connect(self.conninfo, autocommit=True) as connection:

                def insert() -> None:
                    resource_id = str(uuid.uuid4())
                    connection.execute(statement, (resource_id, self.patients().decode()), prepare=True)
                    self.ids.append(resource_id)  # list.append is atomic

                yield insert

        return worker

    def _read_worker(self) -> Any:
        # As text: a plain-table server would hand the stored document back without parsing it.
        statement = sql.SQL("SELECT resource::text FROM {} WHERE id = %s").format(self.table)

        @contextmanager
        def worker() -> Iterator[Callable[[], None]]:
            with self._lock:
                chooser = random.Random(next(self._seeds))
            with psycopg.connect(self.conninfo, autocommit=True) as connection:

                def read() -> None:
                    row = connection.execute(statement, (chooser.choice(self.ids),), prepare=True).fetchone()
                    assert row is not None, "inserted document not found"

                yield read

        return worker

    def inserts(self, concurrency: int, seconds: float, warmup: float, count: int, min_seconds: float) -> Measurement:
        name = "jsonb table INSERT"
        return run_threads(name, "postgres", self._insert_worker(), concurrency, seconds, warmup, count, min_seconds)

    def reads(self, concurrency: int, seconds: float, warmup: float, count: int, min_seconds: float) -> Measurement:
        name = "jsonb table SELECT by id"
        return run_threads(name, "postgres", self._read_worker(), concurrency, seconds, warmup, count, min_seconds)
