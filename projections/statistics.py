"""The query planner's statistics of the view tables, kept fresh by the server itself.

PostgreSQL plans from ``pg_class.reltuples`` and ``pg_statistic``, which only ANALYZE writes (by hand, or
autovacuum's analyze). With autovacuum off (as some institutions run it) nothing ever analyses the tables
the projections fill: the planner takes a search table of 200,000 rows for a small one and chooses nested
loops that run into the statement timeout (``Observation?patient.identifier``). So after projection batches
commit, a background thread looks at ``pg_stat_user_tables.n_mod_since_analyze`` (kept by the statistics
collector whether autovacuum runs or not, and counting every process's writes) and analyses each table of
the schema changed by more than max(1,000 rows, 10 % of its last analysed size): autovacuum's own rule
(``autovacuum_analyze_scale_factor`` 0.1), with a floor so that small tables are not analysed at every batch.

ANALYZE runs on its own connection, never in a write's transaction, one table at a time, and its errors are
logged: a planner statistic is never a reason to fail or delay a write.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from psycopg import sql

__all__ = ["ANALYZE_FRACTION", "ANALYZE_MIN_ROWS", "PlannerStatistics", "StatisticsAnalyser", "analyze_changed_tables"]

log = logging.getLogger(__name__)

#: A table is analysed again once this many rows changed, at least (inserted, updated or deleted)...
ANALYZE_MIN_ROWS = 1_000
#: ... and more than this fraction of its rows at its last analysis (autovacuum_analyze_scale_factor).
ANALYZE_FRACTION = 0.1

# reltuples is -1 for a table never analysed (PostgreSQL 14+): then the floor alone counts.
_CHANGED_TABLES = """
SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = %s AND s.n_mod_since_analyze > greatest(%s, %s * greatest(c.reltuples, 0))
ORDER BY s.n_mod_since_analyze DESC
"""


def analyze_changed_tables(conninfo: str, schema: str) -> list[str]:
    """ANALYZE each table of ``schema`` changed past the threshold since its last analysis; their names."""
    with psycopg.connect(conninfo, autocommit=True) as connection:
        rows = connection.execute(_CHANGED_TABLES, (schema, ANALYZE_MIN_ROWS, ANALYZE_FRACTION)).fetchall()
        names = [str(row[0]) for row in rows]
        for name in names:
            connection.execute(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(schema), sql.Identifier(name)))
    return names


class StatisticsAnalyser(threading.Thread):
    """The thread that analyses: a class of its own, so that what it sends is told apart from a request's
    (``bench.round_trips`` counts it among the background threads)."""

    def __init__(self, run: Callable[[], None], name: str) -> None:
        super().__init__(target=run, name=f"planner-statistics-{name}", daemon=True)


class PlannerStatistics:
    """Runs ``refresh`` on a background thread some seconds after projection batches commit.

    :meth:`changed` is what a committed batch costs: setting an event. The thread waits ``settle_seconds``
    after the first batch it is woken by, so that a burst of batches costs one look at the counters (and
    the writers' backends have flushed their counts to the statistics collector, which they do at most
    once a second), then runs ``refresh``; one refresh at a time, started lazily, ended by :meth:`close`.
    """

    def __init__(self, refresh: Callable[[], list[str]], name: str, settle_seconds: float = 2.0) -> None:
        self._refresh = refresh
        self._name = name
        self.settle_seconds = settle_seconds
        self._changed = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread: StatisticsAnalyser | None = None
        #: Every table analysed so far, in order (for the logs and for tests).
        self.analysed: list[str] = []

    def changed(self) -> None:
        """Projection batches committed: the tables may be due an analysis."""
        if self._closed.is_set():
            return
        self._changed.set()
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._closed.is_set():
                    self._thread = StatisticsAnalyser(self._run, self._name)
                    self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._changed.wait()
            if self._closed.wait(self.settle_seconds):
                return
            self._changed.clear()
            try:
                analysed = self._refresh()
            except Exception:
                log.warning("planner statistics of %s: the analysis failed", self._name, exc_info=True)
                continue
            if analysed:
                self.analysed.extend(analysed)
                log.info("planner statistics of %s: analysed %s", self._name, ", ".join(analysed))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (an ANALYZE in progress ends on its own, its connection with it)."""
        with self._lock:
            self._closed.set()
            self._changed.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
