"""CodeSystem building blocks for the terminology and token-modifier tests."""

from __future__ import annotations

from typing import Any


def concept(code: str, display: str, *children: dict[str, Any]) -> dict[str, Any]:
    """A ``CodeSystem.concept`` with its children (R4 codesystem.html: the hierarchy is the nesting)."""
    found: dict[str, Any] = {"code": code, "display": display}
    if children:
        found["concept"] = list(children)
    return found
