"""Bulk Data export jobs (FHIR Bulk Data Access IG 2.0, "$export"): run in the background, one NDJSON file
per resource type, written page by page so memory stays flat however much is exported.

A job's directory holds its files and, once complete, ``manifest.json``; a server restarted after a job
finished still serves it. Cancelling deletes the directory.

Access: with auth on, a job carries its caller's :class:`~projections.access.Viewer`: every page
it writes is read through the access policy's SQL predicate (:func:`projections.access.visible_page`), so
the files hold only what the caller's institution may see (own records, shared types, consented patients;
everything under break-the-glass). ``owner.json`` names who started the job (institution, user, and the
patient of a patient-facing app): only that same requester may see the job's status and files (Bulk Data
IG 2.0: the status and files belong to the client that kicked the export off), so neither another user of
the institution (perhaps without break-the-glass) nor a patient app reaches someone else's export.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ehr_core.application import format_instant
from ehr_core.files import DIR_MODE, private_dir, write_private
from fhir_api.services import Services
from projections.access import Viewer, visible_page
from projections.resources import compartment_page, current_page, types_present
from projections.search import SearchRequest, select_among

__all__ = ["ExportJob", "ExportJobs", "ExportRequest"]

PAGE = 1000


@dataclass(frozen=True)
class ExportRequest:
    #: "system", "patient" or "group"
    level: str
    request_url: str
    types: list[str] | None = None
    since: str | None = None
    #: For group exports: the member patients' ids.
    patients: list[str] | None = None
    #: Whose access the export is filtered by (None: auth is off, everything).
    viewer: Viewer | None = None
    #: ``_typeFilter``: per type, the searches a resource must match one of (a type absent: all of it).
    type_filters: dict[str, list[SearchRequest]] = field(default_factory=dict)


@dataclass
class ExportJob:
    id: str
    request: ExportRequest
    directory: Path
    transaction_time: str = field(default_factory=lambda: format_instant(datetime.now(UTC)))
    exported: int = 0
    done: bool = False
    error: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: Who started the job: ``institution|user|patient`` (None: auth was off).
    institution: str | None = None

    def allowed(self, requester: str | None) -> bool:
        """Whether ``requester`` (None: auth is off) may see this job's status and files."""
        return self.institution is None or self.institution == requester

    def manifest(self, file_url: str) -> dict[str, Any]:
        output = []
        for path in sorted(self.directory.glob("*.ndjson")):
            with path.open("rb") as lines:
                count = sum(1 for _ in lines)
            output.append({"type": path.stem, "url": f"{file_url}/{self.id}/{path.name}", "count": count})
        return {
            "transactionTime": self.transaction_time,
            "request": self.request.request_url,
            "requiresAccessToken": self.request.viewer is not None or self.institution is not None,
            "output": output,
            "error": [],
        }


class ExportJobs:
    def __init__(self, services: Services, root: Path) -> None:
        self.services = services
        self.root = root
        self._jobs: dict[str, ExportJob] = {}
        self._lock = threading.Lock()

    def start(self, request: ExportRequest, requester: str | None = None) -> ExportJob:
        job_id = uuid.uuid4().hex
        directory = self.root / job_id
        private_dir(self.root)
        directory.mkdir(mode=DIR_MODE)
        job = ExportJob(job_id, request, directory)
        if request.viewer is not None:
            job.institution = requester or request.viewer.institution
            write_private(directory / "owner.json", json.dumps({"institution": job.institution}).encode())
        with self._lock:
            self._jobs[job_id] = job
        threading.Thread(target=self._run, args=(job,), name=f"export-{job_id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> ExportJob | None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None and job_id.isalnum() and (self.root / job_id / "manifest.json").exists():
            # Finished before a restart: rebuild the job from its manifest.
            saved = json.loads((self.root / job_id / "manifest.json").read_text())
            job = ExportJob(job_id, ExportRequest("system", saved["request"]), self.root / job_id)
            job.transaction_time, job.done = saved["transactionTime"], True
            owner = self.root / job_id / "owner.json"
            if owner.exists():
                job.institution = json.loads(owner.read_text())["institution"]
        return job

    def cancel(self, job_id: str) -> bool:
        job = self.get(job_id)
        if job is None:
            return False
        job.cancelled.set()
        with self._lock:
            self._jobs.pop(job_id, None)
        shutil.rmtree(job.directory, ignore_errors=True)
        return True

    def _run(self, job: ExportJob) -> None:
        try:
            with self.services.views.read() as tx:
                present = types_present(tx)
            wanted = [t for t in present if job.request.types is None or t in job.request.types]
            for resource_type in wanted:
                if job.cancelled.is_set():
                    return
                self._export_type(job, resource_type)
            manifest = job.manifest("")
            write_private(job.directory / "manifest.json", json.dumps(manifest).encode())
            job.done = True
        except Exception as error:  # reported through the status URL, never lost silently
            job.error = f"export failed: {error}"
            job.done = True

    def _page(self, resource_type: str, request: ExportRequest, after: str) -> list[tuple[str, bytes]]:
        with self.services.views.read() as tx:
            if request.viewer is not None:
                return visible_page(
                    tx,
                    request.viewer,
                    resource_type,
                    request.patients,
                    compartments_only=request.level != "system",
                    after_id=after,
                    since=request.since,
                    limit=PAGE,
                    dialect=self.services.views.dialect,
                )
            if request.level == "system":
                return current_page(tx, resource_type, after_id=after, since=request.since, limit=PAGE)
            return compartment_page(
                tx, resource_type, request.patients, after_id=after, since=request.since, limit=PAGE
            )

    def _filtered(
        self, resource_type: str, request: ExportRequest, page: list[tuple[str, bytes]]
    ) -> list[tuple[str, bytes]]:
        """The page's resources that match one of the type's ``_typeFilter`` searches (Bulk Data IG 2.0:
        several filters of one type are ORed), applied before anything is written."""
        searches = request.type_filters.get(resource_type)
        if not searches or not page:
            return page
        ids = [resource_id for resource_id, _ in page]
        kept: set[str] = set()
        with self.services.views.read() as tx:
            for search in searches:
                kept |= select_among(tx, search, ids, request.viewer, self.services.views.dialect)
        return [(resource_id, body) for resource_id, body in page if resource_id in kept]

    def _export_type(self, job: ExportJob, resource_type: str) -> None:
        target = job.directory / f"{resource_type}.ndjson"
        after = ""
        write_private(target, b"")  # patients' records: owner-only from the first byte
        with target.open("wb") as output:
            while not job.cancelled.is_set():
                page = self._page(resource_type, job.request, after)
                kept = self._filtered(resource_type, job.request, page)
                for _, body in kept:
                    output.write(body)
                    output.write(b"\n")
                job.exported += len(kept)
                if len(page) < PAGE:
                    break
                after = page[-1][0]
        if target.stat().st_size == 0:
            target.unlink()
