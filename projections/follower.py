"""On PostgreSQL, follow the log as it grows: LISTEN on the event table's channel, then catch up.

The eventsourcing recorder NOTIFYs its table's channel on every insert. A notification only wakes the
follower; what to apply is always read from the tracking position, so a missed or duplicated
notification changes nothing. A timeout poll covers notifications lost while reconnecting.

Every API process applies its own writes before answering them, so the follower is the safety net for
the rest (another process's writes it did not apply, an import without a projector). It lets a
notification settle before looking, so that it does not race a request for the batch that request is
about to apply itself (that race cost a create ~5 ms).
"""

from __future__ import annotations

import logging
import threading

import psycopg

from projections.projector import Projector

__all__ = ["LogFollower"]

log = logging.getLogger(__name__)


class LogFollower(threading.Thread):
    def __init__(
        self,
        projectors: list[Projector],
        conninfo: str,
        channel: str,
        poll_seconds: float = 1.0,
        settle_seconds: float = 0.05,
    ) -> None:
        super().__init__(name="ehr-log-follower", daemon=True)
        self.projectors = projectors
        self.conninfo = conninfo
        self.channel = channel
        self.poll_seconds = poll_seconds
        self.settle_seconds = settle_seconds
        self._previous_head = 0
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
                            self._stopping.wait(self.settle_seconds)
            except Exception:  # the follower must outlive database restarts
                if not self._stopping.is_set():
                    log.warning("log follower lost its connection; retrying", exc_info=True)
                    self._stopping.wait(self.poll_seconds)

    def _catch_up(self) -> None:
        # Only what was already in the log at the previous look: a write appended since then is most likely
        # being applied by the request that made it.
        head = self.projectors[0].application.recorder.max_notification_id() or 0 if self.projectors else 0
        for projector in self.projectors:
            if projector.position < self._previous_head:
                projector.catch_up(until=self._previous_head)
        self._previous_head = head
