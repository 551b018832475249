"""The indexed dispatch (fhir_api/dispatch.py) chooses the route the router's full list chooses, for every
route's own paths and the odd ones around them (trailing slashes, empty segments, other methods)."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.routing import BaseRoute, Match

from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.dispatch import IndexedRoutes

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")


def _first(routes: list[BaseRoute], scope: dict[str, object]) -> BaseRoute | None:
    return next((route for route in routes if route.matches(scope)[0] == Match.FULL), None)


def test_the_indexed_dispatch_chooses_the_route_the_full_list_chooses(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, auth="required"))
    dispatch = app.router.middleware_stack
    assert isinstance(dispatch, IndexedRoutes)
    routes = list(app.router.routes)
    paths = {"/", "//", "/fhir", "/fhir/", "/fhir//x", "/fhir/Patient/", "/fhir/Patient/a/", "/metrics/", "/x/y/z"}
    for route in routes:
        path = getattr(route, "path", None)
        if path:
            for value in ("v1", "_history", "_search", "Patient", "$everything", "metadata"):
                paths.add(re.sub(r"\{[^}]*\}", value, path))
    read = dispatch.candidates("/fhir/Patient/0b5c3e1a")
    assert len(read) < len(routes) / 4  # the point of it
    for path in sorted(paths):
        for method in METHODS:
            scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "app": app}
            assert _first(dispatch.candidates(path), scope) is _first(routes, scope), (method, path)
