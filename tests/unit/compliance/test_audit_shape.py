"""AuditEvent shape (IHE BALP) and the middleware's classification of FHIR requests."""

from __future__ import annotations

import base64

import pytest

from ehr_core.audit import AuditEntry, audit_event
from fhir_api.audit_middleware import classify


@pytest.mark.parametrize(
    ("method", "path", "interaction"),
    [
        ("GET", "/fhir/metadata", "capabilities"),
        ("POST", "/fhir", "transaction"),
        ("GET", "/fhir/_history", "history-system"),
        ("GET", "/fhir/Patient", "search-type"),
        ("POST", "/fhir/Patient/_search", "search-type"),
        ("POST", "/fhir/Patient", "create"),
        ("GET", "/fhir/Patient/1", "read"),
        ("PUT", "/fhir/Patient/1", "update"),
        ("PATCH", "/fhir/Patient/1", "patch"),
        ("DELETE", "/fhir/Patient/1", "delete"),
        ("GET", "/fhir/Patient/_history", "history-type"),
        ("GET", "/fhir/Patient/1/_history", "history-instance"),
        ("GET", "/fhir/Patient/1/_history/2", "vread"),
        ("GET", "/fhir/Patient/1/$everything", "operation"),
        ("GET", "/fhir/$export", "operation"),
    ],
)
def test_classify(method: str, path: str, interaction: str) -> None:
    assert classify(method, path)[0] == interaction


def test_search_entry_as_balp_query() -> None:
    entry = AuditEntry(
        recorded="2026-01-01T00:00:00.000000+00:00",
        interaction="search-type",
        method="GET",
        path="/fhir/Observation",
        status=200,
        institution="IMSS",
        user="u1",
        purpose="TREAT",
        request_id="r1",
        query="subject=Patient/p1",
        patients=["p1"],
        entities=["Observation/o1/_history/3"],
    )
    event = audit_event(entry, "a1")
    assert event["action"] == "E" and event["outcome"] == "0"
    assert event["meta"]["profile"][0].endswith("IHE.BasicAudit.Query")
    query = next(e for e in event["entity"] if e.get("role", {}).get("code") == "24")
    assert base64.b64decode(query["query"]).decode() == "GET /fhir/Observation?subject=Patient/p1"
    patient = next(e for e in event["entity"] if e.get("role", {}).get("code") == "1")
    assert patient["what"] == {"reference": "Patient/p1"}
    refused = audit_event(AuditEntry(**{**entry.as_dict(), "status": 403}), "a2")
    assert refused["outcome"] == "4" and refused["outcomeDesc"] == "HTTP 403"


def test_an_entry_is_stored_as_the_aggregate_would_have_stored_it() -> None:
    """The audit writer appends the created event alone, not an aggregate around it: what is stored (topic,
    the state's fields in their order) is what the aggregate's created event gives, so entries written
    before and after read, project and verify the same."""
    from eventsourcing.persistence import Mapper

    from ehr_core.audit import AuditRecord
    from ehr_core.transcoder import EventTranscoder

    entry = AuditEntry(
        recorded="2026-01-01T00:00:00.000000+00:00",
        interaction="read",
        method="GET",
        path="/fhir/Patient/p1",
        status=200,
        institution="IMSS",
        user="dra.lopez",
        purpose="TREAT",
        request_id="r1",
        entities=["Patient/p1/_history/1"],
        patients=["p1"],
    )
    event = AuditRecord.recorded(entry)
    aggregate = AuditRecord._create(
        AuditRecord.Recorded, id=event.originator_id, timestamp=event.timestamp, entry=entry.as_dict()
    )
    (created,) = aggregate.collect_events()
    mapper: Mapper[object] = Mapper(EventTranscoder())
    assert mapper.to_stored_event(event) == mapper.to_stored_event(created)
    assert mapper.to_domain_event(mapper.to_stored_event(event)).entry == entry.as_dict()  # type: ignore[attr-defined]
