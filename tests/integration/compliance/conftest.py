"""Helpers for the compliance tests: run ``ehr`` in-process against a test's store, and reach its raw tables."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from ehr_core.settings import Settings
from fhir_api.cli import main

Cli = Callable[..., int]


@pytest.fixture
def ehr(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``ehr(*argv)``: the command line, configured (through the environment) for this test's store."""
    monkeypatch.setenv("EHR_DATA_DIR", str(settings.data_dir))
    if settings.uses_postgres:
        monkeypatch.setenv("EHR_DATABASE_URL", str(settings.database_url))
        monkeypatch.setenv("EHR_POSTGRES_SCHEMA", settings.postgres_schema)
    else:
        monkeypatch.delenv("EHR_DATABASE_URL", raising=False)

    def run(*argv: str) -> int:
        return main(list(argv))

    return run


class RawLog:
    """The clinical event table, bypassing the application: what an attacker with database access can do."""

    def __init__(self, settings: Settings) -> None:
        self.postgres = settings.uses_postgres
        if self.postgres:
            self.connection: Any = psycopg.connect(settings.postgres_conninfo(), autocommit=True)
            self.table = f'"{settings.postgres_schema}"."ehr_events"'
            self.nid = "notification_id"
        else:
            self.connection = sqlite3.connect(settings.data_dir / "events.sqlite", isolation_level=None)
            self.table = "stored_events"
            self.nid = "rowid"

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        statement = statement.replace("{t}", self.table).replace("{nid}", self.nid)
        if self.postgres:
            statement = statement.replace("?", "%s")
        cursor = self.connection.execute(statement, params)
        return list(cursor.fetchall()) if cursor.description else []

    def event(self, nid: int) -> tuple[str, int, str, bytes]:
        row = self.sql("SELECT originator_id, originator_version, topic, state FROM {t} WHERE {nid} = ?", (nid,))[0]
        return str(uuid.UUID(str(row[0]))), int(row[1]), str(row[2]), bytes(row[3])

    def flip_byte(self, nid: int, offset: int = 20) -> None:
        state = bytearray(self.event(nid)[3])
        state[offset] ^= 0x01
        self.sql("UPDATE {t} SET state = ? WHERE {nid} = ?", (bytes(state), nid))

    def delete(self, nid: int) -> None:
        self.sql("DELETE FROM {t} WHERE {nid} = ?", (nid,))

    def swap(self, a: int, b: int) -> None:
        self.sql("UPDATE {t} SET {nid} = -1 WHERE {nid} = ?", (a,))
        self.sql("UPDATE {t} SET {nid} = ? WHERE {nid} = ?", (a, b))
        self.sql("UPDATE {t} SET {nid} = ? WHERE {nid} = -1", (b,))

    def insert_after(self, nid: int, originator_id: str, state: bytes, topic: str) -> None:
        """Make room after ``nid`` (renumber what follows) and insert a forged event there, atomically."""
        if self.postgres:
            with self.connection.transaction():
                self.sql("LOCK TABLE {t} IN EXCLUSIVE MODE")
                self._shift_and_insert(nid, originator_id, state, topic)
                self.sql(f"SELECT setval('{self.table[:-1]}_notification_id_seq\"', (SELECT MAX({{nid}}) FROM {{t}}))")
        else:
            self.sql("BEGIN IMMEDIATE")
            self._shift_and_insert(nid, originator_id, state, topic)
            self.sql("COMMIT")

    def _shift_and_insert(self, nid: int, originator_id: str, state: bytes, topic: str) -> None:
        self.sql("UPDATE {t} SET {nid} = {nid} + 1000000 WHERE {nid} > ?", (nid,))
        self.sql("UPDATE {t} SET {nid} = {nid} - 999999 WHERE {nid} > 1000000", ())
        if self.postgres:
            self.sql(
                "INSERT INTO {t} (originator_id, originator_version, topic, state, notification_id) "
                "VALUES (?, 1, ?, ?, ?)",
                (originator_id, topic, state, nid + 1),
            )
        else:
            self.sql(
                "INSERT INTO {t} (rowid, originator_id, originator_version, topic, state) VALUES (?, ?, 1, ?, ?)",
                (nid + 1, uuid.UUID(originator_id).hex, topic, state),
            )

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def raw_log(settings: Settings) -> Iterator[RawLog]:
    log = RawLog(settings)
    yield log
    log.close()
