"""What sealing the ledger costs while requests keep coming: every request appends an audit entry, and the
ledger of the audit log follows it. Run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from ehr_core.audit import BreakGlassAccess
from ehr_core.ledger import LedgerKey
from fhir_api.services import Services
from projections.ledger import Ledger, LedgerSealer
from tests.support.audit_entries import patient_read


def _quiet_ledger(services: Services) -> Ledger:
    """The audit log's ledger with its periodic sealer stopped and everything so far sealed."""
    compliance = services.compliance
    assert compliance is not None
    for thread in compliance.threads:
        if isinstance(thread, LedgerSealer):
            thread.stop()
    compliance.audit_writer.flush()
    compliance.audit_ledger.seal(partial=True)
    return compliance.audit_ledger


def test_a_partial_seal_stops_where_the_log_ended_when_asked(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries answered while a block is being signed wait for the next seal: before, each round sealed a
    block of the few entries that came during the last one, for as long as requests kept coming."""
    ledger = _quiet_ledger(services)
    log = services.compliance.audit_log  # type: ignore[union-attr]
    asked = log.append([patient_read(n) for n in range(3)])
    sign = LedgerKey.sign
    arriving = iter(range(100, 105))  # five requests answered during the signatures, one each

    def sign_while_entries_arrive(key: LedgerKey, head: Any) -> bytes:
        if (n := next(arriving, None)) is not None:
            log.append([patient_read(n)])
        return sign(key, head)

    monkeypatch.setattr(LedgerKey, "sign", sign_while_entries_arrive)
    assert ledger.seal(partial=True) == 1
    assert ledger.position() == asked
    assert log.recorder.max_notification_id() == asked + 1  # the one that came meanwhile: not yet sealed
    assert ledger.seal(partial=True) == 1 and ledger.position() == asked + 1  # and the next one came


def test_following_the_log_reads_no_event_before_a_block_is_full(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower asks for full blocks after every batch it applies: it learns from the log's last id,
    without reading the events, that fewer than a block are there."""
    ledger = _quiet_ledger(services)
    log = services.compliance.audit_log  # type: ignore[union-attr]
    ledger.block_size = 5
    reads: list[int] = []
    select = type(log.recorder).select_notifications

    def counted(recorder: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return select(recorder, *args, **kwargs)

    monkeypatch.setattr(type(log.recorder), "select_notifications", counted)
    start = ledger.position()
    log.append([patient_read(n) for n in range(4)])
    assert ledger.seal() == 0
    assert reads == [] and ledger.position() == start
    log.append([patient_read(4)])
    assert ledger.seal() == 1
    assert reads and ledger.position() == start + 5


@pytest.mark.postgres
@pytest.mark.parametrize("settings", ["postgres"], indirect=True)  # SQLite's followers poll
def test_an_audit_group_commit_is_not_announced_and_a_break_the_glass_access_is(services: Services) -> None:
    """The worker follows the audit log on PostgreSQL by LISTEN: a group commit of audit entries (one per
    request) does not wake it, a break-the-glass access (the review list shows it at once) does."""
    log = services.compliance.audit_log  # type: ignore[union-attr]
    with psycopg.connect(services.settings.postgres_conninfo(), autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(str(log.recorder.channel_name))))  # type: ignore[attr-defined]
        log.append([patient_read(n) for n in range(3)])
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        log.record_break_glass(
            BreakGlassAccess.grant(
                "ISSSTE", "DFIST000001", "dr.urgencias", "physician", "paciente inconsciente", "Patient/p1"
            )
        )
        assert len(list(listener.notifies(timeout=5.0, stop_after=1))) == 1
