"""The ledger's cryptography (DESIGN.md "Tamper evidence: the ledger"): leaves, Merkle trees, signed heads.

Pure functions and small value types; the projection that keeps the ledger is :mod:`projections.ledger`.

- A **leaf** hashes one stored event as it is in the database: notification id, originator id, version,
  topic and the state bytes exactly as stored (ciphertext included), so verification keeps working after
  crypto-shredding. ``leaf = SHA-256(0x00 || fields)``, each field length-prefixed.
- A **block** is a run of consecutive events; its Merkle root follows RFC 6962 (``node = SHA-256(0x01 ||
  left || right)``, an unpaired last node is promoted unchanged, which gives RFC 6962's tree).
- A **head** names the block (number, first and last notification id, count), its root, the hash of the
  previous head (a hash chain; 32 zero bytes before the first) and when it was sealed. Each head is
  signed with the server's Ed25519 key; :meth:`BlockHead.message` is exactly the signed bytes.
- Heads of format ``ehr-ledger/2`` also carry ``total``: how many events the ledger has sealed up to and
  including this block, so a signed head commits to the log's length (a verifier holding a head it was
  given earlier can tell a log that was cut short). Heads sealed before it (``ehr-ledger/1``, ``total`` is
  None) keep verifying with their own format: a signed message is never re-rendered another way.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic_settings import BaseSettings, SettingsConfigDict

from ehr_core.files import private_dir

__all__ = [
    "GENESIS",
    "BlockHead",
    "LedgerKey",
    "LedgerSettings",
    "check_proof",
    "inclusion_path",
    "key_id",
    "leaf_hash",
    "load_public_key",
    "merkle_root",
    "verify_head",
    "verify_inclusion",
]

GENESIS = bytes(32)
FORMAT_V1 = "ehr-ledger/1"
FORMAT = "ehr-ledger/2"


class LedgerSettings(BaseSettings):
    """``EHR_LEDGER_*``: where the signing key lives and how big blocks are."""

    model_config = SettingsConfigDict(env_prefix="EHR_LEDGER_", extra="ignore")

    #: PEM file of the Ed25519 private key; default ``ledger-key.pem`` in the data dir (created if absent).
    key_file: Path | None = None
    #: Events per full block.
    block_size: int = 1000
    #: A partly filled block is sealed after this many seconds (0: only full blocks and on demand).
    seal_seconds: float = 2.0
    #: ``ehr verify`` fails when an event after the last signed head was recorded more than
    #: ``seal_seconds`` plus this many seconds ago: the sealer would have signed it by then, so it was
    #: written behind the server's back (or the sealer is not running, which must not go unnoticed either).
    unsealed_grace_seconds: float = 60.0


_HEAD = struct.Struct(">cqq")
_PAIR = struct.Struct(">qq")
_ONE = struct.Struct(">q")


def leaf_hash(notification_id: int, originator_id: UUID | str, version: int, topic: str, state: bytes) -> bytes:
    """The leaf of one stored event (its stored bytes, not its decoded meaning).

    ``SHA-256(0x00 || i64 id || i64 len || originator id (canonical UUID text) || i64 version || i64 len ||
    topic || i64 len || state)``, integers big-endian.
    """
    oid = str(originator_id).encode()
    name = topic.encode()
    return hashlib.sha256(
        b"".join(
            (
                _HEAD.pack(b"\x00", notification_id, len(oid)),
                oid,
                _PAIR.pack(version, len(name)),
                name,
                _ONE.pack(len(state)),
                state,
            )
        )
    ).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        level = levels[-1]
        levels.append(
            [_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
        )
    return levels


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    return _levels(leaves)[-1][0]


def inclusion_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index``: the sibling at each level, bottom up (none where promoted)."""
    path = []
    for level in _levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index //= 2
    return path


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """True when ``path`` leads from ``leaf`` at ``index`` of a ``size``-leaf tree to ``root``."""
    if not 0 <= index < size:
        return False
    current, remaining = leaf, list(path)
    while size > 1:
        if index % 2 == 1:
            if not remaining:
                return False
            current = _node(remaining.pop(0), current)
        elif index + 1 < size:
            if not remaining:
                return False
            current = _node(current, remaining.pop(0))
        index //= 2
        size = (size + 1) // 2
    return not remaining and current == root


@dataclass(frozen=True)
class BlockHead:
    number: int
    first_id: int
    last_id: int
    count: int
    root: bytes
    previous: bytes
    sealed_at: str
    key_id: str
    #: Events sealed up to and including this block (format 2); None for a format-1 head.
    total: int | None = None

    @property
    def format(self) -> str:
        return FORMAT_V1 if self.total is None else FORMAT

    def message(self) -> bytes:
        """The signed bytes (one line of text, so a head can be checked with standard tools)."""
        total = "" if self.total is None else f" total={self.total}"
        return (
            f"{self.format} block={self.number} first={self.first_id} last={self.last_id} count={self.count}"
            f"{total} root={self.root.hex()} previous={self.previous.hex()} sealed={self.sealed_at} key={self.key_id}"
        ).encode()

    def digest(self) -> bytes:
        """What the next head chains to."""
        return hashlib.sha256(self.message()).digest()

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "format": self.format,
            "block": self.number,
            "first": self.first_id,
            "last": self.last_id,
            "count": self.count,
            "root": self.root.hex(),
            "previous": self.previous.hex(),
            "sealed": self.sealed_at,
            "key": self.key_id,
        }
        if self.total is not None:
            found["total"] = self.total
        return found

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BlockHead:
        return cls(
            int(data["block"]),
            int(data["first"]),
            int(data["last"]),
            int(data["count"]),
            bytes.fromhex(data["root"]),
            bytes.fromhex(data["previous"]),
            str(data["sealed"]),
            str(data["key"]),
            None if data.get("total") is None else int(data["total"]),
        )


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def verify_head(public_key: Ed25519PublicKey, head: BlockHead, signature: bytes) -> bool:
    try:
        public_key.verify(signature, head.message())
    except InvalidSignature:
        return False
    return True


class LedgerKey:
    """The server's Ed25519 signing key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.id = key_id(self.public_key)

    def sign(self, head: BlockHead) -> bytes:
        return self.private_key.sign(head.message())

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def load_or_create(cls, path: Path) -> LedgerKey:
        """Load the PEM key at ``path``; create it (mode 0600) if absent. Safe against concurrent creators."""
        if not path.exists():
            private_dir(path.parent)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".ledger-key-")
            try:
                os.fchmod(handle, 0o600)
                os.write(handle, pem)
                os.close(handle)
                with contextlib.suppress(FileExistsError):
                    os.link(temporary, path)  # atomic; the first creator wins
            finally:
                os.unlink(temporary)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    @classmethod
    def configured(cls, data_dir: Path, settings: LedgerSettings | None = None) -> LedgerKey:
        settings = settings or LedgerSettings()
        return cls.load_or_create(settings.key_file or data_dir / "ledger-key.pem")


def check_proof(proof: dict[str, Any], public_key: Ed25519PublicKey) -> list[str]:
    """Check an inclusion proof offline; the list of problems is empty when it holds.

    1. If the proof carries the event's stored bytes, its leaf is recomputed from them.
    2. The audit path must lead from the leaf to the head's Merkle root.
    3. The head's signature must verify with ``public_key`` (take it from the published URL, not the proof).
    """
    problems: list[str] = []
    head = BlockHead.from_json(proof["head"])
    leaf = bytes.fromhex(proof["leaf"])
    event = proof.get("event", {})
    if "state_hex" in event:
        recomputed = leaf_hash(
            int(event["notification_id"]),
            str(event["originator_id"]),
            int(event["originator_version"]),
            str(event["topic"]),
            bytes.fromhex(event["state_hex"]),
        )
        if recomputed != leaf:
            problems.append("the event's stored bytes do not hash to the proof's leaf")
    path = [bytes.fromhex(h) for h in proof["path"]]
    if not verify_inclusion(leaf, int(proof["leaf_index"]), head.count, path, head.root):
        problems.append(f"the audit path does not lead to block {head.number}'s Merkle root")
    if head.key_id != key_id(public_key):
        problems.append(f"the head was signed with key {head.key_id}, not with key {key_id(public_key)}")
    elif not verify_head(public_key, head, bytes.fromhex(proof["signature"])):
        problems.append("the head's signature does not verify")
    return problems
