"""transaction and batch Bundles: the writes of a Bundle, checked, resolved and appended.

Follows R4 §3.1.0.11 ("batch/transaction"): entries are processed DELETE, POST, PUT/PATCH, then
GET/HEAD; temporary ``urn:uuid:``/``urn:oid:`` ids and conditional references are resolved before
anything is stored; a transaction is one atomic append of every stream it touches, so it is stored
whole or not at all. Reads (GET/HEAD entries) are left to the caller, which owns the read models; it
evaluates them between :func:`prepare_transaction` and :meth:`PreparedBundle.commit`, so that a failing read
fails the transaction before anything is stored (R4 §3.1.0.11.2: a transaction succeeds or fails as a whole).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl
from uuid import uuid4

from ehr_core.application import Pending, RecordApplication, Written, format_instant
from ehr_core.context import WriteContext
from ehr_core.errors import InvalidResource, Issue, NotFound, PreconditionFailed, RecordError
from ehr_core.numbers import parse_int
from ehr_core.references import ConditionalReferences, Resolver, rewrite_references
from ehr_core.resources.patch_body import patch_change
from ehr_core.resources.types import is_supported
from ehr_core.resources.validation import is_valid_id

__all__ = [
    "REST_REQUEST",
    "Entry",
    "EntryResult",
    "PreparedBundle",
    "Resolver",
    "entry_error",
    "operation_of",
    "parse_bundle",
    "prepare_transaction",
    "run_batch_entry",
    "run_transaction",
]

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass
class Entry:
    index: int
    method: str
    url: str
    full_url: str | None
    resource: Any
    if_match: str | None = None
    if_none_match: str | None = None
    if_none_exist: str | None = None
    if_modified_since: str | None = None

    @property
    def resource_type(self) -> str:
        return self.url.split("?")[0].split("/")[0]

    @property
    def target_id(self) -> str | None:
        path = self.url.split("?")[0].split("/")
        return path[1] if len(path) >= 2 else None

    @property
    def query(self) -> list[tuple[str, str]] | None:
        if "?" not in self.url:
            return None
        return parse_qsl(self.url.split("?", 1)[1], keep_blank_values=True)


@dataclass
class EntryResult:
    entry: Entry
    status: str
    written: Written | None = None
    #: For GET/HEAD entries, left for the caller to answer.
    deferred: bool = False
    outcome: list[Issue] = field(default_factory=list)


#: The index of a REST conditional interaction run as a one-entry transaction (fhir_api.conditional): its
#: errors are the request's own and name no Bundle entry.
REST_REQUEST = -1


def entry_error(index: int, error: RecordError, part: str = "resource") -> RecordError:
    """The same error, each message naming the failing entry once (so the client knows which one).

    ``part`` is where an issue's own expression points: ``resource`` for a write's body, ``request.url``
    for the parameters of a GET entry. A message that already names the entry is left as it is.
    """
    if index == REST_REQUEST:
        return error
    where = f"Bundle.entry[{index}]"
    issues = []
    for issue in error.issues:
        diagnostics = issue.diagnostics if issue.diagnostics.startswith(where) else f"{where}: {issue.diagnostics}"
        if issue.expression and issue.expression.startswith(where):
            expression = issue.expression
        else:
            expression = where + (f".{part} ({issue.expression})" if issue.expression else "")
        issues.append(Issue(issue.code, diagnostics, expression, issue.severity))
    renamed = type(error).__new__(type(error))
    renamed.__dict__.update(error.__dict__)  # what the error carries beyond its issues (a Deleted's version)
    RecordError.__init__(renamed, issues)
    return renamed


def operation_of(url: str) -> str | None:
    """The ``$operation`` an entry url invokes (``ValueSet/$lookup`` -> ``$lookup``), if any."""
    return next((part for part in url.split("?")[0].split("/") if part.startswith("$")), None)


def parse_bundle(bundle: Any) -> tuple[str, list[Entry]]:
    """The Bundle's type (transaction or batch) and its entries, or InvalidResource naming the fault."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidResource([Issue("invalid", "POST to the base URL takes a Bundle (transaction or batch)")])
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise InvalidResource(
            [Issue("invalid", f"Bundle.type must be transaction or batch, not {kind!r}", "Bundle.type")]
        )
    raw_entries = bundle.get("entry") or []
    if not isinstance(raw_entries, list):
        raise InvalidResource([Issue("structure", "Bundle.entry must be an array", "Bundle.entry")])
    entries = []
    for index, raw in enumerate(raw_entries):
        where = f"Bundle.entry[{index}]"
        request = raw.get("request") if isinstance(raw, dict) else None
        if not isinstance(request, dict):
            raise InvalidResource([Issue("required", f"{where}: request is required", f"{where}.request")])
        method, url = request.get("method"), request.get("url")
        if method not in _ORDER or not isinstance(url, str) or not url:
            raise InvalidResource(
                [Issue("invalid", f"{where}: request needs a method (GET, HEAD, POST, PUT, PATCH, DELETE) and a url")]
            )
        entries.append(
            Entry(
                index=index,
                method=method,
                url=url.lstrip("/"),
                full_url=raw.get("fullUrl"),
                resource=raw.get("resource"),
                if_match=request.get("ifMatch"),
                if_none_match=request.get("ifNoneMatch"),
                if_none_exist=request.get("ifNoneExist"),
                if_modified_since=request.get("ifModifiedSince"),
            )
        )
    return kind, entries


def _version(etag: str | None, index: int) -> int | None:
    if etag is None:
        return None
    digits = etag.strip().removeprefix("W/").strip('"')
    version = parse_int(digits)
    if version is None:
        if index == REST_REQUEST:
            raise InvalidResource([Issue("invalid", f'If-Match must be an ETag like W/"3", not {etag!r}', "If-Match")])
        raise InvalidResource(
            [
                Issue(
                    "invalid",
                    f'ifMatch must be an ETag like W/"3", not {etag!r}',
                    f"Bundle.entry[{index}].request.ifMatch",
                )
            ]
        )
    return version


class _Plan:
    """Identity resolution for one Bundle: which id each entry writes, and what each reference means."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.ids: dict[str, str] = {}  # fullUrl -> Type/id
        self.conditional = ConditionalReferences(resolver)

    def match_one(self, resource_type: str, query: list[tuple[str, str]], what: str) -> str | None:
        found = self.resolver.match(resource_type, query)
        if len(found) > 1:
            raise PreconditionFailed(f"{what} matches more than one {resource_type}")
        return found[0] if found else None

    def resolve(self, reference: str, where: str = "") -> str | None:
        """What ``reference`` (at ``where``) stands for: an entry's id, or a conditional reference's match
        (the same rules as outside a Bundle, see :mod:`ehr_core.references`)."""
        temporary = self.resolve_temporary(reference, where)
        return temporary if temporary is not None else self.conditional.resolve(reference, where)

    def resolve_temporary(self, reference: str, where: str = "") -> str | None:
        """An entry's id for its ``fullUrl``; None for any other reference."""
        if reference in self.ids:
            return self.ids[reference]
        if reference.startswith(("urn:uuid:", "urn:oid:")):
            raise NotFound(f"reference {reference} names no entry of this Bundle")
        return None


def _check_entry(entry: Entry) -> None:
    operation = operation_of(entry.url)
    if operation is not None:
        # R4 §3.1.0.11: an entry is processed as the same request on its own; this server offers no
        # operation inside a Bundle, so the entry is refused as not supported (not as a malformed id).
        message = f"{entry.method} {entry.url}: the operation {operation} is not supported inside a Bundle"
        raise InvalidResource([Issue("not-supported", message)])
    if not is_supported(entry.resource_type) and entry.method != "GET":
        raise NotFound(f"unknown resource type {entry.resource_type!r}")
    if entry.method in ("PUT", "POST") and not isinstance(entry.resource, dict):
        raise InvalidResource([Issue("required", f"{entry.method} needs a resource")])
    if entry.method in ("PUT", "DELETE", "PATCH") and entry.target_id is None and entry.query is None:
        raise InvalidResource([Issue("invalid", f"{entry.method} needs a url Type/id or Type?search")])
    if entry.target_id is not None and not is_valid_id(entry.target_id) and entry.method != "GET":
        raise InvalidResource([Issue("invalid", f"invalid id in url {entry.url!r}")])


def _assign(plan: _Plan, entry: Entry) -> tuple[str | None, str]:
    """The id an entry writes (None: nothing to write) and its status when it writes nothing."""
    resource_type, query = entry.resource_type, entry.query
    if entry.method == "POST":
        if entry.if_none_exist:
            existing = plan.match_one(
                resource_type, parse_qsl(entry.if_none_exist.lstrip("?"), keep_blank_values=True), "ifNoneExist"
            )
            if existing is not None:
                return existing, "200 OK"
        return str(uuid4()), "201 Created"
    if query is not None and entry.method in ("PUT", "DELETE", "PATCH"):
        found = plan.match_one(resource_type, query, f"conditional {entry.method.lower()} {entry.url}")
        if found is None:
            if entry.method == "DELETE":
                return None, "204 No Content"
            if entry.method == "PATCH":
                raise NotFound(f"conditional patch {entry.url} matches nothing")
            body_id = entry.resource.get("id") if isinstance(entry.resource, dict) else None
            return (body_id if isinstance(body_id, str) else str(uuid4())), "201 Created"
        return found, "200 OK"
    return entry.target_id, "200 OK"


def _prepare(
    application: RecordApplication,
    entry: Entry,
    target: str,
    context: WriteContext,
    now: datetime,
    created: bool,
    references: ConditionalReferences,
) -> Pending:
    resource_type = entry.resource_type
    if_match = _version(entry.if_match, entry.index)
    if entry.method == "POST" and created:
        return application.prepare_create(entry.resource, context, resource_type, target, now)
    if entry.method == "PUT":
        resource = dict(entry.resource)
        if entry.query is not None:
            resource.setdefault("id", target)
        return application.prepare_update(resource_type, target, resource, context, if_match, now)
    if entry.method == "PATCH":
        change = patch_change(None, entry.resource)

        def patched(current: dict[str, Any]) -> dict[str, Any]:
            # The patched resource is checked like an update: its conditional references, wherever the
            # patch put them (a JSON Patch travels base64 in a Binary), resolved at their element.
            resolved: dict[str, Any] = references.rewrite(change(current))
            return resolved

        return application.prepare_patch(resource_type, target, patched, context, if_match, now)
    return application.prepare_delete(resource_type, target, context, if_match, now)


def _result(entry: Entry, written: Written, fallback: str) -> EntryResult:
    if entry.method == "DELETE":
        return EntryResult(entry, "204 No Content", written if written.notification_id else None)
    if written.created:
        return EntryResult(entry, "201 Created", written)
    return EntryResult(entry, fallback if written.notification_id is None else "200 OK", written)


@dataclass
class PreparedBundle:
    """A transaction's writes, checked and resolved, ready for one atomic commit."""

    entries: list[Entry]
    results: dict[int, EntryResult]
    pendings: list[tuple[Entry, Pending, str]]

    def commit(self, application: RecordApplication, *others: Any) -> list[EntryResult]:
        """Append every write at once (``others``: aggregates to save in the same transaction)."""
        committed = application.commit([pending for _, pending, _ in self.pendings], *others)
        for (entry, _, status), written in zip(self.pendings, committed, strict=True):
            self.results[entry.index] = _result(entry, written, status)
        return [self.results[entry.index] for entry in self.entries]


def prepare_transaction(
    application: RecordApplication, entries: Sequence[Entry], context: WriteContext, resolver: Resolver
) -> PreparedBundle:
    """Check every entry, assign ids, resolve references and prepare the writes; store nothing."""
    plan = _Plan(resolver)
    targets: dict[str, int] = {}
    assigned: dict[int, tuple[str | None, str]] = {}
    ordered = sorted(entries, key=lambda e: (_ORDER[e.method], e.index))
    for entry in ordered:
        try:
            _check_entry(entry)
            if entry.method in ("GET", "HEAD"):
                continue
            target, status = _assign(plan, entry)
            assigned[entry.index] = (target, status)
            if target is not None:
                key = f"{entry.resource_type}/{target}"
                if key in targets and not (entry.method == "POST" and status == "200 OK"):
                    message = (
                        f"{key} is also the target of entry {targets[key]}; "
                        "a transaction may touch each resource once (R4 §3.1.0.11.2)"
                    )
                    raise InvalidResource([Issue("invalid", message)])
                targets[key] = entry.index
                if entry.full_url:
                    plan.ids[entry.full_url] = key
        except RecordError as error:
            raise entry_error(entry.index, error) from None
    now = datetime.now(UTC)
    prepared = PreparedBundle(list(entries), {}, [])
    for entry in ordered:
        if entry.method in ("GET", "HEAD"):
            prepared.results[entry.index] = EntryResult(entry, "200 OK", deferred=True)
            continue
        target, status = assigned[entry.index]
        try:
            if target is None:
                prepared.results[entry.index] = EntryResult(entry, status)
                continue
            if entry.method == "POST" and status == "200 OK":
                # ifNoneExist matched: nothing is created; the entry answers with the existing resource.
                stream = application.require_current(entry.resource_type, target)
                assert stream.resource is not None
                existing = Written(
                    entry.resource_type,
                    target,
                    stream.version,
                    format_instant(stream.modified_on),
                    stream.resource.encode(),
                    False,
                )
                prepared.results[entry.index] = EntryResult(entry, "200 OK", existing)
                continue
            if isinstance(entry.resource, dict):
                if entry.method == "PATCH":  # a patch body's conditional references resolve in the result
                    resource = rewrite_references(entry.resource, plan.resolve_temporary)
                else:
                    resource = rewrite_references(entry.resource, plan.resolve, entry.resource_type)
                entry = replace(entry, resource=resource)
            pending = _prepare(application, entry, target, context, now, status == "201 Created", plan.conditional)
            prepared.pendings.append((entry, pending, status))
        except RecordError as error:
            raise entry_error(entry.index, error) from None
    return prepared


def run_transaction(
    application: RecordApplication, entries: Sequence[Entry], context: WriteContext, resolver: Resolver
) -> list[EntryResult]:
    """All writes of a transaction Bundle, appended atomically; results in the Bundle's entry order."""
    return prepare_transaction(application, entries, context, resolver).commit(application)


def run_batch_entry(
    application: RecordApplication, entry: Entry, context: WriteContext, resolver: Resolver
) -> EntryResult:
    """One batch entry on its own (R4: batch entries succeed or fail independently)."""
    if entry.method in ("GET", "HEAD"):
        _check_entry(entry)
        return EntryResult(entry, "200 OK", deferred=True)
    return run_transaction(application, [entry], context, resolver)[0]
