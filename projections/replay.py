"""One read and one decode of each batch for every projector a rebuild replays over the same log.

A from-zero rebuild replays the whole log into each projection's shadow. Each projector reading and
decrypting the log for itself did that work once per projector (``resources``, ``identity`` and
``terminology`` all follow the clinical log; ``audit`` and ``break_glass`` the audit log), and reading and
decoding is a fixed share of each event's cost. :class:`SharedLog` stands in for a log's application in
the shadow projectors: the batches they select and the events they decode are kept for the others, which
``ehr rebuild`` advances in turn, batch by batch, so each batch is read and decoded once.

A kept batch answers only while the shadows are built (:meth:`SharedLog.stop_sharing` ends it): a select
answered from what was kept may miss what was appended since, which is harmless while another turn follows
(the next batch starts after it), not in the swap's last catch-up, which must see everything.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from eventsourcing.persistence import Notification, StoredEvent

__all__ = ["SharedLog"]

#: How many distinct selects are kept (the projectors' batches differ by topics or bounds: break_glass).
_SELECTS_KEPT = 8


class _SharedRecorder:
    """The log's recorder, answering a select asked again (the same arguments) from what was read."""

    def __init__(self, recorder: Any) -> None:
        self._recorder = recorder
        self._kept: OrderedDict[Hashable, Sequence[Notification]] = OrderedDict()
        self.sharing = True
        #: Selects that reached the log (for tests: a rebuild reads each batch once, not once per projector).
        self.selects = 0

    def select_notifications(self, *args: Any, **kwargs: Any) -> Sequence[Notification]:
        if not self.sharing:
            self.selects += 1
            return self._recorder.select_notifications(*args, **kwargs)  # type: ignore[no-any-return]
        key = (args, tuple(sorted((name, _hashable(value)) for name, value in kwargs.items())))
        found = self._kept.get(key)
        if found is None:
            self.selects += 1
            found = self._recorder.select_notifications(*args, **kwargs)
            self._kept[key] = found
            while len(self._kept) > _SELECTS_KEPT:
                self._kept.popitem(last=False)
        return found

    def forget(self) -> None:
        self._kept.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._recorder, name)


class _SharedMapper:
    """The log's mapper, decoding each notification once for every projector that asks (by its id)."""

    def __init__(self, mapper: Any, window: int) -> None:
        self._mapper = mapper
        self._window = window
        self._decoded: OrderedDict[tuple[int, str, int], Any] = OrderedDict()
        self.sharing = True
        #: Events actually decoded (decrypted, transcoded).
        self.decoded = 0

    def to_domain_event(self, stored: StoredEvent) -> Any:
        notification_id = getattr(stored, "id", None)
        if not self.sharing or not isinstance(notification_id, int):
            self.decoded += 1
            return self._mapper.to_domain_event(stored)
        key = (notification_id, str(stored.originator_id), stored.originator_version)
        event = self._decoded.get(key)
        if event is None:
            self.decoded += 1
            event = self._mapper.to_domain_event(stored)
            self._decoded[key] = event
            while len(self._decoded) > self._window:
                self._decoded.popitem(last=False)
        return event

    def forget(self) -> None:
        self._decoded.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mapper, name)


class SharedLog:
    """Stands in for a log's application in the shadows: its recorder and mapper share, the rest is the log's.

    Events handed to several projectors are the same objects: a domain event is immutable (a frozen
    dataclass whose resource is its JSON text), and every view derives its rows from it without changing it.
    """

    def __init__(self, application: Any, batch_size: int) -> None:
        self._application = application
        self.recorder = _SharedRecorder(application.recorder)
        # Two batches of every projector: each turn reads the batch after the one the others still apply.
        self.mapper = _SharedMapper(application.mapper, window=max(4 * batch_size, 2_000))

    def stop_sharing(self) -> None:
        """From now on every select reads the log and every event is decoded anew (the swap's catch-up)."""
        self.recorder.sharing = self.mapper.sharing = False
        self.recorder.forget()
        self.mapper.forget()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._application, name)


def _hashable(value: Any) -> Hashable:
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(_hashable(item) for item in value)
    return value  # type: ignore[no-any-return]
