"""Audit entries as a read of one Patient leaves them, for tests that append to the audit log directly."""

from __future__ import annotations

from ehr_core.audit import AuditEntry

__all__ = ["patient_read"]


def patient_read(n: int, recorded: str = "2026-12-06T21:00:00.000000+00:00") -> AuditEntry:
    """The entry of a read of ``Patient/p{n}`` (request id ``r{n}``)."""
    return AuditEntry(
        recorded=recorded,
        interaction="read",
        method="GET",
        path=f"/fhir/Patient/p{n}",
        status=200,
        institution="H1",
        user="u1",
        purpose="TREAT",
        request_id=f"r{n}",
        entities=[f"Patient/p{n}/_history/1"],
        patients=[f"p{n}"],
    )
