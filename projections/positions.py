"""Waiting for a projection worker: read-your-writes when another process projects.

With ``EHR_PROJECTION=worker`` the API processes append events and an ``ehr project`` process applies
them. Each projector batch ends with ``pg_notify(<projected channel>, '<name>:<position>')`` inside its
transaction, so the announcement arrives exactly when the rows are visible. :class:`PositionWatcher`
LISTENs on that channel and wakes the requests waiting for a position; a missed notification (a
reconnect) only delays them until the next poll of the tracking table, never lets them through early.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

__all__ = ["PositionWatcher"]

log = logging.getLogger(__name__)

ReadPosition = Callable[[str], int]


class PositionWatcher(threading.Thread):
    def __init__(self, conninfo: str, channel: str, read_position: ReadPosition, poll_seconds: float = 0.5) -> None:
        super().__init__(name="ehr-position-watcher", daemon=True)
        self.conninfo = conninfo
        self.channel = channel
        self.read_position = read_position
        self.poll_seconds = poll_seconds
        self._positions: dict[str, int] = {}
        self._changed = threading.Condition()
        self._stopping = threading.Event()

    def position(self, name: str) -> int:
        with self._changed:
            return self._positions.get(name, 0)

    def _seen(self, name: str, position: int) -> None:
        with self._changed:
            if position > self._positions.get(name, 0):
                self._positions[name] = position
                self._changed.notify_all()

    def wait(self, name: str, position: int, timeout: float) -> bool:
        """True once projection ``name`` has applied ``position``; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                if self._positions.get(name, 0) >= position:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, self.poll_seconds))
                if self._positions.get(name, 0) >= position:
                    return True
            # Woken by the poll interval, not by a notification: ask the tracking table itself.
            self._seen(name, self.read_position(name))

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as connection:
                    connection.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self.channel)))
                    while not self._stopping.is_set():
                        for notice in connection.notifies(timeout=self.poll_seconds, stop_after=1):
                            name, _, position = notice.payload.rpartition(":")
                            if position.isdigit():
                                self._seen(name, int(position))
            except Exception:  # the watcher must outlive database restarts; waiters fall back to polling
                if not self._stopping.is_set():
                    log.warning("position watcher lost its connection; retrying", exc_info=True)
                    self._stopping.wait(self.poll_seconds)
