"""Conformance resources this server ships as data: the Mexican profiles (``mx/``), MXPatient and MXCondition,
and the CIE-10 value set MXCondition binds to.

They are found behind the stored ones (a deployment may PUT its own version of the same canonical url,
which then wins), the way the spec's terminology is (``ehr_core.spec.terminology``): no set-up step, and
nothing appended to the log at start-up.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import orjson

__all__ = ["shipped", "shipped_resource"]

_HERE = Path(__file__).parent


@cache
def shipped() -> tuple[dict[str, Any], ...]:
    """Every shipped resource, in file-name order."""
    return tuple(orjson.loads(path.read_bytes()) for path in sorted(_HERE.glob("*/*.json")))


def shipped_resource(resource_type: str, url: str, version: str | None = None) -> dict[str, Any] | None:
    """The shipped resource of that type and canonical url (and version, when given)."""
    for resource in shipped():
        same = resource["resourceType"] == resource_type and resource.get("url") == url
        if same and (not version or resource.get("version") == version):
            return resource
    return None
