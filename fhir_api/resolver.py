"""Conditional matching against the search index: the resolver the domain's Bundle processing asks."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ehr_core.errors import RecordError
from fhir_api.services import Services
from projections.access import Viewer
from projections.search import match, match_many

__all__ = ["ViewResolver"]

#: A search as the resolver is asked it: the type and the parsed query pairs, in the order written.
Query = tuple[str, tuple[tuple[str, str], ...]]


class ViewResolver:
    """Answers "which current resources match this search?" from the (caught-up) search index, among the
    resources ``viewer`` may read: a conditional create, update, patch or delete, and a conditional reference
    in a Bundle, never find (and so never disclose or change) a record hidden from the caller. A conditional
    create whose criteria match only hidden records creates the caller's own record; for a Patient the master
    patient index then links the two records of one person, as it links any two institutions' records."""

    def __init__(self, services: Services, viewer: Viewer | None = None) -> None:
        self.services = services
        self.viewer = viewer
        #: Per thread, within :meth:`unit_of_work`: the answers :meth:`prefetch` read for the unit.
        self._unit = threading.local()

    def match(self, resource_type: str, params: list[tuple[str, str]]) -> list[str]:
        answers: dict[Query, list[str]] | None = getattr(self._unit, "answers", None)
        if answers is not None:
            known = answers.get((resource_type, tuple(params)))
            if known is not None:
                return list(known)
        # A conditional must see every committed write, including those of a bulk import that does not
        # wait for the projections after each commit: catch up first (a no-op when already there; once per
        # unit of work within ``unit_of_work``).
        self.services.projector_current()
        with self.services.views.read() as tx:
            return match(tx, resource_type, params, 2, self.viewer, self.services.views.dialect)

    def prefetch(self, queries: Iterable[tuple[str, list[tuple[str, str]]]]) -> None:
        """Within :meth:`unit_of_work`: answer every one of ``queries`` now, in one round trip per hundred,
        and each later :meth:`match` of one of them from that answer instead of a search of its own.

        The answers are those of the unit's one state of the views (caught up with the log at its first
        read, :meth:`Services.one_read_state`), which a search of its own within the unit would read too:
        the unit's writes are appended only at its end, and another writer's commit meanwhile is concurrent
        with the whole unit (a later unit sees it). A query whose criteria are no search is left to
        :meth:`match`, which refuses it where it was written."""
        answers: dict[Query, list[str]] | None = getattr(self._unit, "answers", None)
        if answers is None:
            return
        wanted = list(dict.fromkeys((t, tuple(p)) for t, p in queries if (t, tuple(p)) not in answers))
        if not wanted:
            return
        self.services.projector_current()
        try:
            with self.services.views.read() as tx:
                found = match_many(tx, [(t, list(p)) for t, p in wanted], 2, self.viewer, self.services.views.dialect)
        except RecordError:  # a value no search accepts: each query is asked alone, and refused alone
            return
        for query, ids in zip(wanted, found, strict=True):
            if ids is not None:
                answers[query] = ids

    @contextmanager
    def unit_of_work(self) -> Iterator[None]:
        """Matches and profile checks of one unit whose writes are appended together at its end (a bulk
        import's chunk) read one state of the views (:meth:`Services.one_read_state`); what :meth:`prefetch`
        answered is kept until the unit ends (nested: the outer unit's)."""
        if getattr(self._unit, "answers", None) is not None:
            yield
            return
        with self.services.one_read_state():
            self._unit.answers = {}
            try:
                yield
            finally:
                self._unit.answers = None
