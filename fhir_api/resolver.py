"""Conditional matching against the search index: the resolver the domain's Bundle processing asks."""

from __future__ import annotations

from contextlib import AbstractContextManager

from fhir_api.services import Services
from projections.access import Viewer
from projections.search import match

__all__ = ["ViewResolver"]


class ViewResolver:
    """Answers "which current resources match this search?" from the (caught-up) search index, among the
    resources ``viewer`` may read: a conditional create, update, patch or delete, and a conditional reference
    in a Bundle, never find (and so never disclose or change) a record hidden from the caller. A conditional
    create whose criteria match only hidden records creates the caller's own record; for a Patient the master
    patient index then links the two records of one person, as it links any two institutions' records."""

    def __init__(self, services: Services, viewer: Viewer | None = None) -> None:
        self.services = services
        self.viewer = viewer

    def match(self, resource_type: str, params: list[tuple[str, str]]) -> list[str]:
        # A conditional must see every committed write, including those of a bulk import that does not
        # wait for the projections after each commit: catch up first (a no-op when already there; once per
        # unit of work within ``unit_of_work``).
        self.services.projector_current()
        with self.services.views.read() as tx:
            return match(tx, resource_type, params, 2, self.viewer, self.services.views.dialect)

    def unit_of_work(self) -> AbstractContextManager[None]:
        """Matches and profile checks of one unit whose writes are appended together at its end (a bulk
        import's chunk) read one state of the views (:meth:`Services.one_read_state`)."""
        return self.services.one_read_state()
