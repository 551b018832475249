"""SQLiteViews' per-thread connections end with their threads (memory under sustained traffic)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
from pathlib import Path

import pytest

from projections.db import CACHE_KIB, SQLiteViews


def _read_once(views: SQLiteViews) -> None:
    with views.read() as tx:
        assert tx.execute("SELECT 1").fetchone() == (1,)


def test_a_connection_is_closed_when_its_thread_ends(tmp_path: Path) -> None:
    views = SQLiteViews(tmp_path / "views.sqlite")
    _read_once(views)  # this thread's connection stays
    # anyio's worker threads end after 10 s idle and new ones start: twenty generations of them.
    for _ in range(20):
        threads = [threading.Thread(target=_read_once, args=(views,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    gc.collect()
    assert views.open_connections() == 1
    _read_once(views)
    views.close()
    assert views.open_connections() == 0


def test_a_thread_keeps_its_connection_between_transactions(tmp_path: Path) -> None:
    views = SQLiteViews(tmp_path / "views.sqlite")
    with views.write() as tx:
        tx.execute("CREATE TABLE t (x INTEGER)")
    for n in range(5):
        with views.write() as tx:
            tx.execute("INSERT INTO t VALUES (?)", (n,))
    with views.read() as tx:
        assert tx.execute("SELECT count(*) FROM t").fetchone() == (5,)
    assert views.open_connections() == 1
    views.close()


def _sqlite_memory_used() -> int:
    """Bytes SQLite holds in this process (``sqlite3_memory_used``): page caches, schemas, statements."""
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        pytest.skip("no shared libsqlite3 to ask")
    used = ctypes.CDLL(name).sqlite3_memory_used
    used.restype = ctypes.c_int64
    return int(used())


def test_a_connection_keeps_a_bounded_page_cache_between_transactions(tmp_path: Path) -> None:
    views = SQLiteViews(tmp_path / "views.sqlite")
    with views.write() as tx:  # 4 MiB of rows: a full scan passes twice SQLite's default 2 MiB cache
        tx.execute("CREATE TABLE t (x BLOB)")
        tx.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000) "
            "INSERT INTO t SELECT randomblob(1000) FROM n"
        )
    readers = 8  # a worker thread each, as the server's anyio pool has
    scanned = threading.Barrier(readers + 1)
    measured = threading.Event()

    def scan_then_wait() -> None:
        with views.read() as tx:
            assert tx.execute("SELECT count(*) FROM t").fetchone() == (4000,)
            tx.execute("SELECT sum(length(x)) FROM t").fetchone()
        scanned.wait()
        measured.wait()  # the thread, and so its connection, lives until the memory was measured

    before = _sqlite_memory_used()
    threads = [threading.Thread(target=scan_then_wait) for _ in range(readers)]
    for thread in threads:
        thread.start()
    scanned.wait()
    held = _sqlite_memory_used() - before
    measured.set()
    for thread in threads:
        thread.join()
    views.close()
    # Each reader's connection keeps at most CACHE_KIB of pages (plus its schema and statements), not 2 MiB.
    assert held < readers * 2 * CACHE_KIB * 1024, f"{held / 2**20:.1f} MiB held by {readers} idle connections"
