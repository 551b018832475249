"""On PostgreSQL, follow the log as it grows: LISTEN on the event table's channel, then catch up.

The eventsourcing recorder NOTIFYs its table's channel on every insert. A notification only wakes the
follower; what to apply is always read from the tracking position, so a missed or duplicated
notification changes nothing. A timeout poll covers notifications lost while reconnecting.
"""

from __future__ import annotations

import logging
import threading

import psycopg

from projections.projector import Projector

__all__ = ["LogFollower"]

log = logging.getLogger(__name__)


class LogFollower(threading.Thread):
    def __init__(self, projectors: list[Projector], conninfo: str, channel: str, poll_seconds: float = 1.0) -> None:
        super().__init__(name="ehr-log-follower", daemon=True)
        self.projectors = projectors
        self.conninfo = conninfo
        self.channel = channel
        self.poll_seconds = poll_seconds
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as connection:
                    connection.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self.channel)))
                    while not self._stopping.is_set():
                        self._catch_up()
                        # Wake on the first notification or after the poll interval, whichever comes first.
                        for _ in connection.notifies(timeout=self.poll_seconds, stop_after=1):
                            pass
            except Exception:  # the follower must outlive database restarts
                if not self._stopping.is_set():
                    log.warning("log follower lost its connection; retrying", exc_info=True)
                    self._stopping.wait(self.poll_seconds)

    def _catch_up(self) -> None:
        for projector in self.projectors:
            projector.catch_up()
