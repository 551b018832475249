"""The search test corpus: every Synthea bundle and the HL7 R4 examples, as plain resources.

This is TEST LOADING CODE, not the server's Bundle processing: the resources are PUT one by one with
their own ids so that the tests can compute expected results from the files alone. For that, the
Synthea bundles' references are rewritten here:

- ``smart-r4-2019`` transaction bundles: ``urn:uuid:X`` (a POST entry's fullUrl) → ``Type/X``, and the
  entry is PUT with id X;
- ``fhir-data-pipes-2021``: conditional references ``Practitioner?identifier=sys|val`` → the id of the
  resource in the batch files carrying that identifier.

HL7 examples: every non-Bundle example that the R4B models accept and whose type this server stores.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from ehr_core.resources.types import is_supported
from tests.conftest import CORPUS

__all__ = ["corpus_resources"]

SYNTHEA = CORPUS / "synthea"
EXAMPLES = CORPUS / "hl7-examples" / "r4-examples"
_CONDITIONAL = re.compile(r"^(?P<type>[A-Za-z]+)\?identifier=(?P<system>[^|]*)\|(?P<value>.+)$")


def _rewrite(value: Any, replace: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                out[key] = replace(item)
            else:
                out[key] = _rewrite(item, replace)
        return out
    if isinstance(value, list):
        return [_rewrite(item, replace) for item in value]
    return value


def _smart() -> Iterator[dict[str, Any]]:
    for path in sorted((SYNTHEA / "smart-r4-2019").glob("*.json")):
        bundle = json.loads(path.read_text())
        types = {
            entry["fullUrl"]: entry["resource"]["resourceType"]
            for entry in bundle["entry"]
            if entry.get("fullUrl", "").startswith("urn:uuid:")
        }

        def replace(reference: str, types: dict[str, str] = types) -> str:
            if reference in types:
                return f"{types[reference]}/{reference.removeprefix('urn:uuid:')}"
            return reference

        for entry in bundle["entry"]:
            resource = _rewrite(entry["resource"], replace)
            resource["id"] = entry["fullUrl"].removeprefix("urn:uuid:")
            yield resource


def _pipes() -> Iterator[dict[str, Any]]:
    folder = SYNTHEA / "fhir-data-pipes-2021"
    bundles = [(path, json.loads(path.read_text())) for path in sorted(folder.glob("*.json"))]
    # The batch files first: they define what conditional references point to.
    bundles.sort(key=lambda item: item[1]["type"] != "batch")
    by_identifier: dict[tuple[str, str, str], str] = {}
    for _, bundle in bundles:
        for entry in bundle["entry"]:
            resource = entry["resource"]
            for identifier in resource.get("identifier", []):
                key = (resource["resourceType"], identifier.get("system", ""), identifier.get("value", ""))
                by_identifier.setdefault(key, resource["id"])
    for _, bundle in bundles:
        types = {entry["fullUrl"]: entry["resource"]["resourceType"] for entry in bundle["entry"]}

        def replace(reference: str, types: dict[str, str] = types) -> str:
            found = _CONDITIONAL.match(reference)
            if found:
                key = (found["type"], found["system"], found["value"])
                return f"{found['type']}/{by_identifier[key]}"
            if reference in types:
                return f"{types[reference]}/{reference.removeprefix('urn:uuid:')}"
            return reference

        for entry in bundle["entry"]:
            yield _rewrite(entry["resource"], replace)


def _valid(resource: dict[str, Any]) -> bool:
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except Exception:
        return False
    return True


def _examples() -> Iterator[dict[str, Any]]:
    for path in sorted(EXAMPLES.glob("*.json")):
        resource = json.loads(path.read_text())
        kind = resource.get("resourceType")
        if kind == "Bundle" or not resource.get("id") or not is_supported(str(kind)) or not _valid(resource):
            continue
        yield resource


@cache
def corpus_resources() -> tuple[dict[str, Any], ...]:
    """Every resource to load, last write of each ``Type/id`` winning (Synthea repeats its practitioners)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for resource in (*_examples(), *_smart(), *_pipes()):
        latest[(resource["resourceType"], resource["id"])] = resource
    return tuple(latest.values())


def corpus_paths() -> list[Path]:
    return sorted(SYNTHEA.rglob("*.json")) + sorted(EXAMPLES.glob("*.json"))
