"""Reading the FHIR R4 definition files, shared by the generators (never imported by the server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["core_definitions", "load"]


def load(directory: Path, name: str) -> Any:
    """One JSON file of the definitions directory (``profiles-resources.json``, ``valuesets.json``...)."""
    with (directory / name).open("rb") as file:
        return json.load(file)


def core_definitions(bundle: dict[str, Any], kinds: set[str]) -> dict[str, dict[str, Any]]:
    """The core StructureDefinitions of these kinds by type; profiles (``derivation: constraint``, such as
    SimpleQuantity or the vital signs) are left out: they are not the base definitions."""
    found = {}
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "StructureDefinition" and resource.get("kind") in kinds:
            if resource.get("derivation") == "constraint":
                continue
            found[resource["type"]] = resource
    return found
