"""JSON Patch (RFC 6902, ``Content-Type: application/json-patch+json``) for the FHIR ``patch``
interaction (R4 http.html#patch), as a pure function over resource JSON: :func:`apply_json_patch`.

What it shares with FHIRPath Patch (copying, errors) is described in :mod:`ehr_core.resources.patch_common`.
"""

from __future__ import annotations

from typing import Any

import jsonpatch
import jsonpointer

from ehr_core.errors import MalformedPatch, PatchError, PatchNotApplicable
from ehr_core.resources.patch_common import copy_json, json_type

__all__ = ["apply_json_patch"]


# RFC 6902 §4: the operations and the members each one requires besides "op" and "path".
_JSON_PATCH_MEMBERS: dict[str, tuple[str, ...]] = {
    "add": ("value",),
    "remove": (),
    "replace": ("value",),
    "move": ("from",),
    "copy": ("from",),
    "test": ("value",),
}


def apply_json_patch(resource: dict[str, Any], operations: Any) -> dict[str, Any]:
    """Apply an RFC 6902 JSON Patch document (the parsed request body) to a copy of ``resource``.

    Operations apply in order and all-or-nothing (RFC 6902 §5): the first one that fails raises
    :class:`PatchError` and no partial result escapes. Members an operation does not use are ignored
    (§4, "Members that are not explicitly defined for the operation in question MUST be ignored").
    """
    if not isinstance(operations, list):
        raise MalformedPatch(f"a JSON Patch document must be a JSON array of operations, not {json_type(operations)}")
    # Check the whole document before applying anything, so a malformed patch is always reported as
    # malformed, whatever the resource holds.
    checked = [_check_json_operation(index, operation) for index, operation in enumerate(operations)]
    document: Any = copy_json(resource)
    for index, operation in enumerate(checked):
        # One operation at a time, so a failure can be pinned to its index. The document is our own
        # copy, so applying in place is safe and avoids jsonpatch's deepcopy of the whole resource.
        try:
            document = jsonpatch.JsonPatch([operation]).apply(document, in_place=True)
        except jsonpatch.JsonPatchTestFailed:
            raise _json_patch_error(index, operation, _test_failure(document, operation)) from None
        except (jsonpatch.JsonPatchConflict, jsonpointer.JsonPointerException):
            raise _json_patch_error(index, operation, _conflict(document, operation)) from None
        except jsonpatch.InvalidJsonPatch as error:  # pragma: no cover - _check_json_operation rules these out
            raise _json_patch_error(index, operation, str(error), MalformedPatch) from None
    if not isinstance(document, dict):
        raise PatchNotApplicable(
            f"the patch replaces the whole resource with {json_type(document)}; a resource is a JSON object"
        )
    return document


def _json_patch_error(
    index: int, operation: dict[str, Any], reason: str, kind: type[PatchError] = PatchNotApplicable
) -> PatchError:
    summary = f"{operation['op']} {operation['path'] or '(the whole document)'}"
    return kind(f"JSON Patch operation at index {index} ({summary}): {reason}", index=index)


def _check_json_operation(index: int, operation: Any) -> dict[str, Any]:
    """Reject a malformed operation (RFC 6902 §4); return a private copy of it."""

    def malformed(reason: str) -> MalformedPatch:
        return MalformedPatch(f"JSON Patch operation at index {index} {reason}", index=index)

    if not isinstance(operation, dict):
        raise malformed(f"is {json_type(operation)}; each operation must be a JSON object")
    op = operation.get("op")
    if not isinstance(op, str) or op not in _JSON_PATCH_MEMBERS:
        known = ", ".join(_JSON_PATCH_MEMBERS)
        raise malformed(f"has no valid 'op' member (found {op!r}; expected one of {known})")
    for member in ("path", *_JSON_PATCH_MEMBERS[op]):
        if member not in operation:
            raise malformed(f"({op}) has no '{member}' member")
        if member in ("path", "from"):
            pointer = operation[member]
            if not isinstance(pointer, str):
                raise malformed(f"({op}) has a '{member}' that is not a string")
            try:
                jsonpointer.JsonPointer(pointer)
            except jsonpointer.JsonPointerException as error:
                raise malformed(f"({op}) has a '{member}' that is not a JSON Pointer: {error}") from None
    # RFC 6902 §4.4: "The 'from' location MUST NOT be a proper prefix of the 'path' location".
    if op == "move" and operation["path"].startswith(operation["from"] + "/"):
        raise malformed(f"(move) would move {operation['from']} into one of its own children")
    copied: dict[str, Any] = copy_json(operation)
    return copied


def _test_failure(document: Any, operation: dict[str, Any]) -> str:
    problem = _pointer_problem(document, operation["path"], creating=False)
    if problem is not None:
        return f"the test failed because {problem}"
    return "the test failed: the value at the path is not equal to the value given in the operation"


def _conflict(document: Any, operation: dict[str, Any]) -> str:
    op = operation["op"]
    if op in ("move", "copy"):
        problem = _pointer_problem(document, operation["from"], creating=False)
        if problem is not None:
            return f"the 'from' location cannot be read: {problem}"
    problem = _pointer_problem(document, operation["path"], creating=op in ("add", "move", "copy"))
    if problem is not None:
        return problem
    return "the operation conflicts with the document"  # pragma: no cover - every known cause is named above


def _pointer_problem(document: Any, pointer: str, *, creating: bool) -> str | None:
    """Say in words why ``pointer`` does not reach a value (or, when ``creating``, a place for a new
    one: its parent must exist, RFC 6902 §4.1); ``None`` when it does."""
    parts = jsonpointer.JsonPointer(pointer).parts
    node = document
    walked = ""
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        here = f"{walked}/{part.replace('~', '~0').replace('/', '~1')}"
        where = walked or "the document root"
        if isinstance(node, dict):
            if part not in node:
                if last and creating:
                    return None
                if creating:
                    return f"{here} does not exist (JSON Patch does not create missing parent objects)"
                return f"{here} does not exist"
            node = node[part]
        elif isinstance(node, list):
            if part == "-" and last and creating:
                return None
            if part == "-" or not part.isdecimal() or (len(part) > 1 and part.startswith("0")):
                return f"{where} is an array, and '{part}' is not an index into it"
            limit = len(node) if last and creating else len(node) - 1
            if int(part) > limit:
                return f"index {part} is beyond the end of the array at {where}, which has {len(node)} items"
            node = node[int(part)]
        else:
            return f"{where} is {json_type(node)}, which has no member '{part}'"
        walked = here
    return None
