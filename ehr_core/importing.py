"""Bulk import: transaction/batch Bundle files and NDJSON, streamed, resumable, never stopped by one bad line.

Each unit of work (a transaction Bundle, or a chunk of a batch Bundle or NDJSON file) is appended
in one save together with an :class:`ImportMark` stream named after the file's digest and the chunk
number. After an interruption, chunks whose mark exists are skipped: the mark and the data were
stored atomically, so a chunk is imported exactly once however often the import is restarted.

Conditional references (``Practitioner?identifier=sys|val``) are resolved by the same rules as any write
(``ehr_core.references``). A Bundle file is its own unit: an entry (batch) or the whole Bundle (transaction)
whose reference matches nothing is rejected and listed, as over REST. NDJSON is loaded in dependency order:
a Bulk Data export is one file per type in no particular order, and its Encounters may come before the
Practitioners they name. So files of the types others refer to go first (Organization, the other types
outside the Patient compartment, then Patient, then the rest), and a line whose conditional reference
matches nothing *yet* is not rejected but deferred: once every file is loaded the deferred lines are
resolved again, in file order, round after round while any resolves (a reference to another deferred line).
Only what still matches nothing then is rejected and listed (the 422 a REST write would get, naming the
element). A restarted import finds the lines deferred in chunks already stored again: the lines with a
conditional reference whose resource the store does not hold.

A Bundle file named ``.xml`` is FHIR XML (R4 xml.html), read into its R4 JSON form before anything else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from ehr_core.application import Pending, RecordApplication
from ehr_core.bundles import Entry, Resolver, parse_bundle, prepare_transaction
from ehr_core.context import WriteContext
from ehr_core.errors import Issue, RecordError, Unprocessable
from ehr_core.references import (
    CONDITIONAL_REFERENCE,
    ConditionalReferences,
    conditional_reference_values,
    conditional_references,
)
from ehr_core.resources import json as fhir_json
from ehr_core.resources import xml as fhir_xml
from ehr_core.resources.types import is_supported
from ehr_core.spec.patient_compartment import PATHS

__all__ = ["Deferred", "ImportMark", "ImportReport", "Importer", "Rejection", "is_batch_head", "read_bundle_file"]

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:ehr-core:import-mark")


class ImportMark(Aggregate):
    """A chunk of an import source that is stored (saved atomically with the chunk's data)."""

    class Recorded(Aggregate.Created):
        source: str
        digest: str
        chunk: int
        resources: int

    def __init__(self, source: str, digest: str, chunk: int, resources: int) -> None:
        self.source, self.digest, self.chunk, self.resources = source, digest, chunk, resources

    @staticmethod
    def mark_id(digest: str, chunk: int) -> UUID:
        return uuid5(_NAMESPACE, f"{digest}:{chunk}")

    @classmethod
    def record(cls, source: str, digest: str, chunk: int, resources: int) -> ImportMark:
        return cls._create(
            cls.Recorded, id=cls.mark_id(digest, chunk), source=source, digest=digest, chunk=chunk, resources=resources
        )


@dataclass(frozen=True)
class Rejection:
    source: str
    #: Line number (NDJSON, from 1) or entry index (Bundle, from 0).
    position: str
    reason: str


@dataclass(frozen=True)
class Deferred:
    """An NDJSON line whose conditional reference matched nothing before every file was loaded."""

    source: str
    line: int


@dataclass
class ImportReport:
    files: int = 0
    stored: int = 0
    unchanged: int = 0
    skipped_chunks: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    #: Lines waiting for the rest of the import (see :meth:`Importer.finish`).
    deferred: list[Deferred] = field(default_factory=list)
    #: Deferred lines that resolved once the rest was loaded.
    resolved_later: int = 0
    #: Versions stored, by resource type (``stored`` is their sum).
    stored_by_type: dict[str, int] = field(default_factory=dict)


#: A search as a resolver is asked it: the resource type and the query's pairs.
Query = tuple[str, list[tuple[str, str]]]

#: Called after each chunk: (resources handled in it, bytes of the source consumed in it).
Progress = Callable[[int, int], None]


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _issues_text(issues: Sequence[Issue]) -> str:
    return "; ".join(issue.diagnostics for issue in issues)


class _ChunkResolver:
    """Sees what earlier entries of the same uncommitted chunk created by ``ifNoneExist``."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.created: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}

    def match(self, resource_type: str, params: list[tuple[str, str]]) -> list[str]:
        local = self.created.get((resource_type, tuple(sorted(params))))
        return [local] if local is not None else self.resolver.match(resource_type, params)


class Importer:
    def __init__(
        self,
        application: RecordApplication,
        resolver: Resolver,
        visible: Callable[[int], None],
        context: WriteContext | None = None,
        chunk_size: int = 500,
        chunk_bytes: int = 1_500_000,
    ) -> None:
        self.application = application
        self.resolver = resolver
        self.visible = visible
        self.context = context or WriteContext(user="ehr-import", interaction="import")
        # One save stays under ~2 MB: eventsourcing 9.5.6 with psycopg hangs on very large saves.
        self.chunk_size = chunk_size
        self.chunk_bytes = chunk_bytes
        #: Conditional references resolved so far (each search once per import).
        self.references = ConditionalReferences(resolver)
        #: Resources with a deferred line: their later lines wait too, so versions keep the file's order.
        self._deferred_keys: set[tuple[str, str]] = set()

    @staticmethod
    def sources(paths: Iterable[Path]) -> list[Path]:
        """Files to import, batch Bundles first (transactions may refer to what they define)."""
        files: list[Path] = []
        for path in paths:
            if path.is_dir():
                files += sorted(p for p in path.rglob("*") if p.suffix in (".json", ".ndjson", ".xml") and p.is_file())
            else:
                files.append(path)

        def batch_first(path: Path) -> tuple[int, int, str]:
            if path.suffix == ".ndjson":
                return (2, _dependency_rank(path), str(path))
            with path.open("rb") as source:
                head = source.read(4096)
            return (0 if is_batch_head(head) else 1, 0, str(path))

        return sorted(files, key=batch_first)

    def run(self, files: Sequence[Path], progress: Progress | None = None, finish: bool = True) -> ImportReport:
        """Import ``files`` in order; with ``finish``, then resolve the deferred lines (:meth:`finish`).

        Importers sharing one import among processes leave ``finish`` to whoever runs last.
        """
        report = ImportReport()
        tick = progress or (lambda resources, consumed: None)
        for path in files:
            report.files += 1
            if path.suffix == ".ndjson":
                self._ndjson(path, report, tick)
            else:
                self._bundle(path, report, tick)
        if finish:
            self.finish(report, tick)
        return report

    def finish(self, report: ImportReport, progress: Progress | None = None) -> None:
        """Store the deferred lines whose conditional references now resolve, round after round; reject
        (and list) the ones that still match nothing."""
        tick = progress or (lambda resources, consumed: None)
        waiting = sorted(set(report.deferred), key=lambda d: (d.source, d.line))
        report.deferred = []
        failures: dict[Deferred, RecordError] = {}
        while waiting:
            self.references.missing.clear()  # the store has changed since: search each reference again
            lines = _read_lines(waiting)
            blocked: set[tuple[str, str]] = set()  # resources with an earlier line still waiting
            still: list[Deferred] = []
            pendings: list[Pending] = []
            keys: set[tuple[str, str]] = set()
            size = 0
            for deferred in waiting:
                line = lines[deferred]
                if line.key is not None and line.key in blocked:
                    still.append(deferred)
                    continue
                try:
                    resource = self._resolved(line)
                except Unprocessable as error:  # matches nothing yet: another round may load its target
                    failures[deferred] = error
                    still.append(deferred)
                    if line.key is not None:
                        blocked.add(line.key)
                    continue
                except RecordError as error:
                    _reject(report, deferred, error)
                    continue
                # Saved in chunks like the first pass: one resource once per save, each save under ~2 MB.
                if line.key in keys or len(pendings) >= self.chunk_size or size >= self.chunk_bytes:
                    self._commit(pendings, None, report)
                    pendings, keys, size = [], set(), 0
                pending = self._prepared(Path(deferred.source), line, resource, report)
                if pending is not None:
                    pendings.append(pending)
                    size += line.size
                    report.resolved_later += 1
                    if line.key is not None:
                        keys.add(line.key)
                tick(1, 0)
            self._commit(pendings, None, report)
            if len(still) == len(waiting):
                break  # no line resolved in this round: nothing more will
            waiting = still
        for deferred in waiting:
            _reject(report, deferred, failures.get(deferred) or Unprocessable("an earlier line of it matches nothing"))

    # -- the units of work -------------------------------------------------------------------------

    @contextmanager
    def _unit(self, queries: Iterable[Query] = ()) -> Iterator[None]:
        """The reads of one unit of work (a chunk, a transaction), whose writes are appended together at its
        end: a resolver that offers it (``unit_of_work``) catches the views up once for the whole unit, not
        once per conditional reference and claimed profile (a round trip each); one that offers ``prefetch``
        answers the unit's conditional searches (``queries``: its ``ifNoneExist``, conditional URLs and
        conditional references) together at its start, not in a round trip each."""
        unit: Callable[[], AbstractContextManager[None]] | None = getattr(self.resolver, "unit_of_work", None)
        with unit() if unit is not None else nullcontext():
            prefetch: Callable[[Iterable[Query]], None] | None = getattr(self.resolver, "prefetch", None)
            if prefetch is not None:
                prefetch(queries)
            yield

    def _done(self, digest: str, chunk: int) -> bool:
        return bool(list(self.application.events.get(ImportMark.mark_id(digest, chunk), limit=1)))

    def _commit(self, pendings: list[Pending], mark: ImportMark | None, report: ImportReport) -> None:
        if not pendings and mark is None:
            return
        written = self.application.commit(pendings, *([] if mark is None else [mark]))
        ids = [w.notification_id for w in written if w.notification_id is not None]
        report.stored += len(ids)
        for stored in written:
            if stored.notification_id is not None:
                report.stored_by_type[stored.resource_type] = report.stored_by_type.get(stored.resource_type, 0) + 1
        report.unchanged += len(written) - len(ids)
        if ids:
            self.visible(max(ids))

    def _bundle(self, path: Path, report: ImportReport, tick: Progress) -> None:
        size = path.stat().st_size
        digest = _digest(path)
        try:
            kind, entries = parse_bundle(read_bundle_file(path))
        except (RecordError, fhir_json.JsonError, fhir_xml.XmlError) as error:
            reason = _issues_text(error.issues) if isinstance(error, RecordError) else str(error)
            report.rejected.append(Rejection(str(path), "file", reason))
            tick(0, size)
            return
        if kind == "transaction":
            if self._done(digest, 0):
                report.skipped_chunks += 1
            else:
                try:
                    with self._unit(_entry_queries(entries)):
                        prepared = prepare_transaction(self.application, entries, self.context, self.resolver)
                    pendings = [pending for _, pending, _ in prepared.pendings]
                    self._commit(pendings, ImportMark.record(str(path), digest, 0, len(entries)), report)
                except RecordError as error:
                    report.rejected.append(Rejection(str(path), "transaction", _issues_text(error.issues)))
            tick(len(entries), size)
            return
        chunks = [entries[i : i + self.chunk_size] for i in range(0, len(entries), self.chunk_size)]
        for number, chunk in enumerate(chunks):
            if self._done(digest, number):
                report.skipped_chunks += 1
            else:
                self._batch_chunk(path, digest, number, chunk, report)
            tick(len(chunk), size * len(chunk) // max(1, len(entries)))

    def _batch_chunk(self, path: Path, digest: str, number: int, chunk: list[Entry], report: ImportReport) -> None:
        with self._unit(_entry_queries(chunk)):
            pendings = self._batch_pendings(path, chunk, report)
        self._commit(pendings, ImportMark.record(str(path), digest, number, len(chunk)), report)

    def _batch_pendings(self, path: Path, chunk: list[Entry], report: ImportReport) -> list[Pending]:
        """A batch chunk's entries prepared (each its own transaction; a rejected one is listed)."""
        resolver = _ChunkResolver(self.resolver)
        pendings: list[Pending] = []
        touched: set[str] = set()
        for entry in chunk:
            if entry.method in ("GET", "HEAD"):
                continue
            try:
                prepared = prepare_transaction(self.application, [entry], self.context, resolver)
            except RecordError as error:
                report.rejected.append(Rejection(str(path), f"entry {entry.index}", _issues_text(error.issues)))
                continue
            for prepared_entry, pending, _ in prepared.pendings:
                key = f"{pending.written.resource_type}/{pending.written.resource_id}"
                if key in touched:
                    reason = f"{key} is written twice in one chunk; later entry skipped"
                    report.rejected.append(Rejection(str(path), f"entry {entry.index}", reason))
                    continue
                touched.add(key)
                pendings.append(pending)
                if prepared_entry.if_none_exist:
                    query = _query_key(prepared_entry.if_none_exist)
                    resolver.created[(prepared_entry.resource_type, query)] = pending.written.resource_id
        return pendings

    def _ndjson(self, path: Path, report: ImportReport, tick: Progress) -> None:
        digest = _digest(path)
        for number, lines in enumerate(self._ndjson_chunks(path)):
            consumed = sum(line.size for line in lines)
            if self._done(digest, number):
                report.skipped_chunks += 1
                self._deferred_before(path, lines, report)
                tick(len(lines), consumed)
                continue
            pendings: list[Pending] = []
            with self._unit(self._line_queries(lines)):
                for line in lines:
                    pending = self._ndjson_line(path, line, report)
                    if pending is not None:
                        pendings.append(pending)
            self._commit(pendings, ImportMark.record(str(path), digest, number, len(lines)), report)
            tick(len(lines), consumed)

    def _ndjson_chunks(self, path: Path) -> Iterator[list[_Line]]:
        """Parsed lines in chunks, read lazily (constant memory).

        A chunk never holds one resource twice (two versions of one resource cannot be appended in one
        save), so a repeated id starts a new chunk. Chunking depends only on the file: a restarted import
        numbers its chunks the same way.
        """
        chunk: list[_Line] = []
        keys: set[tuple[str, str]] = set()
        size = 0
        with path.open("rb") as source:
            for line_number, raw in enumerate(source, start=1):
                if not raw.strip():
                    continue
                line = _Line.parse(line_number, raw)
                if len(chunk) >= self.chunk_size or size >= self.chunk_bytes or (line.key and line.key in keys):
                    yield chunk
                    chunk, keys, size = [], set(), 0
                chunk.append(line)
                size += line.size
                if line.key:
                    keys.add(line.key)
        if chunk:
            yield chunk

    def _line_queries(self, lines: list[_Line]) -> Iterator[Query]:
        """The searches of the lines' conditional references this import has not answered yet."""
        for line in lines:
            if line.error is None:
                for resource_type, params, reference in _reference_queries(line.resource):
                    if reference not in self.references.resolved and reference not in self.references.missing:
                        yield resource_type, params

    def _deferred_before(self, path: Path, lines: list[_Line], report: ImportReport) -> None:
        """In a chunk stored by an interrupted run, the lines it deferred: a conditional reference, and the
        resource not in the store (their deferral was not stored with the chunk)."""
        for line in lines:
            if line.key is None or not conditional_references(line.resource):
                continue
            if not self.application.holds(*line.key):
                self._defer(path, line, report)

    def _defer(self, path: Path, line: _Line, report: ImportReport) -> None:
        report.deferred.append(Deferred(str(path), line.number))
        if line.key is not None:
            self._deferred_keys.add(line.key)

    def _resolved(self, line: _Line) -> Any:
        """The line's resource with its conditional references resolved (RecordError as for a write)."""
        if line.error is not None:
            raise line.error
        return self.references.rewrite(line.resource)

    def _ndjson_line(self, path: Path, line: _Line, report: ImportReport) -> Pending | None:
        """One NDJSON resource, kept under its own id (an update-as-create); None when rejected or deferred."""
        if line.key is not None and line.key in self._deferred_keys:
            self._defer(path, line, report)  # an earlier version of it waits: so does this one
            return None
        try:
            resource = self._resolved(line)
        except Unprocessable:  # its target may come later in this import (module docstring)
            self._defer(path, line, report)
            return None
        except RecordError as error:
            report.rejected.append(Rejection(str(path), f"line {line.number}", _issues_text(error.issues)))
            return None
        return self._prepared(path, line, resource, report)

    def _prepared(self, path: Path, line: _Line, resource: Any, report: ImportReport) -> Pending | None:
        try:
            return self.application.prepare_update(
                str(resource["resourceType"]), resource["id"], resource, self.context
            )
        except RecordError as error:
            report.rejected.append(Rejection(str(path), f"line {line.number}", _issues_text(error.issues)))
        return None


@dataclass
class _Line:
    number: int
    size: int
    resource: Any = None
    error: RecordError | None = None

    @property
    def key(self) -> tuple[str, str] | None:
        if self.error is not None:
            return None
        return (str(self.resource["resourceType"]), str(self.resource["id"]))

    @classmethod
    def parse(cls, number: int, raw: bytes) -> _Line:
        try:
            resource = fhir_json.loads(raw)
        except fhir_json.JsonError as error:
            return cls(number, len(raw), error=RecordError([Issue("structure", str(error))]))
        if not isinstance(resource, dict) or not isinstance(resource.get("id"), str) or "resourceType" not in resource:
            problem = RecordError([Issue("required", "each NDJSON line must be a resource with resourceType and id")])
            return cls(number, len(raw), error=problem)
        return cls(number, len(raw), resource)


def read_bundle_file(path: Path) -> Any:
    """A Bundle file in its R4 JSON form: ``.xml`` files are FHIR XML (R4 xml.html), any other JSON."""
    data = path.read_bytes()
    return fhir_xml.from_xml(data) if path.suffix == ".xml" else fhir_json.loads(data)


def is_batch_head(head: bytes) -> bool:
    """Whether the first bytes of a Bundle file say it is a batch, in JSON or in XML."""
    return b'"batch"' in head or b'<type value="batch"' in head


def _reject(report: ImportReport, deferred: Deferred, error: RecordError) -> None:
    report.rejected.append(Rejection(deferred.source, f"line {deferred.line}", _issues_text(error.issues)))


def _dependency_rank(path: Path) -> int:
    """Where an NDJSON file goes in dependency order, by the type of its first resource: the types others
    refer to first (Organization, which the others of its kind name; then the rest outside the Patient
    compartment: Practitioner, Location, Medication...), then Patient, then the rest."""
    with path.open("rb") as source:
        first = b""
        while not first.strip():
            first = source.readline()
            if not first:
                return 3
    try:
        parsed = fhir_json.loads(first)
    except fhir_json.JsonError:
        return 3
    resource_type = parsed.get("resourceType") if isinstance(parsed, dict) else None
    if resource_type == "Organization":
        return 0
    if resource_type == "Patient":
        return 2
    return 3 if resource_type in PATHS else 1


def _read_lines(deferred: Sequence[Deferred]) -> dict[Deferred, _Line]:
    """The deferred lines, read again from their files (a deferral keeps only where the line is)."""
    wanted: dict[str, set[int]] = {}
    for item in deferred:
        wanted.setdefault(item.source, set()).add(item.line)
    lines: dict[Deferred, _Line] = {}
    for source, numbers in wanted.items():
        with Path(source).open("rb") as stream:
            for number, raw in enumerate(stream, start=1):
                if number in numbers:
                    lines[Deferred(source, number)] = _Line.parse(number, raw)
    return lines


def _reference_queries(resource: Any) -> Iterator[tuple[str, list[tuple[str, str]], str]]:
    """Each conditional reference of ``resource`` as the search it is resolved by (type, query pairs, the
    reference), parsed as :class:`ConditionalReferences` parses it; types this server lacks are left out."""
    for reference in dict.fromkeys(conditional_reference_values(resource)):
        conditional = CONDITIONAL_REFERENCE.match(reference)
        if conditional is not None and is_supported(conditional.group(1)):
            yield conditional.group(1), parse_qsl(conditional.group(2), keep_blank_values=True), reference


def _entry_queries(entries: Iterable[Entry]) -> Iterator[Query]:
    """The searches a Bundle's entries will ask, as ``prepare_transaction`` parses them: each ``ifNoneExist``
    (R4 §3.1.0.8.1), conditional update, patch and delete URL, and conditional reference."""
    for entry in entries:
        if not is_supported(entry.resource_type):
            continue
        if entry.method == "POST" and entry.if_none_exist:
            yield entry.resource_type, parse_qsl(entry.if_none_exist.lstrip("?"), keep_blank_values=True)
        elif entry.method in ("PUT", "DELETE", "PATCH") and entry.query is not None:
            yield entry.resource_type, entry.query
        if entry.method in ("POST", "PUT") and isinstance(entry.resource, dict):
            for resource_type, params, _ in _reference_queries(entry.resource):
                yield resource_type, params


def _query_key(query: str) -> tuple[tuple[str, str], ...]:
    """An ``ifNoneExist`` query as a canonical key."""
    return tuple(sorted(parse_qsl(query.lstrip("?"), keep_blank_values=True)))
