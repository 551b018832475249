"""What the terminology operations share (R4 terminology-service.html): reading a code from ``code`` and
``system`` or from a Coding, paging numbers, the value set an operation works on, the JSON answer.

The operations themselves are one module each: ``lookup``, ``subsumes``, ``expand``, ``validate_code``,
``translate``. They read the terminology store (:mod:`projections.terminology`), caught up with this
server's log first, so a CodeSystem just stored answers at once (read-your-writes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi.responses import Response

from ehr_core.errors import InvalidResource, Issue, NotFound
from ehr_core.numbers import parse_int
from fhir_api.operations.parameters import OperationInput
from fhir_api.responses import FHIR_JSON
from fhir_api.threads import in_thread
from projections.db import Tx
from projections.terminology.store import TerminologyStore

__all__ = ["answer", "canonical", "coded", "non_negative", "target_value_set"]


def canonical(value: str) -> tuple[str, str | None]:
    """``url|version`` (R4 references.html#canonical) as (url, version)."""
    url, bar, version = value.partition("|")
    return url, (version or None) if bar else None


def coded(given: OperationInput, code: str, system: str, coding: str) -> tuple[str | None, str | None]:
    """(system, code) from ``code`` and ``system``, or from a Coding (given as ``system|code``), not both."""
    from_coding = given.first(coding)
    if from_coding is not None:
        if given.first(code) is not None:
            raise InvalidResource([Issue("invalid", f"give {code} or {coding}, not both", coding)])
        found_system, bar, found_code = from_coding.partition("|")
        return (found_system or None, found_code) if bar else (given.first(system), found_system)
    return given.first(system), given.first(code)


def non_negative(given: OperationInput, name: str) -> int | None:
    text = given.first(name)
    if text is None:
        return None
    value = parse_int(text)
    if value is None:
        raise InvalidResource([Issue("invalid", f"{name} must be a non-negative integer, not {text!r}", name)])
    return value


def target_value_set(tx: Tx, given: OperationInput, resource_id: str | None) -> dict[str, Any]:
    """The value set of ``$expand`` or ``$validate-code``: the instance, the ``valueSet`` posted, or ``url``."""
    url = given.first("url")
    posted = given.resource("valueSet")
    if resource_id is not None:
        if url is not None or posted is not None:
            raise InvalidResource([Issue("invalid", "an instance-level call names its value set by id only", "url")])
        found = TerminologyStore.read(tx, "ValueSet", resource_id)
        if found is None:
            raise NotFound(f"ValueSet/{resource_id} is not known to this server")
        return found
    if posted is not None:
        if url is not None:
            raise InvalidResource([Issue("invalid", "give url or valueSet, not both", "valueSet")])
        if posted.get("resourceType") != "ValueSet":
            raise InvalidResource([Issue("invalid", "valueSet must hold a ValueSet", "valueSet")])
        return posted
    if url is None:
        raise InvalidResource([Issue("required", "url (the value set's canonical url) is required", "url")])
    bare, version = canonical(url)
    version = version or given.first("valueSetVersion")
    found = TerminologyStore.find(tx, "ValueSet", bare, version)
    if found is None:
        named = f"{bare}|{version}" if version else bare
        raise NotFound(f"the value set {named} is not known to this server")
    return found


async def answer(work: Callable[..., dict[str, Any]], *args: Any) -> Response:
    """Run ``work`` (it reads the database) off the event loop; answer its resource as FHIR JSON."""
    body = await in_thread(work, *args)
    return Response(orjson.dumps(body), media_type=FHIR_JSON)
