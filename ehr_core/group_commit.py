"""Group commit: concurrent writes of one process share a transaction of the event store.

Every append takes the event table's ordering lock for a transaction's length (DESIGN.md: notification
ids are committed in order), so writers that each commit alone queue on that lock, one round trip after
another. Here the first writer to arrive becomes the *leader*: it appends the events of every write
queued behind it in one transaction, hands each its recordings, and passes the lead on to the next writer
that arrived meanwhile. Under load a transaction carries tens of writes; alone, a write costs what it did.

A write is atomic on its own, not with its neighbours: when the shared transaction fails (one write lost a
race for a version, or its patient's key was shredded), each write of the group is appended again alone,
so only the failing one gets the error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import Recording

__all__ = ["GroupCommit"]

Append = Callable[[list[Any]], list[Recording[Any]]]


@dataclass
class _Write:
    events: list[Any]
    lead: bool = False
    recordings: list[Recording[Any]] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class GroupCommit:
    def __init__(self, append: Append, most: int = 500) -> None:
        #: Appends a list of domain events in one transaction, returning their recordings.
        self._append = append
        #: Most events a shared transaction carries (a bound on its length and on the lock's hold time).
        self._most = most
        self._lock = threading.Lock()
        self._queue: list[_Write] = []
        self._leading = False

    def append(self, events: list[Any]) -> list[Recording[Any]]:
        write = _Write(events)
        with self._lock:
            self._queue.append(write)
            if not self._leading:
                self._leading = write.lead = True
        if not write.lead:
            write.done.wait()  # woken with its recordings, or to lead the next group
        if write.lead:
            self._lead()
        if write.error is not None:
            raise write.error
        return write.recordings

    def _lead(self) -> None:
        with self._lock:
            group: list[_Write] = []
            size = 0
            while self._queue and (not group or size + len(self._queue[0].events) <= self._most):
                group.append(self._queue.pop(0))
                size += len(group[-1].events)
        try:
            self._run(group)
        finally:
            with self._lock:
                if self._queue:
                    following = self._queue[0]
                    following.lead = True
                    following.done.set()
                else:
                    self._leading = False
            for write in group:
                write.lead = False
                write.done.set()

    def _run(self, group: Sequence[_Write]) -> None:
        if len(group) > 1:
            try:
                recordings = self._append([event for write in group for event in write.events])
            except Exception:  # each write is appended again alone below, and gets its own answer
                pass
            else:
                for write in group:
                    write.recordings = recordings
                return
        for write in group:
            try:
                write.recordings = self._append(write.events)
            except BaseException as error:
                write.error = error
