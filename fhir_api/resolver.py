"""Conditional matching against the search index: the resolver the domain's Bundle processing asks."""

from __future__ import annotations

from fhir_api.services import Services
from projections.search import match

__all__ = ["ViewResolver"]


class ViewResolver:
    """Answers "which current resources match this search?" from the (caught-up) search index."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def match(self, resource_type: str, params: list[tuple[str, str]]) -> list[str]:
        # A conditional must see every committed write, including those of a bulk import that does not
        # wait for the projections after each commit: catch up first (a no-op when already there).
        self.services.projector.catch_up_if_behind()
        with self.services.views.read() as tx:
            return match(tx, resource_type, params, limit=2)
