"""Validation against the FHIR R4B models (the one place ``fhir.resources`` is used), R4's required
bindings and its error-level invariants.

The model is only a checker. Its output is thrown away: a model dump rewrites timestamps, decimals and
base64 (see shared/corpus/README.md), so the stored bytes are always the client's own.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ehr_core.errors import InvalidResource, Issue
from ehr_core.resources.bindings import required_code_issues, required_coding_issues
from ehr_core.resources.invariants import invariant_issues
from ehr_core.resources.json import dumps
from ehr_core.resources.r4_only import r4_only_issues
from ehr_core.resources.types import REMOVED_IN_R4B, is_supported

__all__ = ["is_repeating", "is_valid_id", "validate"]

# FHIR ids: [A-Za-z0-9\-\.]{1,64} (R4 §2.24.0.1 "id").
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and all(c in _ID_CHARS for c in value)


def _expression(resource_type: str, location: Sequence[int | str]) -> str:
    """Turn a pydantic error location into the FHIRPath the spec expects in ``issue.expression``."""
    path = resource_type
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part in {"__root__"}:
            continue
        else:
            path += f".{part}"
    return path


def validate(resource: Any, expected_type: str | None = None) -> str:
    """Check that ``resource`` is a valid R4 resource; return its type or raise :class:`InvalidResource`."""
    if not isinstance(resource, dict):
        raise InvalidResource([Issue("structure", "the body must be a JSON object (a FHIR resource)")])
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise InvalidResource([Issue("required", "resourceType is missing", "resourceType")])
    if expected_type is not None and resource_type != expected_type:
        raise InvalidResource(
            [Issue("invalid", f"resourceType {resource_type} does not match the URL ({expected_type})")]
        )
    if not is_supported(resource_type):
        raise InvalidResource([Issue("not-supported", f"unknown resource type {resource_type}", "resourceType")])
    if "id" in resource and not is_valid_id(resource["id"]):
        raise InvalidResource([Issue("value", "id must match [A-Za-z0-9-.]{1,64}", f"{resource_type}.id")])
    text = _check_characters(resource, resource_type)
    if resource_type in REMOVED_IN_R4B:  # no R4B model: the generated R4 element table
        if issues := r4_only_issues(resource, resource_type, _contained_issues):
            raise InvalidResource(issues)
        return resource_type
    model = get_fhir_model_class(resource_type)
    try:
        model.model_validate(resource)
    except ValidationError as error:
        issues = [
            Issue("structure", str(detail["msg"]), _expression(resource_type, detail["loc"]))
            for detail in error.errors(include_url=False)[:20]
        ]
        raise InvalidResource(issues) from None
    except (ValueError, TypeError, KeyError, RecursionError) as error:  # KeyError: a contained resourceType R4B lacks
        raise InvalidResource([Issue("structure", f"invalid {resource_type}: {error}")]) from None
    issues = conformance_issues(resource, resource_type, text)
    if issues:
        raise InvalidResource(issues)
    return resource_type


def _contained_issues(resource: Any) -> list[Issue]:
    try:
        validate(resource)
    except InvalidResource as error:
        return error.issues
    return []


def conformance_issues(resource: dict[str, Any], resource_type: str, text: bytes | None = None) -> list[Issue]:
    """What the models do not check, for a resource they accept: required bindings (R4
    terminologies.html#required) and error-level invariants (R4 conformance-rules.html#constraints), one
    issue per broken rule. ``text``: the resource as JSON, if the caller has it already."""
    return [
        *required_code_issues(resource, resource_type),
        *required_coding_issues(resource, resource_type),
        *invariant_issues(resource, resource_type, text=text),
    ]


# R4 §2.24.0.2 "string": "Strings SHALL NOT contain Unicode character points below 32, except for u0009
# (horizontal tab), u0010 (carriage return) and u0013 (line feed)". Lone surrogates (``"\ud800"`` escapes)
# are no Unicode characters at all and cannot be written as UTF-8. Both are refused before storage: a NUL
# stored in the log could never be projected into PostgreSQL (text cannot hold it) and would stall the views.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


# orjson writes a character below U+0020 as an escape, by its short form (\\t \\n \\r \\b \\f) or \\u00XX, and
# refuses a lone surrogate; the text of every other character is itself. (One search: ``in`` on bytes is
# slower than this for a two-byte needle.)
_SUSPECT_ESCAPE = re.compile(rb"\\[ubf]")


def _check_characters(resource: dict[str, Any], resource_type: str) -> bytes | None:
    """Refuse a forbidden character, at its path. The resource serialized in one call (orjson, native code)
    shows whether any can be there: only then is it walked key by key, value by value, to find it. Returns
    that text (None if orjson cannot write the resource) for the invariants to read."""
    try:
        text = dumps(resource)
    except (TypeError, ValueError):  # a lone surrogate (or what orjson cannot write): the walk says where
        find_bad_character(resource, resource_type)
        return None
    if _SUSPECT_ESCAPE.search(text) is not None:
        find_bad_character(resource, resource_type)
    return text


def find_bad_character(resource: dict[str, Any], resource_type: str) -> None:
    """Walk ``resource`` and raise :class:`InvalidResource` at the first forbidden character."""
    stack: list[tuple[Any, str]] = [(resource, resource_type)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if _FORBIDDEN.search(key):
                    raise _bad_character(f"{path}.{key!r}", key)
                stack.append((value, f"{path}.{key}"))
        elif isinstance(node, list):
            stack.extend((value, f"{path}[{index}]") for index, value in enumerate(node))
        elif isinstance(node, str) and _FORBIDDEN.search(node):
            raise _bad_character(path, node)


def _bad_character(path: str, text: str) -> InvalidResource:
    found = _FORBIDDEN.search(text)
    char = f"U+{ord(found.group()):04X}" if found else "a forbidden character"
    message = f"{char} is not allowed in a FHIR string (control characters below U+0020 and lone surrogates)"
    return InvalidResource([Issue("value", message, path)])


@lru_cache(maxsize=4096)
def is_repeating(path: str) -> bool | None:
    """Whether the element at ``Type.a.b`` repeats (an array in JSON), per the R4B models; None if unknown.

    FHIRPath Patch needs it: adding the first ``identifier`` must write an array, and only the
    element's definition says so.
    """
    resource_type, *names = path.split(".")
    try:
        model: Any = get_fhir_model_class(resource_type)
    except ValueError:
        return None
    repeats = None
    for name in names:
        field = model.model_fields.get(name) if model is not None else None
        if field is None:
            return None
        annotation, repeats = field.annotation, False
        # Unwrap Optional[...], List[...] and Annotated[...] down to the element's type.
        while typing.get_origin(annotation) in (typing.Union, types.UnionType, list, typing.Annotated):
            repeats = repeats or typing.get_origin(annotation) is list
            annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
        model = annotation.get_model_klass() if hasattr(annotation, "get_model_klass") else None
    return repeats
