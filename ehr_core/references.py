"""Rewriting references inside a Bundle's resources (R4 §3.1.0.11.2 "Transaction Processing Rules").

Temporary ids (``urn:uuid:``, ``urn:oid:``) become the ids the server assigned, and conditional
references (``Practitioner?identifier=sys|val``) become the one resource they match.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["CONDITIONAL_REFERENCE", "rewrite_references"]

CONDITIONAL_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$")


def rewrite_references(node: Any, resolve: Callable[[str], str | None]) -> Any:
    """A copy of ``node`` with every ``reference`` value that ``resolve`` maps replaced.

    ``resolve`` returns the new reference, or None to keep the value (contained ``#id`` references,
    ordinary ``Type/id`` ones). Only what changes is copied.
    """
    if isinstance(node, dict):
        changed: dict[str, Any] | None = None
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                new: Any = resolve(value)
                new = value if new is None else new
            else:
                new = rewrite_references(value, resolve) if isinstance(value, dict | list) else value
            if new is not value:
                if changed is None:
                    changed = dict(node)
                changed[key] = new
        return node if changed is None else changed
    if isinstance(node, list):
        items = [rewrite_references(item, resolve) for item in node]
        return node if all(a is b for a, b in zip(items, node, strict=True)) else items
    return node
