"""transaction and batch: ``POST [base]`` with a Bundle (R4 §3.1.0.11).

The domain (``ehr_core.bundles``) checks, resolves and appends the writes; this module answers the
GET/HEAD entries from the read models once the writes are visible, and writes the response Bundle.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ehr_core.bundles import Entry, EntryResult, parse_bundle, run_batch_entry, run_transaction
from ehr_core.context import WriteContext
from ehr_core.errors import Forbidden, InvalidResource, Issue, RecordError
from ehr_core.numbers import parse_int
from fhir_api.access import decide
from fhir_api.auth import Caller, caller_of, entry_need, scope_refusal
from fhir_api.errors import STATUS, ApiError
from fhir_api.interactions.visibility import after_commit
from fhir_api.outcome import operation_outcome
from fhir_api.request import ServicesDep, base_url, prefer_return, read_json_body, write_context
from fhir_api.resolver import ViewResolver
from fhir_api.responses import FHIR_JSON, etag
from fhir_api.services import Services
from projections.resources import ResourceViews

_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    410: "Gone",
    412: "Precondition Failed",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
}


def _status_line(status: int) -> str:
    return f"{status} {_REASONS.get(status, '')}".strip()


def _read_entry(services: Services, entry: Entry, caller: Caller | None) -> dict[str, Any]:
    """A GET/HEAD entry: read or vread of ``Type/id[/_history/vid]``, under the same rules as a read.

    With authentication on, the caller's scopes must grant reading the type (a patient scope only inside its
    patient's compartment, as for a read on its own) and the access policy (own records, consent; no
    break-the-glass inside a Bundle) must permit the resource, else the entry answers 403 and the rest of
    the Bundle goes on.
    """
    parts = entry.url.split("?")[0].split("/")
    if caller is not None and len(parts) >= 2:
        refusal = scope_refusal(services, caller, entry_need("GET", f"{parts[0]}/{parts[1]}"), {})
        if refusal is not None:
            return _failed(403, [Issue("forbidden", f"{entry.url}: {refusal}")])
        with services.views.read() as tx:
            decision = decide(tx, str(caller.claims["institution"]), target=(parts[0], parts[1]))
        if not decision.permitted:
            message = f"{entry.url} is another institution's record; it needs the patient's consent"
            return _failed(403, [Issue("forbidden", message)])
    with services.views.read() as tx:
        if len(parts) == 2:
            stored = ResourceViews.read(tx, parts[0], parts[1])
        elif len(parts) == 4 and parts[2] == "_history" and (version := parse_int(parts[3])) is not None:
            stored = ResourceViews.vread(tx, parts[0], parts[1], version)
        else:
            raise InvalidResource([Issue("not-supported", f"GET {entry.url} is not supported inside a Bundle")])
    if stored is None:
        return _failed(404, [Issue("not-found", f"{entry.url} is not known")])
    if stored.deleted:
        return _failed(410, [Issue("deleted", f"{entry.url} was deleted")])
    answer: dict[str, Any] = {
        "response": {"status": "200 OK", "etag": etag(stored.version), "lastModified": stored.last_updated}
    }
    if entry.method == "GET":
        answer["resource"] = orjson.Fragment(stored.body or b"")
    return answer


def _failed(status: int, issues: list[Issue]) -> dict[str, Any]:
    return {"response": {"status": _status_line(status), "outcome": orjson.Fragment(operation_outcome(issues))}}


def _answer(
    services: Services, result: EntryResult, base: str, prefer: str, caller: Caller | None = None
) -> dict[str, Any]:
    if result.deferred:
        try:
            return _read_entry(services, result.entry, caller)
        except RecordError as error:
            return _failed(STATUS[error.category], error.issues)
    response: dict[str, Any] = {"status": result.status}
    answer: dict[str, Any] = {"response": response}
    written = result.written
    if written is not None and written.body is not None:
        response["location"] = f"{written.resource_type}/{written.resource_id}/_history/{written.version}"
        response["etag"] = etag(written.version)
        if written.last_updated:
            response["lastModified"] = written.last_updated
        if prefer == "representation":
            answer["resource"] = orjson.Fragment(written.body)
        answer["fullUrl"] = f"{base}/{written.resource_type}/{written.resource_id}"
    return answer


def _entry_refusal(services: Services, caller: Caller | None, entry: Entry) -> RecordError | None:
    """403 for a write entry the caller's scopes do not allow (GET entries are decided when answered)."""
    if caller is None or entry.method in ("GET", "HEAD"):
        return None
    refusal = scope_refusal(services, caller, entry_need(entry.method, entry.url, entry.if_none_exist), {})
    if refusal is None:
        return None
    return Forbidden([Issue("forbidden", f"{entry.method} {entry.url}: {refusal}", f"Bundle.entry[{entry.index}]")])


def _transaction(
    services: Services, entries: list[Entry], context: WriteContext, caller: Caller | None
) -> list[EntryResult]:
    for entry in entries:  # R4 §3.1.0.11: a transaction fails as a whole when one entry would fail
        refused = _entry_refusal(services, caller, entry)
        if refused is not None:
            raise refused
    viewer = caller.viewer() if caller is not None else None
    results = run_transaction(services.application, entries, context, ViewResolver(services, viewer))
    ids = [r.written.notification_id for r in results if r.written and r.written.notification_id]
    if ids:  # committed: a views outage now must not turn it into a 503
        after_commit(lambda: services.projector.catch_up(until=max(ids)), "transaction")
    return results


def _batch(
    services: Services, entries: list[Entry], context: WriteContext, caller: Caller | None
) -> list[EntryResult | RecordError]:
    outcomes: list[EntryResult | RecordError] = []
    resolver = ViewResolver(services, caller.viewer() if caller is not None else None)
    for entry in entries:
        refused = _entry_refusal(services, caller, entry)
        if refused is not None:
            outcomes.append(refused)
            continue
        try:
            result = run_batch_entry(services.application, entry, context, resolver)
            written = result.written
            if written is not None and written.notification_id is not None:
                catch_up = partial(services.projector.catch_up, until=written.notification_id)
                after_commit(catch_up, "batch entry")  # committed: a views outage is waited out
            outcomes.append(result)
        except RecordError as error:
            outcomes.append(error)
    return outcomes


async def transaction(request: Request, services: ServicesDep) -> Response:
    """POST [base] with a transaction or batch Bundle (mounted on the base URL itself by routes.py)."""
    bundle = await read_json_body(request)
    kind, entries = parse_bundle(bundle)
    limit = services.settings.max_bundle_entries
    if len(entries) > limit:
        raise ApiError(
            "too-large", f"the Bundle has {len(entries)} entries; at most {limit} are accepted", "too-costly"
        )
    context = write_context(request, kind)
    base, prefer = base_url(request), prefer_return(request, default="minimal")
    caller = caller_of(request)  # every entry is decided like the same request on its own
    answers: list[dict[str, Any]] = []
    if kind == "transaction":
        results = await run_in_threadpool(_transaction, services, entries, context, caller)
        for result in results:
            answers.append(await run_in_threadpool(_answer, services, result, base, prefer, caller))
    else:
        for outcome in await run_in_threadpool(_batch, services, entries, context, caller):
            if isinstance(outcome, RecordError):
                answers.append(_failed(STATUS[outcome.category], outcome.issues))
            else:
                answers.append(await run_in_threadpool(_answer, services, outcome, base, prefer, caller))
    response_bundle = {"resourceType": "Bundle", "type": f"{kind}-response", "entry": answers}
    return Response(orjson.dumps(response_bundle), media_type=FHIR_JSON)
