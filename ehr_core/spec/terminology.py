"""The CodeSystems and ValueSets FHIR R4 defines, as the terminology service reads them.

Generated data (``terminology.json.gz`` beside this module, written by
:mod:`ehr_core.spec.terminology_generator` from the R4 definitions; ``make spec``; the drift test
tests/unit/test_spec_generated.py fails when it differs). About 1,500 resources: read once, on the first
terminology request, never at import (most requests never need it).
"""

from __future__ import annotations

import functools
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = ["SpecTerminology", "spec_terminology"]

_DATA = Path(__file__).resolve().parent / "terminology.json.gz"


@dataclass(frozen=True)
class SpecTerminology:
    #: ``resourceType`` (CodeSystem, ValueSet) → canonical url → the (slimmed) resource.
    by_url: MappingProxyType[str, MappingProxyType[str, dict[str, Any]]]
    #: ``resourceType`` → logical id (as published in the spec) → the resource.
    by_id: MappingProxyType[str, MappingProxyType[str, dict[str, Any]]]

    def find(self, resource_type: str, url: str) -> dict[str, Any] | None:
        return self.by_url.get(resource_type, MappingProxyType({})).get(url)

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        return self.by_id.get(resource_type, MappingProxyType({})).get(resource_id)


@functools.cache
def spec_terminology() -> SpecTerminology:
    with gzip.open(_DATA, "rb") as file:
        resources: list[dict[str, Any]] = json.load(file)
    by_url: dict[str, dict[str, dict[str, Any]]] = {}
    by_id: dict[str, dict[str, dict[str, Any]]] = {}
    for resource in resources:
        kind = resource["resourceType"]
        by_url.setdefault(kind, {}).setdefault(resource["url"], resource)
        if resource.get("id"):
            by_id.setdefault(kind, {}).setdefault(resource["id"], resource)
    return SpecTerminology(
        MappingProxyType({k: MappingProxyType(v) for k, v in by_url.items()}),
        MappingProxyType({k: MappingProxyType(v) for k, v in by_id.items()}),
    )
