"""SQLite with no room to write, behind a real server process.

A full disk is simulated without privileges: the server process's soft file-size limit (``RLIMIT_FSIZE``,
set from outside with ``prlimit``) drops to one byte, so every write to the SQLite files fails with EFBIG
as on a full disk (Python ignores SIGXFSZ, so the process lives on). Writes must be answered 503 with an
OperationOutcome, nothing half-stored; once the limit is lifted the server writes again, every
acknowledged write is stored exactly once, the views rebuilt from the log equal the live ones and
``ehr verify`` passes.

No step waits a guessed time: the test waits for what it needs (writes acknowledged before the fault,
``GET /health`` saying the audit log is unwritable, then writable again once a probe request committed),
each bounded by :data:`~tests.support.waiting.HANG`, which only a hang reaches on a loaded machine.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ehr_core.settings import Settings
from tests.faults.load import (
    WriteLedger,
    assert_record_matches_answers,
    patient,
    server_pid,
    stored_markers,
    write_loop,
)
from tests.fuzz.target import assert_rebuild_equals_live, ledger_verifies
from tests.support.server import running_server, store_health
from tests.support.waiting import HANG, wait_until

pytestmark = [pytest.mark.e2e]

UNLIMITED = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)


def _probe(base: str, marker: str, ledger: WriteLedger) -> None:
    try:
        response: httpx.Response | None = httpx.post(f"{base}/Patient", json=patient(marker), timeout=60)
    except httpx.TransportError:
        response = None
    ledger.record([marker], response, f"probe {marker}")


def _audit_writable(base: str) -> Callable[[], bool]:
    return lambda: store_health(base)["audit"]["writable"] is True


def test_disk_full_answers_503_and_recovers(tmp_path: Path) -> None:
    data = tmp_path / "ehr-data"
    ledger, probes = WriteLedger(), WriteLedger()
    # A probe a second rather than every 5 s: recovery is seen sooner; the wait does not depend on it.
    env = {"EHR_REQUEST_TIMEOUT_SECONDS": "5", "EHR_AUDIT_PROBE_SECONDS": "1"}
    with running_server(data, env) as (base, _log):
        pid = server_pid(base)
        stop = threading.Event()
        writers = [threading.Thread(target=write_loop, args=(base, f"d{n}", stop, ledger)) for n in range(3)]
        for writer in writers:
            writer.start()
        # Writes stored before the fault, so that the record has something to keep intact through it.
        wait_until(lambda: len(ledger.acknowledged) >= 10, "writes acknowledged before the fault", seen=ledger.counts)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))  # the disk is full
        try:
            # A background write's audit entry failed to commit: from now on the server refuses access.
            writable = _audit_writable(base)
            wait_until(
                lambda: not writable(),
                "the audit log to report unwritable with the disk full",
                seen=ledger.counts,
            )
            for n in range(5):
                _probe(base, f"probe-full-{n}", probes)
            full_statuses = dict(probes.statuses)
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, UNLIMITED)  # room again
        # The next request let through as a probe (one per EHR_AUDIT_PROBE_SECONDS; the background writers
        # keep sending) commits its audit entry, and access reopens.
        wait_until(
            _audit_writable(base), "the audit log to report writable again with room", seen=lambda: store_health(base)
        )
        for n in range(3):
            _probe(base, f"probe-room-{n}", probes)
        resumed = time.monotonic()
        wait_until(
            lambda: any(at > resumed for at in ledger.ack_times),
            "a background write acknowledged after the probes",
            seen=ledger.counts,
        )
        stop.set()
        for writer in writers:
            writer.join(timeout=HANG)
        assert not any(writer.is_alive() for writer in writers), f"a writer still runs after {HANG:.0f} s"
        # The record's own answers are checked below; what the client sees while full is checked last.
        assert probes.statuses[201] == 3, f"writes did not resume with room again: {dict(probes.statuses)}"
        stored = stored_markers(base)
        background = {*ledger.acknowledged, *ledger.refused, *ledger.uncertain, *ledger.unanswered}
        assert_record_matches_answers(probes, stored, others=background, strict_status=False)
        assert_record_matches_answers(
            ledger, stored, others={*probes.acknowledged, *probes.refused}, strict_status=False
        )
        refused = [m for m in probes.refused + probes.unanswered if stored[m]]
        assert not refused, f"writes refused while the disk was full were stored: {refused}"
    settings = Settings(data_dir=data, database_url=None)
    rows = assert_rebuild_equals_live(settings)
    ledger_verifies(settings)
    print(
        f"\ndisk full: probes {full_statuses} + {len(probes.unanswered)} reset, then 3 x 201; background "
        f"{dict(ledger.statuses)} ({len(ledger.unanswered)} reset), {len(ledger.acknowledged)} acknowledged and "
        f"stored once; rebuild == live ({rows} rows); ledger ok"
    )
    assert not ledger.statuses.get(500), f"a 500 while the disk was full: {dict(ledger.statuses)}"
    assert full_statuses.get(503, 0) + len(probes.unanswered) == 5, full_statuses
    assert full_statuses.get(503, 0) > 0, f"no 503 with the disk full: {full_statuses}"
