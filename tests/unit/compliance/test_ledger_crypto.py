"""The ledger's cryptography: Merkle roots and inclusion paths for every tree size, signed heads, proofs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from uuid import uuid4

import pytest

from ehr_core.ledger import (
    GENESIS,
    BlockHead,
    LedgerKey,
    check_proof,
    inclusion_path,
    leaf_hash,
    merkle_root,
    verify_head,
    verify_inclusion,
)


def _rfc6962_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, written the recursive way, as an independent reference."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _rfc6962_root(leaves[:k]) + _rfc6962_root(leaves[k:])).digest()


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 31, 100, 1000])
def test_every_leaf_proves_against_the_rfc6962_root(size: int) -> None:
    leaves = [hashlib.sha256(str(i).encode()).digest() for i in range(size)]
    root = merkle_root(leaves)
    assert root == _rfc6962_root(leaves)
    for index in range(size):
        path = inclusion_path(leaves, index)
        assert verify_inclusion(leaves[index], index, size, path, root)
        assert not verify_inclusion(leaves[index], (index + 1) % size, size, path, root) or size == 1
        assert not verify_inclusion(b"\x00" * 32, index, size, path, root)


def test_the_leaf_covers_every_stored_field() -> None:
    oid = uuid4()
    base = leaf_hash(5, oid, 2, "ehr_core.streams:ResourceStream.Revised", b'{"a":1}')
    assert leaf_hash(6, oid, 2, "ehr_core.streams:ResourceStream.Revised", b'{"a":1}') != base
    assert leaf_hash(5, uuid4(), 2, "ehr_core.streams:ResourceStream.Revised", b'{"a":1}') != base
    assert leaf_hash(5, oid, 3, "ehr_core.streams:ResourceStream.Revised", b'{"a":1}') != base
    assert leaf_hash(5, oid, 2, "ehr_core.streams:ResourceStream.Started", b'{"a":1}') != base
    assert leaf_hash(5, oid, 2, "ehr_core.streams:ResourceStream.Revised", b'{"a":2}') != base


def test_heads_are_signed_and_chained(tmp_path: Path) -> None:
    key = LedgerKey.load_or_create(tmp_path / "key.pem")
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    assert LedgerKey.load_or_create(tmp_path / "key.pem").id == key.id
    head = BlockHead(0, 1, 10, 10, b"\x11" * 32, GENESIS, "2026-01-01T00:00:00.000000+00:00", key.id)
    signature = key.sign(head)
    assert verify_head(key.public_key, head, signature)
    forged = BlockHead(0, 1, 10, 10, b"\x12" * 32, GENESIS, head.sealed_at, key.id)
    assert not verify_head(key.public_key, forged, signature)
    assert BlockHead.from_json(head.as_json()) == head


def test_check_proof_offline(tmp_path: Path) -> None:
    key = LedgerKey.load_or_create(tmp_path / "key.pem")
    events = [(n, uuid4(), 1, "t", f"state {n}".encode()) for n in range(1, 6)]
    leaves = [leaf_hash(*e) for e in events]
    head = BlockHead(0, 1, 5, 5, merkle_root(leaves), GENESIS, "2026-01-01T00:00:00.000000+00:00", key.id)
    n, oid, version, topic, state = events[3]
    proof = {
        "event": {
            "notification_id": n,
            "originator_id": str(oid),
            "originator_version": version,
            "topic": topic,
            "state_hex": state.hex(),
        },
        "leaf": leaves[3].hex(),
        "leaf_index": 3,
        "path": [h.hex() for h in inclusion_path(leaves, 3)],
        "head": head.as_json(),
        "signature": key.sign(head).hex(),
    }
    assert check_proof(proof, key.public_key) == []
    other = LedgerKey.load_or_create(tmp_path / "other.pem")
    assert check_proof(proof, other.public_key) == [f"the head was signed with key {key.id}, not with key {other.id}"]
    tampered = {**proof, "event": {**proof["event"], "state_hex": b"state 9".hex()}}
    assert check_proof(tampered, key.public_key) == ["the event's stored bytes do not hash to the proof's leaf"]
