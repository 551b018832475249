"""Floor (a): the bare eventsourcing application recorder, with the server's own configuration.

The recorder comes from ``RecordApplication(settings).recorder`` on a fresh SQLite directory or a fresh
PostgreSQL schema, so table, pool, locks and pragmas are the server's. Inserts are one stored event
per ``insert_events`` call (what one create appends); reads select the latest event of one stream
(what loading a stream for an update does).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.persistence import StoredEvent

from bench.stats import Measurement
from bench.threaded import run_threads

__all__ = ["RecorderBench", "open_recorder"]


@contextmanager
def open_recorder(data_dir: Path, url: str | None = None, schema: str | None = None) -> Iterator[Any]:
    """The recorder of a ``RecordApplication`` on SQLite in ``data_dir``, or on PostgreSQL in ``schema``.

    ``data_dir`` is given on PostgreSQL too: whatever the application keeps in files (keys) stays in the
    benchmark's temporary directory, never in the project's ``./ehr-data``.
    """
    from ehr_core.application import RecordApplication
    from ehr_core.settings import Settings

    if url is not None:
        settings = Settings(database_url=url, postgres_schema=schema or "public", data_dir=data_dir)
    else:
        settings = Settings(data_dir=data_dir)
    application = RecordApplication(settings)
    try:
        yield application.recorder
    finally:
        application.close()


class RecorderBench:
    """Inserts and reads against one recorder; remembers what it inserted so reads hit real rows."""

    def __init__(self, recorder: Any, backend: str, topic: str, state: bytes) -> None:
        self.recorder = recorder
        self.backend = backend
        self.topic = topic
        self.state = state
        self.inserted: list[UUID] = []
        self._lock = threading.Lock()

    def _insert_worker(self) -> Any:
        @contextmanager
        def worker() -> Iterator[Callable[[], None]]:
            def insert() -> None:
                originator = uuid4()
                self.recorder.insert_events([StoredEvent(originator, 1, self.topic, self.state)])
                self.inserted.append(originator)  # list.append is atomic

            yield insert

        return worker

    def _read_worker(self, seed: int) -> Any:
        ids = self.inserted
        seeds = iter(range(seed, seed + 10_000))
        lock = self._lock

        @contextmanager
        def worker() -> Iterator[Callable[[], None]]:
            with lock:
                chooser = random.Random(next(seeds))

            def read() -> None:
                events = self.recorder.select_events(chooser.choice(ids), desc=True, limit=1)
                assert events, "inserted stream not found"

            yield read

        return worker

    def inserts(self, concurrency: int, seconds: float, warmup: float, count: int, min_seconds: float) -> Measurement:
        worker = self._insert_worker()
        return run_threads("recorder insert", self.backend, worker, concurrency, seconds, warmup, count, min_seconds)

    def reads(self, concurrency: int, seconds: float, warmup: float, count: int, min_seconds: float) -> Measurement:
        worker = self._read_worker(11)
        name = "recorder select latest"
        return run_threads(name, self.backend, worker, concurrency, seconds, warmup, count, min_seconds)
