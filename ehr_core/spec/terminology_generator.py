"""Generate ``ehr_core/spec/terminology.json.gz``: the CodeSystems and ValueSets of FHIR R4, for the
terminology service (R4 terminology-service.html).

Reads ``valuesets.json`` (the FHIR-defined code systems and value sets) and ``v3-codesystems.json`` (the
HL7 v3 ones) and keeps what the operations read: each resource's identity (url, version, name, title,
status), a CodeSystem's ``content``, ``caseSensitive``, ``hierarchyMeaning``, property and filter
declarations and its concept tree (code, display, designations, properties), a ValueSet's ``compose`` and
``expansion``. Narrative, extensions and definitions are left out: no operation answers them, and they are
most of the bytes. The result is a gzip'd JSON list (stable: keys sorted, no timestamp in the gzip header),
loaded lazily by :mod:`ehr_core.spec.terminology`.

Run through ``python -m ehr_core.spec.generate`` (``make spec``); the server never imports this module.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

__all__ = ["terminology_tables"]

_SOURCES = ("valuesets.json", "v3-codesystems.json")
_CODE_SYSTEM_KEYS = (
    "url",
    "version",
    "name",
    "title",
    "status",
    "content",
    "caseSensitive",
    "hierarchyMeaning",
    "valueSet",
    "property",
    "filter",
    "count",
    "supplements",
)
_VALUE_SET_KEYS = ("url", "version", "name", "title", "status", "compose", "expansion")


def _concept(concept: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {"code": concept["code"]}
    if "display" in concept:
        kept["display"] = concept["display"]
    designations = [
        {key: d[key] for key in ("language", "use", "value") if key in d} for d in concept.get("designation", [])
    ]
    if designations:
        kept["designation"] = designations
    if concept.get("property"):
        kept["property"] = concept["property"]
    if concept.get("concept"):
        kept["concept"] = [_concept(child) for child in concept["concept"]]
    return kept


def _slim(resource: dict[str, Any]) -> dict[str, Any] | None:
    kind = resource.get("resourceType")
    if kind == "CodeSystem":
        kept = {"resourceType": kind, "id": resource.get("id")}
        kept.update({key: resource[key] for key in _CODE_SYSTEM_KEYS if key in resource})
        if resource.get("concept"):
            kept["concept"] = [_concept(concept) for concept in resource["concept"]]
        return kept
    if kind == "ValueSet":
        kept = {"resourceType": kind, "id": resource.get("id")}
        kept.update({key: resource[key] for key in _VALUE_SET_KEYS if key in resource})
        return kept
    return None


def terminology_tables(directory: Path) -> bytes:
    """The bytes of ``ehr_core/spec/terminology.json.gz``: one entry per (resourceType, url), first seen kept."""
    kept: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for name in _SOURCES:
        with (directory / name).open("rb") as file:
            bundle = json.load(file)
        for entry in bundle.get("entry", []):
            slim = _slim(entry.get("resource", {}))
            if slim is None or not slim.get("url"):
                continue
            key = (slim["resourceType"], slim["url"])
            if key in seen:
                continue
            seen.add(key)
            kept.append(slim)
    data = json.dumps(kept, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return gzip.compress(data, compresslevel=9, mtime=0)
