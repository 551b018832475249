"""What the patch formats of the FHIR ``patch`` interaction (R4 http.html#patch) share.

JSON Patch (RFC 6902, :mod:`ehr_core.resources.json_patch`) and FHIRPath Patch (R4 fhirpatch.html,
:mod:`ehr_core.resources.fhirpath_patch`) both work on resource JSON as parsed by
:mod:`ehr_core.resources.json`, return a new structure and never change their input. Values are never
re-encoded: a :class:`~ehr_core.resources.json.JsonDecimal` is carried over as the same object, so ``1.50``
stays ``1.50`` when the result is written back.

A failure is a :class:`~ehr_core.errors.PatchError`: :class:`~ehr_core.errors.MalformedPatch` when the
patch document is wrong, :class:`~ehr_core.errors.PatchNotApplicable` when a well-formed patch does not
apply to this resource. Its message names the operation that failed (by its 0-based position in the
patch) and why, in words fit for an OperationOutcome. Neither format validates the result against the
FHIR model: the caller does that next, as it does for any update (R4 fhirpatch.html: "Servers SHALL
return an error if the outcome of the patch operation is a not a valid resource").
"""

from __future__ import annotations

from typing import Any

__all__ = ["copy_json", "json_type"]


def copy_json(value: Any) -> Any:
    """Deep-copy parsed JSON. Scalars (``str``, ``int``, ``bool``, ``None``, ``JsonDecimal``) are
    immutable and shared as they are, so a decimal keeps its original text."""
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    return value


def json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
