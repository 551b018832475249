"""The ledger: ``ehr verify`` passes on an intact store and names the first tampered event.
The cases tamper with the clinical log, so they check it alone (``--log clinical``; by default the audit log's
ledger is checked after it, test_break_glass_review.py).

Every test runs on SQLite and on PostgreSQL; the tampering goes straight to the event table, as an
attacker with database access would, bypassing the application.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ehr_core.context import WriteContext
from ehr_core.ledger import GENESIS, BlockHead, check_proof
from fhir_api.services import Services
from projections.ledger import LedgerSealer, witness_path
from tests.integration.compliance.conftest import Cli, RawLog

EVENTS = 40
BLOCK = 7  # several blocks, the last one partial


@pytest.fixture
def sealed(services: Services) -> Services:
    assert services.compliance is not None
    services.compliance.ledger.block_size = BLOCK
    context = WriteContext(institution="IMSS", user="dr.test")
    for i in range(EVENTS // 2):
        written = services.application.create({"resourceType": "Patient", "birthDate": f"19{i:02d}-01-01"}, context)
        body = json.loads(written.body or b"{}")
        body["active"] = True
        services.application.update("Patient", written.resource_id, body, context)
    services.compliance.ledger.seal(partial=True)
    return services


def _last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_intact_store_verifies(sealed: Services, ehr: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    assert ehr("verify", "--quiet", "--log", "clinical") == 0
    line = _last_line(capsys)
    # Other projections (the identity index) may append events of their own, sealed by the periodic sealer.
    match = re.match(r"intact: (\d+) events in (\d+) signed blocks", line)
    assert match is not None, line
    assert int(match.group(1)) >= EVENTS and int(match.group(2)) >= -(-EVENTS // BLOCK)


def test_one_altered_byte_is_named(
    sealed: Services, ehr: Cli, raw_log: RawLog, capsys: pytest.CaptureFixture[str]
) -> None:
    originator, version, _, _ = raw_log.event(17)
    raw_log.flip_byte(17)
    assert ehr("verify", "--quiet", "--log", "clinical") == 1
    line = _last_line(capsys)
    assert f"event #17 (stream {originator} version {version}) was altered" in line, line


def test_one_deleted_event_is_named(
    sealed: Services, ehr: Cli, raw_log: RawLog, capsys: pytest.CaptureFixture[str]
) -> None:
    originator, version, _, _ = raw_log.event(9)
    raw_log.delete(9)
    assert ehr("verify", "--quiet", "--log", "clinical") == 1
    line = _last_line(capsys)
    assert f"event #9 (stream {originator} version {version}) is missing from the store" in line, line


def test_two_swapped_events_are_named(
    sealed: Services, ehr: Cli, raw_log: RawLog, capsys: pytest.CaptureFixture[str]
) -> None:
    second = raw_log.event(23)
    raw_log.swap(22, 23)
    assert ehr("verify", "--quiet", "--log", "clinical") == 1
    line = _last_line(capsys)
    assert f"event #22 (stream {second[0]} version {second[1]}) was moved (reordered)" in line, line
    assert "recorded it as event #23" in line


def test_one_inserted_event_is_named(
    sealed: Services, ehr: Cli, raw_log: RawLog, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, topic, state = raw_log.event(30)
    forged = str(uuid.uuid4())
    raw_log.insert_after(30, forged, state, topic)
    assert ehr("verify", "--quiet", "--log", "clinical") == 1
    line = _last_line(capsys)
    assert f"event #31 (stream {forged} version 1) was inserted" in line, line


def test_later_writes_are_reported_unsealed_not_tampered(
    sealed: Services, ehr: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sealed.compliance is not None
    for thread in sealed.compliance.threads:
        if isinstance(thread, LedgerSealer):
            thread.stop()  # else it may seal the new event before ehr verify runs
    sealed.application.create(
        {"resourceType": "Observation", "status": "final", "code": {"text": "peso"}}, WriteContext()
    )
    assert ehr("verify", "--quiet", "--log", "clinical") == 0
    line = _last_line(capsys)
    assert line.startswith("intact: ") and "(0 newer events" not in line, line


def test_verify_with_another_key_fails(
    sealed: Services, ehr: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert ehr("verify", "--quiet", "--log", "clinical", "--public-key", str(other)) == 1
    assert "block 0: the head's signature does not verify" in _last_line(capsys)


def test_inclusion_proof_over_http_checks_offline(
    sealed: Services, client: TestClient, ehr: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    created = client.post(
        "/fhir/Observation", json={"resourceType": "Observation", "status": "final", "code": {"text": "peso"}}
    )
    oid = created.json()["id"]
    key = client.get("/fhir/$ledger-key")
    assert key.status_code == 200 and key.text.startswith("-----BEGIN PUBLIC KEY-----")
    (tmp_path / "key.pem").write_text(key.text)
    proof = client.get(f"/fhir/$ledger-proof?resource=Observation/{oid}&version=1")
    assert proof.status_code == 200, proof.text
    (tmp_path / "proof.json").write_text(proof.text)
    assert ehr("verify-proof", str(tmp_path / "proof.json"), "--public-key", str(tmp_path / "key.pem")) == 0
    assert _last_line(capsys).startswith("valid: event #")
    # The same proof with one altered byte of the event fails.
    data = proof.json()
    state = bytearray.fromhex(data["event"]["state_hex"])
    state[5] ^= 1
    data["event"]["state_hex"] = state.hex()
    (tmp_path / "forged.json").write_text(json.dumps(data))
    assert ehr("verify-proof", str(tmp_path / "forged.json"), "--public-key", str(tmp_path / "key.pem")) == 1
    assert sealed.compliance is not None
    assert check_proof(proof.json(), sealed.compliance.key.public_key) == []
    head = client.get("/fhir/$ledger-head")
    assert head.status_code == 200 and head.json()["last"] >= data["event"]["notification_id"]


def test_the_audit_log_has_its_own_ledger(client: TestClient, services: Services, ehr: Cli) -> None:
    for _ in range(5):
        client.get("/fhir/metadata")
    assert services.compliance is not None
    services.compliance.audit_ledger.seal(partial=True)
    assert ehr("verify", "--quiet", "--log", "audit") == 0


def _stop_sealer(services: Services) -> None:
    assert services.compliance is not None
    for thread in services.compliance.threads:
        if isinstance(thread, LedgerSealer):
            thread.stop()


def _cut_last_block(services: Services, raw_log: RawLog) -> int:
    """Delete the last sealed block's events from the log and its rows from the ledger, as an attacker would
    (tracking position included, so the ledger looks as if that block had never been sealed)."""
    with services.views.write() as tx:
        number, first = tx.execute("SELECT block, first_id FROM ledger_blocks ORDER BY block DESC LIMIT 1").fetchone()
        tx.execute("DELETE FROM ledger_leaves WHERE block = ?", (number,))
        tx.execute("DELETE FROM ledger_blocks WHERE block = ?", (number,))
        tx.execute("UPDATE projection_tracking SET position = ? WHERE name = 'ledger'", (int(first) - 1,))
    raw_log.sql("DELETE FROM {t} WHERE {nid} >= ?", (int(first),))
    return int(number)


def test_truncated_log_fails_verify(
    sealed: Services, ehr: Cli, raw_log: RawLog, capsys: pytest.CaptureFixture[str]
) -> None:
    _stop_sealer(sealed)
    number = _cut_last_block(sealed, raw_log)
    assert ehr("verify", "--quiet", "--log", "clinical") == 1
    line = _last_line(capsys)
    assert "the log was truncated" in line and f"block {number}" in line, line


def test_truncation_before_a_published_head_fails_verify(
    sealed: Services,
    client: TestClient,
    ehr: Cli,
    raw_log: RawLog,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another institution kept the published head; the server's own copy of it is gone too."""
    _stop_sealer(sealed)
    published = client.get("/fhir/$ledger-head")
    assert published.status_code == 200 and published.json()["total"] >= EVENTS
    (tmp_path / "head.json").write_text(published.text)
    _cut_last_block(sealed, raw_log)
    witness_path(sealed.settings, "ledger").unlink()
    assert (
        ehr("verify", "--quiet", "--log", "clinical") == 0
    )  # without a head kept elsewhere, a clean cut cannot be seen
    assert ehr("verify", "--quiet", "--head", str(tmp_path / "head.json")) == 1
    assert "the log was truncated" in _last_line(capsys)


def test_event_forged_after_the_last_sealed_block_fails_verify(
    sealed: Services, ehr: Cli, raw_log: RawLog, capsys: pytest.CaptureFixture[str]
) -> None:
    _stop_sealer(sealed)
    _, _, topic, state = raw_log.event(30)
    forged = str(uuid.uuid4())
    last = int(raw_log.sql("SELECT MAX({nid}) FROM {t}")[0][0])
    raw_log.insert_after(last, forged, state, topic)
    assert ehr("verify", "--quiet", "--log", "clinical") == 1
    line = _last_line(capsys)
    assert f"event #{last + 1} (stream {forged} version 1) after the last signed head was inserted" in line, line


def test_event_left_unsealed_past_the_sealing_interval_fails_verify(
    sealed: Services, ehr: Cli, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stop_sealer(sealed)
    sealed.application.create(
        {"resourceType": "Observation", "status": "final", "code": {"text": "peso"}}, WriteContext()
    )
    monkeypatch.setenv("EHR_LEDGER_SEAL_SECONDS", "0")
    monkeypatch.setenv("EHR_LEDGER_UNSEALED_GRACE_SECONDS", "0")
    assert ehr("verify", "--quiet", "--log", "clinical") == 1
    assert "events after the last signed head are not yet sealed" in _last_line(capsys)


def test_format_1_heads_still_verify(sealed: Services, ehr: Cli) -> None:
    """Heads signed before they carried the running total (ehr-ledger/1) verify as they were signed."""
    assert sealed.compliance is not None
    ledger = sealed.compliance.ledger
    _stop_sealer(sealed)
    with sealed.views.write() as tx:
        rows = tx.execute(
            "SELECT block, first_id, last_id, count, root, previous, sealed_at FROM ledger_blocks ORDER BY block"
        ).fetchall()
        previous = GENESIS
        for number, first, last, count, root, _, sealed_at in rows:
            head = BlockHead(
                int(number), int(first), int(last), int(count), bytes(root), previous, str(sealed_at), ledger.key.id
            )
            tx.execute(
                "UPDATE ledger_blocks SET total = NULL, previous = ?, signature = ? WHERE block = ?",
                (previous, ledger.key.sign(head), number),
            )
            previous = head.digest()
    witness_path(sealed.settings, "ledger").unlink()
    assert ehr("verify", "--quiet", "--log", "clinical") == 0
    ledger.seal(partial=True)  # a format-2 head may follow format-1 ones
    assert ehr("verify", "--quiet", "--log", "clinical") == 0
