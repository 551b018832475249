"""An operation's input, from the URL and, on POST, from a ``Parameters`` body (R4 operations.html
"Executing an operation").

GET carries simple parameters in the URL; POST carries a ``Parameters`` resource. Parameters in the URL of a
POST are taken too, combined with the body's as if they had been one list (the spec does not forbid it, and
fhirpy sends paging parameters that way); a parameter that may appear once (``max = 1``) given in both places
is refused rather than one of them silently chosen. A parameter the operation does not define is refused
(400, ``not-supported``): an ignored filter (``start``, ``_type``) would hand back more of a patient's record
than was asked for, and a client would take the answer as filtered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fastapi import Request

from ehr_core.errors import InvalidResource, Issue
from fhir_api.errors import ApiError
from fhir_api.operations.definitions import Operation, Param
from fhir_api.request import read_json_body

__all__ = ["OperationInput", "operation_input", "query_input"]


@dataclass
class OperationInput:
    """Simple values as strings, as they would be written in a URL; resources as parsed JSON."""

    values: dict[str, list[str]] = field(default_factory=dict)
    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Whether the input came (partly) from a Parameters body.
    posted: bool = False

    def first(self, name: str) -> str | None:
        found = self.values.get(name)
        return found[0] if found else None

    def all(self, name: str) -> list[str]:
        return list(self.values.get(name, []))

    def resource(self, name: str) -> dict[str, Any] | None:
        found = self.resources.get(name)
        return found[0] if found else None


def _unknown(operation: Operation, name: str) -> InvalidResource:
    known = ", ".join(operation.in_parameters) or "none"
    return InvalidResource(
        [Issue("not-supported", f"${operation.code} has no parameter {name!r} (its parameters: {known})", name)]
    )


def _add(operation: Operation, found: OperationInput, name: str, value: str | dict[str, Any]) -> None:
    param = operation.in_parameters.get(name)
    if param is None:
        raise _unknown(operation, name)
    if isinstance(value, dict):
        found.resources.setdefault(name, []).append(value)
    else:
        found.values.setdefault(name, []).append(value)
    count = len(found.values.get(name, [])) + len(found.resources.get(name, []))
    if not param.repeats and count > 1:
        raise InvalidResource([Issue("invalid", f"${operation.code} takes {name} at most once", name)])


#: R4 http.html "General parameters", valid on every interaction: the answer's format (``_format``, chosen
#: by fhir_api.formats before any handler runs, 406 there for a format the server cannot produce) and layout.
_GENERAL = frozenset({"_format", "_pretty"})


def query_input(operation: Operation, pairs: Iterable[tuple[str, str]]) -> OperationInput:
    """The input of a GET: each URL parameter must be one the operation defines (or a general one)."""
    found = OperationInput()
    for name, value in pairs:
        if name in _GENERAL:
            continue
        _add(operation, found, name, value)
    return found


def _simple(param: Param, item: dict[str, Any], where: str) -> str | dict[str, Any]:
    """A ``Parameters.parameter`` as the string it would be in a URL (or the resource it carries)."""
    if "resource" in item:
        resource = item["resource"]
        if not isinstance(resource, dict) or param.type in _SIMPLE_TYPES:
            raise InvalidResource([Issue("invalid", f"{param.name} takes a value, not a resource", where)])
        return resource
    if "part" in item:
        raise InvalidResource([Issue("not-supported", f"{param.name} takes no parts", where)])
    values = [(key, value) for key, value in item.items() if key.startswith("value")]
    if len(values) != 1:
        raise InvalidResource([Issue("invalid", f"{param.name} needs exactly one value[x]", where)])
    key, value = values[0]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | Decimal):
        return str(value)
    if isinstance(value, dict) and key == "valueReference" and isinstance(value.get("reference"), str):
        return str(value["reference"])
    if isinstance(value, dict) and key in ("valueIdentifier", "valueCoding"):
        system = value.get("system")
        code = value.get("value" if key == "valueIdentifier" else "code")
        if isinstance(code, str):
            return f"{system}|{code}" if isinstance(system, str) else code
    raise InvalidResource([Issue("invalid", f"{param.name}: {key} is not a value this operation takes", where)])


#: Parameter types whose value is given as value[x], never as a resource.
_SIMPLE_TYPES = frozenset(
    {"string", "code", "uri", "date", "dateTime", "instant", "integer", "boolean", "Identifier", "Reference"}
)


async def operation_input(request: Request, operation: Operation) -> OperationInput:
    """The operation's input: the URL's parameters, and on POST those of the ``Parameters`` body.

    An empty POST body is an invocation without parameters (fhir-kit-client sends none when there are none).
    """
    found = query_input(operation, request.query_params.multi_items())
    if request.method != "POST":
        return found
    declared = request.headers.get("content-length")
    if declared == "0":
        return found
    limit: int = request.app.state.services.settings.max_body_bytes
    if declared is not None and declared.isdecimal() and int(declared) > limit:
        raise ApiError("too-large", f"body of {declared} bytes is over the limit of {limit} bytes", "too-costly")
    raw = await request.body()
    if not raw.strip():
        return found
    body = await read_json_body(request)  # the media type, the size limit and the JSON itself
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidResource([Issue("invalid", f"${operation.code} takes a Parameters resource as its body")])
    items = body.get("parameter") or []
    if not isinstance(items, list):
        raise InvalidResource([Issue("structure", "Parameters.parameter must be a list", "Parameters.parameter")])
    found.posted = True
    for index, item in enumerate(items):
        where = f"Parameters.parameter[{index}]"
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise InvalidResource([Issue("required", "each parameter needs a name", where)])
        param = operation.in_parameters.get(name)
        if param is None:
            raise _unknown(operation, name)
        assert isinstance(item, dict)
        _add(operation, found, name, _simple(param, item, where))
    return found
