"""``$import`` jobs: NDJSON files from the import directory loaded in a background thread by the same
:class:`~ehr_core.importing.Importer` as ``ehr import`` (dependency order, conditional references resolved
after the rest, each chunk saved with its import mark so a repeated ``$import`` of the same files skips what
is stored), written as the caller who started it.

Unlike ``ehr import``, no separate projector process runs: after each chunk the job waits until the
projections have applied it (the server's own read-your-writes), so what a finished job reports is
searchable, and a conditional reference later in the import finds what earlier chunks stored.

A job lives in memory: after a restart its status answers 404, and posting the same ``$import`` again
resumes it (its stored chunks are skipped). Cancelling stops after the chunk being saved: the log is
append-only, so what was stored stays stored (and is skipped by a later run).
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ehr_core.application import Written, format_instant
from ehr_core.context import WriteContext
from ehr_core.errors import RecordError
from ehr_core.importing import Importer, ImportReport
from fhir_api.resolver import ViewResolver
from fhir_api.services import Services
from projections.access import Viewer

__all__ = ["ImportInput", "ImportJob", "ImportJobs", "ImportRequest"]

log = logging.getLogger(__name__)

#: Rejections listed in a job's result (the counts cover all of them).
REJECTIONS_LISTED = 1000


@dataclass(frozen=True)
class ImportInput:
    #: The declared resource type of the file's lines.
    type: str
    #: The ``file://`` URL as given, and the file it names inside the import directory.
    url: str
    path: Path


@dataclass(frozen=True)
class ImportRequest:
    request_url: str
    inputs: tuple[ImportInput, ...]
    #: Who writes: institution, unit, user... (from the token, or the X-EHR-* headers with auth disabled).
    context: WriteContext
    #: Whose reads conditional references match among (None: auth is off, everything).
    viewer: Viewer | None = None
    input_source: str | None = None


class _Cancelled(Exception):
    """Raised from the progress callback to stop the importer between chunks."""


@dataclass
class ImportJob:
    id: str
    request: ImportRequest
    #: Who started the job: ``institution|user|patient`` (None: auth was off).
    requester: str | None
    total_bytes: int
    transaction_time: str = field(default_factory=lambda: format_instant(datetime.now(UTC)))
    handled: int = 0
    consumed: int = 0
    done: bool = False
    error: str | None = None
    report: ImportReport | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def allowed(self, requester: str | None) -> bool:
        """Whether ``requester`` may see this job (Bulk Data: the status belongs to the client that started it)."""
        return self.requester is None or self.requester == requester

    def progress(self) -> str:
        share = 100.0 * self.consumed / self.total_bytes if self.total_bytes else 100.0
        return f"{self.handled} resources, {share:.0f}% of {self.total_bytes} bytes read"

    def result(self) -> dict[str, Any]:
        """The outcome as a Parameters resource: versions stored per type, and every line rejected, and why."""
        report = self.report or ImportReport()
        urls = {str(item.path): item.url for item in self.request.inputs}
        parameters: list[dict[str, Any]] = [
            {"name": "transactionTime", "valueInstant": self.transaction_time},
            {"name": "request", "valueUri": self.request.request_url},
        ]
        if self.request.input_source:
            parameters.append({"name": "inputSource", "valueUri": self.request.input_source})
        for resource_type, count in sorted(report.stored_by_type.items()):
            parameters.append(
                {
                    "name": "output",
                    "part": [{"name": "type", "valueCode": resource_type}, {"name": "count", "valueInteger": count}],
                }
            )
        parameters += [
            {"name": "stored", "valueInteger": report.stored},
            {"name": "unchanged", "valueInteger": report.unchanged},
            {"name": "skippedChunks", "valueInteger": report.skipped_chunks},
            {"name": "resolvedLater", "valueInteger": report.resolved_later},
            {"name": "rejectedCount", "valueInteger": len(report.rejected)},
        ]
        for rejection in report.rejected[:REJECTIONS_LISTED]:
            parameters.append(
                {
                    "name": "rejected",
                    "part": [
                        {"name": "url", "valueUri": urls.get(rejection.source, Path(rejection.source).as_uri())},
                        {"name": "position", "valueString": rejection.position},
                        {"name": "reason", "valueString": rejection.reason},
                    ],
                }
            )
        return {"resourceType": "Parameters", "parameter": parameters}


class ImportJobs:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._jobs: dict[str, ImportJob] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, request: ImportRequest, requester: str | None) -> ImportJob:
        total = sum(item.path.stat().st_size for item in request.inputs)
        job = ImportJob(uuid.uuid4().hex, request, requester, total)
        thread = threading.Thread(target=self._run, args=(job,), name=f"import-{job.id}", daemon=True)
        with self._lock:
            self._jobs[job.id] = job
            self._threads.append(thread)
        thread.start()
        return job

    def close(self, timeout: float = 10.0) -> None:
        """Stop every running job after its current chunk (the server is stopping; a later ``$import`` of
        the same files resumes), and wait for them before the store they write to is closed."""
        with self._lock:
            jobs, threads = list(self._jobs.values()), list(self._threads)
        for job in jobs:
            job.cancelled.set()
        for thread in threads:
            thread.join(timeout)

    def get(self, job_id: str) -> ImportJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        job.cancelled.set()
        return True

    def _visible(self, notification_id: int) -> None:
        """Wait until the projections hold a stored chunk (every one, the master patient index included)."""
        application = self.services.application
        chunk = Written("Patient", "", 0, "", None, False, notification_id, application.store)
        self.services.wait_until_visible(chunk)

    def _run(self, job: ImportJob) -> None:
        request = job.request
        resolver = ViewResolver(self.services, request.viewer)
        importer = Importer(self.services.application, resolver, self._visible, request.context)

        def tick(resources: int, consumed: int) -> None:
            job.handled += resources
            job.consumed += consumed
            if job.cancelled.is_set():
                raise _Cancelled

        try:
            files = Importer.sources(dict.fromkeys(item.path for item in request.inputs))
            job.report = importer.run(files, tick)
        except _Cancelled:
            pass
        except RecordError as error:  # the store refused a whole chunk (a conflict, the store unavailable)
            job.error = "import stopped: " + "; ".join(issue.diagnostics for issue in error.issues)
        except Exception as error:  # reported through the status URL, never lost silently
            log.exception("import job %s failed", job.id)
            job.error = f"import failed: {type(error).__name__}"
        finally:
            job.done = True
