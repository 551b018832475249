"""Route matching that tries only the routes a path can match, in their order.

The router tries its routes one by one, in order, each with its path's regular expression (and FastAPI's
bookkeeping per route tried): a read of ``Patient/{id}`` came ~90th of ~110 routes, ~0.2 ms of CPU per
request on the 2-core machine before any work. A route's path begins with a literal part (``/fhir/Patient/``
of ``/fhir/Patient/{patient_id}``); a request path that does not begin with it cannot match it. Routes are
grouped by the first two segments of that literal part, when it has them: a request is matched against the
routes of its own two first segments and those whose literal part is shorter (``/fhir/{resource_type}``),
still in the router's order, so the first route that matches is the one the full list gives. Anything
else — no route matches fully (404, 405 and the trailing-slash redirect are decided over every route), a
websocket, the lifespan — goes to the router as it is.
"""

from __future__ import annotations

from typing import Any

import fastapi.routing
from starlette.routing import BaseRoute, Match, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["IndexedRoutes", "index_routes"]

#: FastAPI's telemetry hook for the route chosen (a no-op unless telemetry is on); private, so looked up softly.
_route_selected: Any = getattr(fastapi.routing, "_route_selected", lambda **_: None)

#: Request path shapes remembered (each a short tuple); beyond this many, candidates are found without keeping them.
_SHAPES = 4096


def _segments(route: BaseRoute) -> list[str | None] | None:
    """The segments of the paths ``route`` matches: a literal, or None for a parameter's (or a part's); None
    for a route that may match any number of segments (a Mount, a ``{name:path}`` parameter)."""
    if not isinstance(route, Route):  # FastAPI's APIRoute is one
        return None
    path: str = route.path
    if ":path}" in path:
        return None
    return [None if "{" in part else part for part in path.split("/")[1:]]


class IndexedRoutes:
    """The router's own dispatch, over the routes a request's path can match (see the module's text)."""

    def __init__(self, router: Router, fallback: ASGIApp) -> None:
        self.router = router
        self.fallback = fallback
        self._size = -1
        self._routes: list[tuple[BaseRoute, list[str | None] | None]] = []
        #: Per number of segments and position, the literals some route has there.
        self._literals: dict[int, list[set[str]]] = {}
        self._by_shape: dict[tuple[str | None, ...], list[BaseRoute]] = {}

    def _index(self) -> None:
        self._routes = [(route, _segments(route)) for route in self.router.routes]
        self._literals = {}
        for _, segments in self._routes:
            if segments is not None:
                sets = self._literals.setdefault(len(segments), [set() for _ in segments])
                for position, literal in enumerate(segments):
                    if literal is not None:
                        sets[position].add(literal)
        self._by_shape = {}
        self._size = len(self.router.routes)

    def candidates(self, path: str) -> list[BaseRoute]:
        """The routes ``path`` can match, in the router's order: a route whose literal segments ``path`` does
        not have, or whose number of segments differs (a parameter never spans a ``/``), cannot."""
        if len(self.router.routes) != self._size:  # routes added since (the app adds some after the FHIR ones)
            self._index()
        parts = path.split("/")[1:]
        sets = self._literals.get(len(parts), ())
        # The path's shape: its segments that are some route's literal at that place; the others cannot differ
        # in which routes they allow.
        shape = tuple(part if part in literals else None for part, literals in zip(parts, sets, strict=False))
        shape = shape if sets else (None,) * len(parts)
        found = self._by_shape.get(shape)
        if found is None:
            found = [
                route
                for route, segments in self._routes
                if segments is None
                or (
                    len(segments) == len(shape)
                    and all(s is None or s == p for s, p in zip(segments, shape, strict=True))
                )
            ]
            if len(self._by_shape) < _SHAPES:
                self._by_shape[shape] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await self.fallback(scope, receive, send)
            return
        if "router" not in scope:
            scope["router"] = self.router
        for route in self.candidates(scope["path"]):
            match, child_scope = route.matches(scope)
            if match == Match.FULL:
                scope.update(child_scope)
                _route_selected(scope=scope, path=getattr(route, "path_format", None), mount=isinstance(route, Mount))
                await route.handle(scope, receive, send)
                return
        await self.fallback(scope, receive, send)  # no full match: 405, 404 or a redirect, over every route


def index_routes(router: Router) -> None:
    """Dispatch ``router``'s requests through :class:`IndexedRoutes` (call once, on the app's router). Only a
    router with no middleware of its own (a body limit...): the indexed dispatch calls the routes directly."""
    if router.middleware_stack == router.app:
        router.middleware_stack = IndexedRoutes(router, router.middleware_stack)
