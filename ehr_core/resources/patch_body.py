"""Which patch a PATCH body is, as a function from the current resource to the patched one.

Three bodies are understood: JSON Patch (``application/json-patch+json``, or a Binary carrying one in a
Bundle), FHIRPath Patch (a ``Parameters`` resource, R4 §3.1.0.5) and JSON Merge Patch
(``application/merge-patch+json``, or a partial resource sent as plain JSON, as fhirpy does; in a Bundle, a
Binary whose ``contentType`` says so, which is how a conditional PATCH of one travels).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from ehr_core.errors import InvalidResource, Issue
from ehr_core.resources import json as fhir_json
from ehr_core.resources.fhirpath_patch import apply_fhirpath_patch
from ehr_core.resources.json_patch import apply_json_patch
from ehr_core.resources.merge_patch import apply_merge_patch
from ehr_core.resources.validation import is_repeating

__all__ = ["JSON_PATCH", "MERGE_PATCH", "Change", "patch_change"]

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"

Change = Callable[[dict[str, Any]], dict[str, Any]]
"""The current resource to the patched one; a patch that fails raises :class:`~ehr_core.errors.PatchError`
(:class:`~ehr_core.errors.MalformedPatch` or :class:`~ehr_core.errors.PatchNotApplicable`)."""


def _binary_json(binary: dict[str, Any], kind: str) -> Any:
    try:
        return fhir_json.loads(base64.b64decode(binary.get("data", ""), validate=True))
    except (ValueError, fhir_json.JsonError) as error:
        raise InvalidResource([Issue("invalid", f"Binary.data is not a base64 {kind}: {error}")]) from None


def patch_change(media_type: str | None, body: Any) -> Change:
    """The change ``body`` describes; ``media_type`` is the request's (None inside a Bundle)."""
    if media_type == JSON_PATCH:
        return lambda current: apply_json_patch(current, body)
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        return lambda current: apply_fhirpath_patch(current, body, is_repeating=is_repeating)
    if isinstance(body, dict) and body.get("resourceType") == "Binary" and media_type is None:
        if body.get("contentType") == MERGE_PATCH:
            merge = _binary_json(body, "JSON Merge Patch")
            if not isinstance(merge, dict):
                raise InvalidResource([Issue("invalid", "a JSON Merge Patch of a resource is a JSON object")])
            return lambda current: apply_merge_patch(current, merge)
        operations = _binary_json(body, "JSON Patch")
        return lambda current: apply_json_patch(current, operations)
    if media_type in (MERGE_PATCH, "application/json") and isinstance(body, dict):
        return lambda current: apply_merge_patch(current, body)
    raise InvalidResource(
        [Issue("invalid", f"PATCH takes {JSON_PATCH}, a FHIRPath Patch Parameters, or {MERGE_PATCH}")]
    )
