"""Generate ``ehr_core/spec/r4_only.json.gz``: the element table of the R4 resource types R4B removed.

The models this server validates with are R4B's (``fhir.resources`` 8 ships R4B and STU3, no R4), so the
18 R4 types R4B dropped (``ehr_core.resources.types.REMOVED_IN_R4B``) have no model. Their structure is
taken from the R4 StructureDefinitions (``profiles-resources.json``, the snapshots): for each element path,
``[min, max, [type codes]]``, or ``[min, max, "#Path"]`` for a ``contentReference`` (a backbone element
that repeats another's definition). ``ehr_core/resources/r4_only.py`` checks instances against it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from ehr_core.resources.types import REMOVED_IN_R4B

__all__ = ["r4_only_table"]

_FHIRPATH_STRING = "http://hl7.org/fhirpath/System.String"


def _types(element: dict[str, Any]) -> list[str] | str:
    if "contentReference" in element:
        return str(element["contentReference"])
    codes = [t["code"] for t in element.get("type", [])]
    return ["string" if code == _FHIRPATH_STRING else code for code in codes]


def r4_only_table(directory: Path) -> bytes:
    with (directory / "profiles-resources.json").open("rb") as file:
        bundle = json.load(file)
    table: dict[str, dict[str, list[Any]]] = {}
    for entry in bundle.get("entry", []):
        structure = entry.get("resource", {})
        if structure.get("resourceType") != "StructureDefinition" or structure.get("id") not in REMOVED_IN_R4B:
            continue
        elements = structure["snapshot"]["element"]
        table[structure["id"]] = {e["path"]: [e.get("min", 0), e.get("max", "*"), _types(e)] for e in elements[1:]}
    text = json.dumps(dict(sorted(table.items())), sort_keys=True, separators=(",", ":")).encode("utf-8")
    return gzip.compress(text, mtime=0)
