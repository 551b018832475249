"""transaction and batch: ``POST [base]`` with a Bundle (R4 §3.1.0.11).

The domain (``ehr_core.bundles``) checks, resolves and appends the writes; this module answers the
GET/HEAD entries (reads, and searches answered as ``searchset`` Bundles) and writes the response Bundle.
In a transaction the GET entries are evaluated before the one atomic append, against the record as the
transaction's writes leave it, so that any entry's failure stores nothing (R4 §3.1.0.11.2); in a batch each
entry succeeds or fails on its own (R4 §3.1.0.11.1).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import Request
from fastapi.responses import Response

from ehr_core.application import Written
from ehr_core.bundles import (
    Entry,
    EntryResult,
    entry_error,
    operation_of,
    parse_bundle,
    prepare_transaction,
    run_batch_entry,
)
from ehr_core.context import WriteContext
from ehr_core.errors import Deleted, Forbidden, InvalidResource, Issue, NotFound, RecordError
from ehr_core.numbers import parse_int
from ehr_core.resources.types import is_supported
from fhir_api.access import decide
from fhir_api.auth import Caller, caller_of, entry_need, scope_refusal
from fhir_api.errors import STATUS, ApiError
from fhir_api.interactions.search import compartment_bundle, search_bundle, strict_handling, system_bundle
from fhir_api.interactions.visibility import UNAVAILABLE, after_commit
from fhir_api.outcome import operation_outcome
from fhir_api.request import ServicesDep, base_url, prefer_return, read_json_body, require_type, write_context
from fhir_api.resolver import ViewResolver
from fhir_api.responses import FHIR_JSON, etag
from fhir_api.services import Services
from fhir_api.threads import in_thread
from projections.resources import ResourceViews
from projections.search import parse_search

log = logging.getLogger(__name__)

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


#: R4 §3.2.0.1.1 general parameters: they shape how an answer is written, which a Bundle entry does not choose.
_FORMAT_PARAMETERS = frozenset({"_format", "_pretty"})


def _segments(url: str) -> list[str]:
    path = url.split("?", 1)[0].strip("/")
    return path.split("/") if path else []


def _pairs(url: str) -> list[tuple[str, str]]:
    return parse_qsl(url.split("?", 1)[1], keep_blank_values=True) if "?" in url else []


def _is_search(entry: Entry) -> bool:
    """A GET/HEAD entry that searches (``Type?params``, ``Type``, ``?_type=``, ``Patient/{id}/Type``)."""
    parts = _segments(entry.url)
    return len(parts) != 2 and not (len(parts) == 4 and parts[2] == "_history")


def _unsupported(entry: Entry, what: str) -> InvalidResource:
    return InvalidResource([Issue("not-supported", f"{entry.method} {entry.url}: {what} is not supported in a Bundle")])


def _read_entry(
    services: Services, entry: Entry, caller: Caller | None, own: dict[str, Written] | None = None
) -> dict[str, Any]:
    """A GET/HEAD read or vread entry (``Type/id[/_history/vid]``), under the same rules as a read.

    With authentication on, the caller's scopes must grant reading the type (a patient scope only inside its
    patient's compartment, as for a read on its own) and the access policy (own records, consent; no
    break-the-glass inside a Bundle) must permit the resource, else the entry fails with 403. ``own`` holds
    the versions a transaction is about to append (``Type/id`` -> write): R4 §3.1.0.11.2 processes GET
    entries after the writes, so they read those versions (the caller's own writes: no policy to apply).
    Raises the entry's error (RecordError) instead of answering it.
    """
    if operation_of(entry.url) is not None:
        raise _unsupported(entry, f"the operation {operation_of(entry.url)}")
    parts = _segments(entry.url)
    resource_type, resource_id = parts[0], parts[1]
    if resource_id == "_history":
        raise _unsupported(entry, "history")
    require_type(resource_type)
    version: int | None = None
    if len(parts) == 4:
        version = parse_int(parts[3])
        if version is None:
            raise InvalidResource([Issue("invalid", f"version id must be a number, got {parts[3]!r}")])
    key = f"{resource_type}/{resource_id}"
    if caller is not None:
        refusal = scope_refusal(services, caller, entry_need("GET", key), {})
        if refusal is not None:
            raise Forbidden([Issue("forbidden", f"{entry.method} {entry.url}: {refusal}")])
    written = (own or {}).get(key)
    if written is not None and (version is None or version == written.version):
        if written.body is None:
            raise Deleted(f"{key} is deleted by this transaction")
        return _read_answer(entry, written.version, written.last_updated, written.body)
    if caller is not None:
        with services.views.read() as tx:
            decision = decide(tx, str(caller.claims["institution"]), target=(resource_type, resource_id))
        if not decision.permitted:
            raise Forbidden(f"{entry.url} is another institution's record; it needs the patient's consent")
    with services.views.read() as tx:
        if version is None:
            stored = ResourceViews.read(tx, resource_type, resource_id)
        else:
            stored = ResourceViews.vread(tx, resource_type, resource_id, version)
    if stored is None:
        raise NotFound(f"{entry.url} is not known")
    if stored.deleted:
        raise Deleted(f"{entry.url} was deleted")
    return _read_answer(entry, stored.version, stored.last_updated, stored.body or b"")


def _read_answer(entry: Entry, version: int, last_updated: str, body: bytes) -> dict[str, Any]:
    answer: dict[str, Any] = {"response": {"status": "200 OK", "etag": etag(version), "lastModified": last_updated}}
    if entry.method == "GET":
        answer["resource"] = orjson.Fragment(body)
    return answer


def _search_entry(services: Services, entry: Entry, caller: Caller | None, base: str, strict: bool) -> dict[str, Any]:
    """A search entry (R4 §3.1.0.11: ``GET Patient?name=peter`` inside a batch or transaction), answered with
    a ``searchset`` Bundle in ``entry.resource``, under the same scopes and access policy as the same search
    sent on its own: the scope check of a direct search, and the caller's viewer in the query (so matches,
    ``total`` and includes hold only what the caller may read). No break-the-glass inside a Bundle."""
    parts = _segments(entry.url)
    operation = operation_of(entry.url)
    if operation is not None:
        raise _unsupported(entry, f"the operation {operation}")
    if "_history" in parts:
        raise _unsupported(entry, "history")
    compartment = len(parts) == 3 and parts[0] == "Patient"
    if len(parts) > 1 and not compartment:
        raise InvalidResource([Issue("invalid", f"{entry.method} {entry.url} is neither a read nor a search")])
    pairs = _pairs(entry.url)
    if caller is not None:
        query: dict[str, list[str]] = {}
        for name, value in pairs:
            query.setdefault(name, []).append(value)
        refusal = scope_refusal(services, caller, entry_need("GET", entry.url), query)
        if refusal is not None:
            raise Forbidden([Issue("forbidden", f"{entry.method} {entry.url}: {refusal}")])
    viewer = caller.viewer() if caller is not None else None
    if not parts:  # system search, GET ?_type=... (R4 §3.1.1.1)
        bundle = system_bundle(services, pairs, base, strict, viewer)[0]
    elif compartment:  # GET Patient/[id]/[type]?... (R4 §3.1.1.1 "Compartment search")
        bundle = compartment_bundle(services, parts[1], require_type(parts[2]), pairs, base, strict, viewer)
    else:
        bundle = search_bundle(services, require_type(parts[0]), pairs, base, strict, viewer)
    answer: dict[str, Any] = {"response": {"status": "200 OK"}}
    if entry.method == "GET":
        answer["resource"] = bundle
    return answer


def _get_entry(
    services: Services,
    entry: Entry,
    caller: Caller | None,
    base: str,
    strict: bool,
    own: dict[str, Written] | None = None,
) -> dict[str, Any]:
    if _is_search(entry):
        return _search_entry(services, entry, caller, base, strict)
    return _read_entry(services, entry, caller, own)


def _failed(status: int, issues: list[Issue]) -> dict[str, Any]:
    return {"response": {"status": _status_line(status), "outcome": orjson.Fragment(operation_outcome(issues))}}


def _write_answer(result: EntryResult, base: str, prefer: str, warnings: list[Issue]) -> dict[str, Any]:
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
    if warnings:
        response["outcome"] = orjson.Fragment(operation_outcome(warnings))
    return answer


def _entry_refusal(services: Services, caller: Caller | None, entry: Entry) -> RecordError | None:
    """403 for a write entry the caller's scopes do not allow (GET entries are decided when answered)."""
    if caller is None or entry.method in ("GET", "HEAD"):
        return None
    refusal = scope_refusal(services, caller, entry_need(entry.method, entry.url, entry.if_none_exist), {})
    if refusal is None:
        return None
    return entry_error(entry.index, Forbidden([Issue("forbidden", f"{entry.method} {entry.url}: {refusal}")]))


def _as_over_rest(entry: Entry) -> tuple[Entry, list[Issue]]:
    """A write entry's url with its query string read as the same request over REST would read it.

    R4 §3.1.0.11: each entry is processed as the request on its own. On a url that names no search (``POST
    Type``, ``PUT``/``PATCH``/``DELETE Type/id``) the REST interaction ignores the query string, so the entry
    does too: ``_format``/``_pretty`` silently (they only shape a REST answer), anything else with a warning
    in the entry's outcome. On a conditional url (``PUT Type?criteria``) the criteria stay; ``_``-prefixed
    parameters that are not search parameters of the type are ignored with a warning, as a direct search
    leaves out result parameters; an unknown criterion still fails (a condition is never silently widened).
    """
    if entry.method in ("GET", "HEAD") or "?" not in entry.url:
        return entry, []
    parts = _segments(entry.url)
    pairs = _pairs(entry.url)
    path = "/".join(parts)
    conditional = entry.method != "POST" and len(parts) == 1
    unknown: set[str] = set()
    if conditional and is_supported(path):
        # A malformed criterion fails the entry where it is processed, named as the failing entry.
        with contextlib.suppress(RecordError):
            unknown = {name for name in parse_search(path, pairs).unknown if name.startswith("_")}
    kept: list[tuple[str, str]] = []
    ignored: list[str] = []
    for name, value in pairs:
        if name in _FORMAT_PARAMETERS:
            continue
        if conditional and name not in unknown:
            kept.append((name, value))
        elif name not in ignored:
            ignored.append(name)
    if pairs and len(kept) == len(pairs):
        return entry, []
    warnings = [
        Issue(
            "not-supported",
            f"the parameter {name} of {entry.method} {path} was ignored, as it is over REST",
            f"Bundle.entry[{entry.index}].request.url",
            "warning",
        )
        for name in ignored
    ]
    url = path + (f"?{urlencode(kept)}" if kept else "")
    return replace(entry, url=url), warnings


def _transaction(
    services: Services, entries: list[Entry], context: WriteContext, caller: Caller | None, base: str, strict: bool
) -> tuple[list[EntryResult], dict[int, dict[str, Any]]]:
    """Every entry evaluated as one unit: the writes prepared, then the GET/HEAD entries answered against the
    record as the writes leave it, then one atomic append. R4 §3.1.0.11.2: a transaction succeeds or fails
    as a whole, so a GET entry's failure (404, 410, 403, a search's 400) stores nothing either: the reads run
    before the append. Searches are checked (and answered) before it too, and answered again after it from
    views that hold the transaction's writes, so a search entry sees them as a read entry does."""
    for entry in entries:
        refused = _entry_refusal(services, caller, entry)
        if refused is not None:
            raise refused
    viewer = caller.viewer() if caller is not None else None
    prepared = prepare_transaction(services.application, entries, context, ViewResolver(services, viewer))
    own = {f"{p.written.resource_type}/{p.written.resource_id}": p.written for _, p, _ in prepared.pendings}
    reads: dict[int, dict[str, Any]] = {}
    searches: list[Entry] = []
    for entry in entries:
        if entry.method not in ("GET", "HEAD"):
            continue
        try:
            reads[entry.index] = _get_entry(services, entry, caller, base, strict, own)
        except RecordError as error:
            raise entry_error(entry.index, error, "request.url") from None
        if _is_search(entry):
            searches.append(entry)
    results = prepared.commit(services.application)
    if any(r.written is not None for r in results):  # committed: a views outage now must not turn it into a 503
        after_commit(lambda: services.wait_until_visible(*(r.written for r in results)), "transaction")
        for entry in searches:
            try:
                reads[entry.index] = _search_entry(services, entry, caller, base, strict)
            except (RecordError, *UNAVAILABLE) as error:  # the views are away: the answer from before the append
                log.warning("search entry %d answered from before the transaction's writes: %s", entry.index, error)
    return results, reads


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
            if result.written is not None:  # committed: a views outage is waited out
                after_commit(partial(services.wait_until_visible, result.written), "batch entry")
            outcomes.append(result)
        except RecordError as error:
            outcomes.append(entry_error(entry.index, error))
    return outcomes


def _batch_get(services: Services, entry: Entry, caller: Caller | None, base: str, strict: bool) -> dict[str, Any]:
    """A batch's GET/HEAD entry, answered after the batch's writes; its failure is its own (R4 §3.1.0.11.1)."""
    try:
        return _get_entry(services, entry, caller, base, strict)
    except RecordError as error:
        named = entry_error(entry.index, error, "request.url")
        return _failed(STATUS[named.category], named.issues)


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
    strict = strict_handling(request)  # a search entry honours the Bundle's Prefer: handling, as a search does
    caller = caller_of(request)  # every entry is decided like the same request on its own
    warnings: dict[int, list[Issue]] = {}
    for position, entry in enumerate(entries):
        entries[position], warnings[entry.index] = _as_over_rest(entry)
    answers: list[dict[str, Any]] = []
    if kind == "transaction":
        results, reads = await in_thread(_transaction, services, entries, context, caller, base, strict)
        for result in results:
            index = result.entry.index
            answers.append(reads[index] if result.deferred else _write_answer(result, base, prefer, warnings[index]))
    else:
        for entry, outcome in zip(entries, await in_thread(_batch, services, entries, context, caller), strict=True):
            if isinstance(outcome, RecordError):
                answers.append(_failed(STATUS[outcome.category], outcome.issues))
            elif outcome.deferred:
                answers.append(await in_thread(_batch_get, services, entry, caller, base, strict))
            else:
                answers.append(_write_answer(outcome, base, prefer, warnings[entry.index]))
    response_bundle = {"resourceType": "Bundle", "type": f"{kind}-response", "entry": answers}
    return Response(orjson.dumps(response_bundle), media_type=FHIR_JSON)
