"""The unified record as it was at a recorded instant, from the API's as-of reads (``GET [type]/[id]?_at=``).

``$everything`` lists the current resources of every linked record. For each one:

- recorded at or before the instant (``meta.lastUpdated``): the current version is the one it had then;
- first version recorded after the instant: it did not exist yet;
- otherwise (changed since): the API's ``_at`` read answers the version current then (404: not yet there,
  410: deleted then). These reads run concurrently; each is checked and audited by the API like any read.

Known limits (said on the page): resources deleted since the instant are not listed by ``$everything``,
and the links between records are today's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_api.web.fhir_client import InternalFhir

__all__ = ["AsOf", "as_of", "parse_moment"]

_CONCURRENT_READS = 16


@dataclass
class AsOf:
    resources: list[dict[str, Any]]
    changed: int
    absent: int


def parse_moment(local: str, zone: str) -> datetime:
    """``2026-04-09T10:00`` and ``-06:00`` → an aware datetime; ValueError when malformed."""
    zone = "+00:00" if zone in ("Z", "UTC", "") else zone
    moment = datetime.fromisoformat(f"{local.strip()}{zone}")
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    return moment


def _recorded(resource: dict[str, Any]) -> datetime | None:
    text = str((resource.get("meta") or {}).get("lastUpdated") or "")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


async def as_of(fhir: InternalFhir, current: list[dict[str, Any]], moment: datetime, break_glass: str | None) -> AsOf:
    kept: list[dict[str, Any]] = []
    earlier: list[dict[str, Any]] = []
    absent = 0
    for resource in current:
        recorded = _recorded(resource)
        if recorded is not None and recorded <= moment:
            kept.append(resource)
        elif str((resource.get("meta") or {}).get("versionId")) == "1":
            absent += 1
        else:
            earlier.append(resource)
    instant = moment.isoformat()
    limit = asyncio.Semaphore(_CONCURRENT_READS)

    async def read(resource: dict[str, Any]) -> dict[str, Any] | None:
        async with limit:
            answer = await fhir.get(
                f"/fhir/{resource['resourceType']}/{resource['id']}", {"_at": instant}, break_glass=break_glass
            )
        if not answer.ok:
            return None
        document = answer.json()
        if not isinstance(document, dict):
            return None
        # The as-of read serves stored bytes: keep the attribution $everything gave the resource.
        source = (resource.get("meta") or {}).get("source")
        if source:
            document.setdefault("meta", {}).setdefault("source", source)
        return document

    found = await asyncio.gather(*(read(r) for r in earlier))
    then = [r for r in found if r is not None]
    absent += len(found) - len(then)
    return AsOf(kept + then, changed=len(then), absent=absent)
