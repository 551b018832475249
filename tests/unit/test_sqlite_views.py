"""SQLiteViews' per-thread connections end with their threads (memory under sustained traffic)."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

from projections.db import SQLiteViews


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
