"""Conditional matching against the search index: the resolver the domain's Bundle processing asks."""

from __future__ import annotations

import importlib

from fhir_api.services import Services

__all__ = ["ViewResolver"]


class ViewResolver:
    """Answers "which current resources match this search?" from the (caught-up) search index."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def match(self, resource_type: str, params: list[tuple[str, str]]) -> list[str]:
        search = importlib.import_module("projections.search")
        with self.services.views.read() as tx:
            found: list[str] = search.match(tx, resource_type, params, limit=2)
            return found
