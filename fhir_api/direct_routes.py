"""FHIR routes called directly, without FastAPI's per-request machinery, where it would only copy values.

Almost every FHIR endpoint takes its path's ``str`` parameters, the request and the open store
(``ServicesDep``), reads the rest from the request itself, and returns a ``Response``. For such an endpoint
FastAPI still, on every request, looks up its telemetry, inspects the endpoint for error context, opens two
exit stacks, solves the dependency tree (the endpoint's and ``get_services``'), converts each parameter
group (path, query, headers, cookies) for each, and checks the result: about a fifth of the event loop's
CPU per read by id, profiled (``fastapi/`` frames, in process, one client), where the event loop is what
bounds reads (bench/README.md). Here such a route's handler passes the same values itself: the path
parameters as matched, the request, ``app.state.services``. What FastAPI declares from the route (its
OpenAPI operation, its matching, the error handlers around it: Starlette's ``request_response``) is
unchanged. A route with anything else to solve (a query, header or body parameter, a typed or constrained
path parameter, another dependency) keeps FastAPI's handler.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, request_response
from starlette.types import ASGIApp

from fhir_api.request import get_services

__all__ = ["call_directly"]


def call_directly(routes: list[BaseRoute]) -> int:
    """Give each qualifying route of ``routes`` a direct handler; return how many were given one."""
    given = 0
    for route in routes:
        if isinstance(route, APIRoute) and (handler := _direct_handler(route)) is not None:
            route.app = handler
            given += 1
    return given


def _direct_handler(route: APIRoute) -> ASGIApp | None:
    dependant = route.dependant
    endpoint = dependant.call
    if endpoint is None or not inspect.iscoroutinefunction(endpoint):
        return None
    if dependant.query_params or dependant.header_params or dependant.cookie_params or dependant.body_params:
        return None
    if any(field.field_info.annotation is not str or field.field_info.metadata for field in dependant.path_params):
        return None
    if any(sub.call is not get_services or sub.dependencies for sub in dependant.dependencies):
        return None
    if (
        dependant.background_tasks_param_name
        or dependant.response_param_name
        or dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.security_scopes_param_name
        or not _returns_a_response(endpoint)
    ):
        return None
    services = [sub.name for sub in dependant.dependencies if sub.name]
    return request_response(_handler(endpoint, dependant.request_param_name, services))


def _handler(
    endpoint: Callable[..., Awaitable[Any]], request_name: str | None, services: list[str]
) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        arguments: dict[str, Any] = dict(request.path_params)
        if request_name is not None:
            arguments[request_name] = request
        for name in services:
            arguments[name] = await get_services(request)
        response = await endpoint(**arguments)
        if not isinstance(response, Response):  # the annotation said it would be: a programming error
            raise TypeError(f"{endpoint.__name__} returned {type(response).__name__}, not a Response")
        return response

    return handle


def _returns_a_response(endpoint: Callable[..., Any]) -> bool:
    """Whether the endpoint is annotated to return a Response (FastAPI would otherwise serialise its result)."""
    try:
        returned = typing.get_type_hints(endpoint).get("return")
    except (NameError, TypeError):
        return False
    return isinstance(returned, type) and issubclass(returned, Response)
