"""What an audit group commit costs the reads that wait for it, by count.

Every read waits for its audit entry's commit (tests/e2e/test_audit_crash.py): the statements of a group
commit, the system calls that let go of the GIL on its way, and the wake-ups of the event loop when it is
over are paid on every read's wait. These count them on the real stores (PostgreSQL, SQLite) and a real
event loop.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from ehr_core.audit import AuditLog, AuditRecord, AuditWriter
from ehr_core.context import WriteContext
from ehr_core.schema import setup_lock
from ehr_core.settings import Settings
from tests.support.audit_entries import patient_read

ENTRIES = 20


class Counts:
    def __init__(self) -> None:
        self.statements: list[str] = []
        self.urandom = 0


@contextmanager
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counts]:
    """Statements this thread sends (psycopg's execute; SQLite's trace of the connections opened meanwhile)
    and ``os.urandom`` calls, each still made for real."""
    counts = Counts()
    thread = threading.get_ident()
    execute, executemany, urandom, connect = (
        psycopg.Cursor.execute,
        psycopg.Cursor.executemany,
        os.urandom,
        sqlite3.connect,
    )

    def counted_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == thread:
            counts.statements.append(query.as_string(self) if hasattr(query, "as_string") else str(query))
        return execute(self, query, *args, **kwargs)

    def counted_executemany(self: Any, query: Any, rows: Any, *args: Any, **kwargs: Any) -> Any:
        rows = list(rows)
        if threading.get_ident() == thread:
            counts.statements += [str(query)] * len(rows)
        return executemany(self, query, rows, *args, **kwargs)

    def counted_urandom(size: int) -> bytes:
        counts.urandom += 1
        return urandom(size)

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)
        connection.set_trace_callback(
            lambda s: counts.statements.append(s) if threading.get_ident() == thread else None
        )
        return connection

    monkeypatch.setattr(psycopg.Cursor, "execute", counted_execute)
    monkeypatch.setattr(psycopg.Cursor, "executemany", counted_executemany)
    monkeypatch.setattr(os, "urandom", counted_urandom)
    monkeypatch.setattr(sqlite3, "connect", traced)
    yield counts


def test_an_audit_group_commit_is_one_statement_and_no_system_randomness(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with setup_lock(settings):  # PostgreSQL: the schema
        pass
    with counting(monkeypatch) as counts:
        log = AuditLog(settings)  # SQLite: its connections are opened (and traced) from here on
        try:
            log.append([patient_read(0)])  # the first append may create what it appends with
            counts.statements.clear()
            counts.urandom = 0
            last = log.append([patient_read(n) for n in range(1, ENTRIES + 1)])
            statements = list(counts.statements)
            urandom = counts.urandom
            # Every entry stored, in order, each a record the AuditEvent views and the ledger read back.
            notifications = log.recorder.select_notifications(start=last - ENTRIES + 1, limit=ENTRIES + 5)
        finally:
            log.close()
    assert [n.id for n in notifications] == list(range(last - ENTRIES + 1, last + 1))
    paths = []
    for notification in notifications:
        event = log.mapper.to_domain_event(notification)
        assert isinstance(event, AuditRecord.Recorded)
        paths.append(event.entry["path"])
    assert paths == [f"/fhir/Patient/p{n}" for n in range(1, ENTRIES + 1)]
    if settings.uses_postgres:
        # One statement: the lock timeout, the table lock, the insert and the commit (the statement's own
        # transaction). Before: BEGIN, SET LOCAL, LOCK, NOTIFY, INSERT, COMMIT.
        assert len(statements) == 1, statements
    else:
        # BEGIN, one multi-row INSERT, COMMIT. Before: one INSERT per entry.
        inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
        assert len(inserts) == 1 and len(statements) <= 3, statements
    # Ids without ``os.urandom`` (a system call that lets go of the GIL, once per entry before).
    assert urandom == 0
    contexts = {WriteContext().request_id for _ in range(ENTRIES)}
    assert len(contexts) == ENTRIES and counts.urandom == urandom


def test_a_group_commit_wakes_the_event_loop_once(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries submitted from one event loop and committed together are settled by one loop callback
    (before: one ``call_soon_threadsafe``, a self-pipe write, per entry), and submitting them notifies the
    writer at most once (before: a ``queue.Queue`` put, its lock and a notify, per entry)."""
    with setup_lock(settings):  # PostgreSQL: the schema
        log = AuditLog(settings)
    writer = AuditWriter(log)
    loop = asyncio.new_event_loop()
    wakeups: list[threading.Thread] = []
    original = loop.call_soon_threadsafe

    def call_soon_threadsafe(callback: Any, *args: Any, **kwargs: Any) -> Any:
        wakeups.append(threading.current_thread())
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = call_soon_threadsafe  # type: ignore[method-assign]

    notifies: list[threading.Thread] = []
    notify = threading.Condition.notify  # ``notify_all`` calls it too

    def counted_notify(self: threading.Condition, n: int = 1) -> None:
        notifies.append(threading.current_thread())
        notify(self, n)

    async def reads() -> list[int]:
        # Queued before the writer starts, so that one commit takes them all.
        with monkeypatch.context() as patch:
            patch.setattr(threading.Condition, "notify", counted_notify)
            waiting = [writer.committed(patient_read(n)) for n in range(ENTRIES)]
        writer.start()
        return list(await asyncio.gather(*waiting))

    try:
        ids = loop.run_until_complete(reads())
        writer.flush()
    finally:
        writer.stop()
        loop.close()
        log.close()
    assert len(set(ids)) == 1  # one commit: every waiter gets its last notification id
    from_writer = [t for t in wakeups if t is writer]
    assert len(from_writer) == 1, len(from_writer)
    from_loop = [t for t in notifies if t is threading.main_thread()]  # the pool's own threads aside
    assert len(from_loop) <= 1, len(from_loop)
