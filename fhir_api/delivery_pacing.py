"""How much of the CPU subscription delivery may take while writes are being committed.

Delivery runs in the process that takes the writes (``ehr serve``, or the ``ehr project`` worker the writes
wait for): its threads share the interpreter lock and the machine's cores with them. Fifty subscriptions
matching every write are fifty outbox rows and fifty requests per write, and matching, sending and marking
them costs more than the write itself, so delivery that keeps pace with a burst of writes takes most of the
CPU from them (measured with ``bench.subscriptions``: the delivery threads took about 60% of the server's CPU,
the writes fell to a third). Delivery is never on a write's critical path (DESIGN.md "Notifications") and
must not slow writes beyond the matching's cost; at least once and in order per subscription, it may lag
during a burst and catch up after.

So while writes commit (one within ``quiet_after`` seconds), delivery works in rounds and rests after each
one until the CPU its threads spent on it is at most ``share`` of the time elapsed: a round that spent ``c``
CPU seconds in ``e`` seconds rests ``c / share - e``. The CPU is each thread's own clock (the delivery
thread's matching, reading and marking; each sending thread's requests), so the time spent waiting for the
interpreter lock, the database or an endpoint's answer does not count: a machine loaded by others, or a slow
subscriber, does not slow delivery further. The rest makes the next round's batch larger, so the per-round
costs (the due-event reads, one audit entry per subscription, one transaction marking what was delivered)
are spread over more notifications. With no write for ``quiet_after`` seconds it never rests: the backlog
drains at full speed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["DeliveryPacing"]


class DeliveryPacing:
    def __init__(self, share: float, quiet_after: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        #: The largest fraction of the elapsed time delivery's CPU may take while writes commit (1: no pacing).
        self.share = share
        self.quiet_after = quiet_after
        #: The clock rounds are measured with (monotonic).
        self.clock = clock
        self._last_write: float | None = None
        self._lock = threading.Lock()
        #: CPU seconds the delivery threads reported since the last round ended.
        self._spent = 0.0

    def write_committed(self) -> None:
        """A write's events reached the resource views (``Projector.on_applied``)."""
        self._last_write = self.clock()

    def writing(self) -> bool:
        """Whether a write committed within the last ``quiet_after`` seconds."""
        return self._last_write is not None and self.clock() - self._last_write < self.quiet_after

    def spent(self, cpu_seconds: float) -> None:
        """CPU a delivery thread spent on the current round (any thread may report)."""
        with self._lock:
            self._spent += cpu_seconds

    def rest(self, began: float) -> float:
        """Seconds to rest after the round that began at ``began`` (``clock``), given the CPU reported for
        it; the report is cleared for the next round."""
        with self._lock:
            spent, self._spent = self._spent, 0.0
        if self.share >= 1 or not self.writing():
            return 0.0
        return max(0.0, spent / self.share - (self.clock() - began))
