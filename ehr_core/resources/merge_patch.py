"""JSON Merge Patch (RFC 7396): what fhirpy sends as a PATCH (a partial resource, ``null`` removes)."""

from __future__ import annotations

from typing import Any

__all__ = ["apply_merge_patch"]


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 §2: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result
