"""The ledger projection: signed Merkle blocks over the stored events, and their verification.

The ledger follows the raw log (stored bytes, not decoded events), so it is not a :class:`View` of
changes: :class:`Ledger` keeps its own tracking row in ``projection_tracking`` (same exactly-once rule as
:class:`~projections.projector.Projector`: the block, its leaves and the position move in one transaction,
under the tracking row's lock). Full blocks are sealed as soon as ``block_size`` events are there; a
partly filled block is sealed on demand (:meth:`Ledger.seal` with ``partial=True``: the periodic sealer,
an inclusion proof for a recent event).

:func:`verify` recomputes every leaf from the event store, compares it with the recorded leaf of the
same notification id, recomputes every block's root, checks the hash chain and every signature, and
names the first problem: an altered, missing, moved (reordered) or inserted event.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from eventsourcing.application import Application
from eventsourcing.persistence import Notification, StoredEvent

from ehr_core.application import format_instant
from ehr_core.files import private_dir
from ehr_core.ledger import (
    GENESIS,
    BlockHead,
    LedgerKey,
    inclusion_path,
    leaf_hash,
    merkle_root,
    verify_head,
)
from ehr_core.settings import Settings
from projections.db import Dialect, Tx, ViewDatabase

__all__ = [
    "Ledger",
    "LedgerSealer",
    "StoreSpec",
    "VerifyReport",
    "open_reader",
    "raw_reader",
    "read_witness",
    "recorder_reader",
    "sealed_events",
    "verify",
    "witness_path",
    "write_witness",
]

Progress = Callable[[int], None]

log = logging.getLogger(__name__)


def _blob(dialect: Dialect) -> str:
    return "BYTEA" if dialect == "postgres" else "BLOB"


def _leaf(notification: Notification) -> bytes:
    return leaf_hash(
        notification.id,
        notification.originator_id,
        notification.originator_version,
        notification.topic,
        bytes(notification.state),
    )


def _head(row: tuple[Any, ...]) -> tuple[BlockHead, bytes]:
    number, first, last, count, root, previous, sealed, key, signature, total = row
    head = BlockHead(
        int(number),
        int(first),
        int(last),
        int(count),
        bytes(root),
        bytes(previous),
        str(sealed),
        str(key),
        None if total is None else int(total),
    )
    return head, bytes(signature)


_HEAD_COLUMNS = "block, first_id, last_id, count, root, previous, sealed_at, key_id, signature, total"


class Ledger:
    """Keeps the ledger of one application's log in ``{prefix}_blocks`` and ``{prefix}_leaves``."""

    def __init__(
        self,
        application: Application[Any],
        database: ViewDatabase,
        key: LedgerKey,
        name: str = "ledger",
        block_size: int = 1000,
        witness: Path | None = None,
    ) -> None:
        """``witness``: a file outside the database where each newly signed head is also kept (see
        :func:`write_witness`), so that cutting the log's tail together with its ledger rows is noticed."""
        self.application = application
        self.witness = witness
        self.database = database
        self.key = key
        self.name = name
        self.blocks = f"{name}_blocks"
        self.leaves = f"{name}_leaves"
        self.block_size = block_size
        self._lock = threading.Lock()

    def create_tables(self) -> None:
        blob = _blob(self.database.dialect)
        with self.database.write() as tx:
            tx.execute(
                "CREATE TABLE IF NOT EXISTS projection_tracking (name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
            )
            tx.execute(
                f"""CREATE TABLE IF NOT EXISTS {self.blocks} (
                    block BIGINT PRIMARY KEY,
                    first_id BIGINT NOT NULL,
                    last_id BIGINT NOT NULL,
                    count BIGINT NOT NULL,
                    root {blob} NOT NULL,
                    previous {blob} NOT NULL,
                    sealed_at TEXT NOT NULL,
                    key_id TEXT NOT NULL,
                    signature {blob} NOT NULL,
                    total BIGINT)"""
            )
            # Ledgers created before heads committed to the log's length (format 1): add the column; their
            # old rows keep total NULL and verify as format-1 heads.
            if self.database.dialect == "postgres":
                tx.execute(f"ALTER TABLE {self.blocks} ADD COLUMN IF NOT EXISTS total BIGINT")
            elif "total" not in [str(r[1]) for r in tx.execute(f"PRAGMA table_info({self.blocks})").fetchall()]:
                tx.execute(f"ALTER TABLE {self.blocks} ADD COLUMN total BIGINT")
            tx.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {self.blocks}_last ON {self.blocks} (last_id)")
            tx.execute(
                f"""CREATE TABLE IF NOT EXISTS {self.leaves} (
                    notification_id BIGINT PRIMARY KEY,
                    block BIGINT NOT NULL,
                    leaf_index INTEGER NOT NULL,
                    originator_id TEXT NOT NULL,
                    originator_version BIGINT NOT NULL,
                    leaf {blob} NOT NULL)"""
            )
            tx.execute(
                f"CREATE INDEX IF NOT EXISTS {self.leaves}_event ON {self.leaves} (originator_id, originator_version)"
            )
            tx.execute(f"CREATE INDEX IF NOT EXISTS {self.leaves}_block ON {self.leaves} (block, leaf_index)")
            tx.execute(
                "INSERT INTO projection_tracking (name, position) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
                (self.name,),
            )

    # -- sealing -----------------------------------------------------------------------------------

    def seal(self, partial: bool = False, until: int | None = None) -> int:
        """Seal every full block pending (and a last partial one if ``partial``); return blocks sealed.

        ``until``: stop once the events up to this notification id are sealed. A partial seal without one
        stops at the log's end as it was when asked: the events that arrive while it signs wait for the
        next call (or fill a block), instead of each round sealing a block of the few that came during the
        last, for as long as requests keep coming (every request appends an audit entry)."""
        if partial and until is None:
            until = self.application.recorder.max_notification_id() or 0
        sealed = 0
        with self._lock:
            while (head := self._seal_one(partial)) is not None:
                sealed += 1
                if self.witness is not None:
                    write_witness(self.witness, *head)
                if until is not None and head[0].last_id >= until:
                    break
        return sealed

    def position(self) -> int:
        with self.database.read_primary() as tx:
            row = tx.execute("SELECT position FROM projection_tracking WHERE name = ?", (self.name,)).fetchone()
        return int(row[0]) if row else 0

    def _seal_one(self, partial: bool) -> tuple[BlockHead, bytes] | None:
        lock = " FOR UPDATE" if self.database.dialect == "postgres" else ""
        with self.database.write() as tx:
            row = tx.execute(f"SELECT position FROM projection_tracking WHERE name = ?{lock}", (self.name,)).fetchone()
            position = int(row[0]) if row else 0
            recorder = self.application.recorder
            if not partial and (recorder.max_notification_id() or 0) - position < self.block_size:
                # Fewer ids than a block after the position, so fewer events (ids only skip, never repeat):
                # known from the log's index alone. The follower asks after every round it applies, and the
                # audit log grows by an entry per request: reading up to a block of events (with their
                # states) each time only to count them was 42% of the projection worker's samples under
                # reads (py-spy), the worker then at a third of a core.
                return None
            notifications = recorder.select_notifications(
                start=position, limit=self.block_size, inclusive_of_start=False
            )
            if not notifications or (len(notifications) < self.block_size and not partial):
                return None
            last = tx.execute(f"SELECT {_HEAD_COLUMNS} FROM {self.blocks} ORDER BY block DESC LIMIT 1").fetchone()
            last_head = None if last is None else _head(last)[0]
            previous, number = (GENESIS, 0) if last_head is None else (last_head.digest(), last_head.number + 1)
            if last_head is None:
                sealed_before = 0
            elif last_head.total is not None:
                # The last head's signed running total: the sum over every block, without reading them all
                # again (the sealer signs a partly filled block every few seconds, so the blocks add up).
                sealed_before = last_head.total
            else:  # a block signed before heads carried their total
                row = tx.execute(f"SELECT COALESCE(SUM(count), 0) FROM {self.blocks}").fetchone()
                sealed_before = int(row[0]) if row else 0
            leaves = [_leaf(n) for n in notifications]
            head = BlockHead(
                number,
                notifications[0].id,
                notifications[-1].id,
                len(notifications),
                merkle_root(leaves),
                previous,
                format_instant(datetime.now(UTC)),
                self.key.id,
                sealed_before + len(notifications),
            )
            signature = self.key.sign(head)
            tx.execute(
                f"INSERT INTO {self.blocks} ({_HEAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    head.number,
                    head.first_id,
                    head.last_id,
                    head.count,
                    head.root,
                    head.previous,
                    head.sealed_at,
                    head.key_id,
                    signature,
                    head.total,
                ),
            )
            tx.insert(
                self.leaves,
                ("notification_id", "block", "leaf_index", "originator_id", "originator_version", "leaf"),
                [
                    (n.id, number, index, str(n.originator_id), n.originator_version, leaf)
                    for index, (n, leaf) in enumerate(zip(notifications, leaves, strict=True))
                ],
            )
            tx.execute("UPDATE projection_tracking SET position = ? WHERE name = ?", (head.last_id, self.name))
        return head, signature

    # -- reading -----------------------------------------------------------------------------------

    def latest_head(self) -> tuple[BlockHead, bytes] | None:
        with self.database.read_primary() as tx:
            row = tx.execute(f"SELECT {_HEAD_COLUMNS} FROM {self.blocks} ORDER BY block DESC LIMIT 1").fetchone()
        return _head(row) if row else None

    def proof(self, notification_id: int) -> dict[str, Any] | None:
        """An inclusion proof of one event against its block's signed head (sealing it first if needed)."""
        if self.position() < notification_id:
            self.seal(partial=True, until=notification_id)
        with self.database.read_primary() as tx:
            row = tx.execute(
                f"SELECT block, leaf_index FROM {self.leaves} WHERE notification_id = ?", (notification_id,)
            ).fetchone()
            if row is None:
                return None
            block, index = int(row[0]), int(row[1])
            head_row = tx.execute(f"SELECT {_HEAD_COLUMNS} FROM {self.blocks} WHERE block = ?", (block,)).fetchone()
            leaves = [
                bytes(r[0])
                for r in tx.execute(
                    f"SELECT leaf FROM {self.leaves} WHERE block = ? ORDER BY leaf_index", (block,)
                ).fetchall()
            ]
        assert head_row is not None
        head, signature = _head(head_row)
        stored = self.application.recorder.select_notifications(start=notification_id, limit=1, stop=notification_id)
        event: dict[str, Any] = {"notification_id": notification_id}
        if stored:
            n = stored[0]
            event |= {
                "originator_id": str(n.originator_id),
                "originator_version": n.originator_version,
                "topic": n.topic,
                "state_hex": bytes(n.state).hex(),
            }
        return {
            "format": "ehr-ledger-proof/1",
            "event": event,
            "leaf": leaves[index].hex(),
            "leaf_index": index,
            "path": [h.hex() for h in inclusion_path(leaves, index)],
            "head": head.as_json(),
            "signature": signature.hex(),
            "public_key": self.key.public_pem().decode(),
        }


# -- the witness: the latest signed head, kept outside the database ----------------------------------


def sealed_events(tx: Tx, name: str) -> int:
    """How many events the sealed blocks of the ledger ``name`` cover (what ``verify`` will read)."""
    row = tx.execute(f"SELECT COALESCE(SUM(count), 0) FROM {name}_blocks").fetchone()
    return int(row[0]) if row else 0


def witness_path(settings: Settings, name: str) -> Path:
    """Where the server keeps ledger ``name``'s latest signed head (beside the signing key).

    On PostgreSQL one data dir may serve several databases or schemas (each its own log): the file is
    named after the one whose ledger it is (host, port, database and schema; no credentials).
    """
    if not settings.uses_postgres:
        return settings.data_dir / "ledger-heads" / f"{name}.json"
    url = urlsplit(str(settings.database_url))
    place = f"{url.hostname}:{url.port}{url.path}#{settings.postgres_schema}"
    return settings.data_dir / "ledger-heads" / f"{hashlib.sha256(place.encode()).hexdigest()[:16]}-{name}.json"


def write_witness(path: Path, head: BlockHead, signature: bytes) -> None:
    """Keep ``head`` as the latest signed head at ``path`` (atomically, mode 0600), unless a later one is.

    A signed head that only lives in the ledger's own table proves nothing about the log's length: whoever
    deletes the log's tail can delete its blocks too. A copy outside the database (like a copy fetched from
    ``GET /fhir/$ledger-head`` by another institution) is what makes a truncated log detectable.
    """
    try:
        known = read_witness(path)
    except (ValueError, KeyError, TypeError):  # a damaged copy is replaced; verify reports it if it stays so
        known = None
    if known is not None and known[0].number >= head.number:
        return
    private_dir(path.parent)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(handle, 0o600)
        os.write(handle, json.dumps({**head.as_json(), "signature": signature.hex()}).encode())
        os.close(handle)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_witness(path: Path) -> tuple[BlockHead, bytes] | None:
    """A signed head as written by :func:`write_witness` or served by ``GET /fhir/$ledger-head``."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return BlockHead.from_json(data), bytes.fromhex(data["signature"])


# -- verification -------------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    events: int = 0
    blocks: int = 0
    #: Events in the store after the last sealed block (not yet covered by a signature).
    unsealed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


#: One stored event as the ledger hashes it: (notification id, originator id as canonical UUID text,
#: version, topic, stored state bytes).
RawEvent = tuple[int, str, int, str, bytes]
#: Reads stored events with ``after < id <= stop``, at most ``limit``, in id order.
EventReader = Callable[[int, int, int], Sequence[RawEvent]]

_FIRST = -(2**62)  # ids at or below zero are read too: nothing may hide there


def _canonical(originator_id: object) -> str:
    text = str(originator_id)
    if len(text) == 32:  # SQLite stores UUIDs as 32 hex digits
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    return text


def recorder_reader(application: Application[Any]) -> EventReader:
    """Through the eventsourcing recorder (any backend)."""

    def read(after: int, stop: int, limit: int) -> Sequence[RawEvent]:
        found = application.recorder.select_notifications(start=after, limit=limit, stop=stop, inclusive_of_start=False)
        return [(n.id, str(n.originator_id), n.originator_version, n.topic, bytes(n.state)) for n in found]

    return read


def raw_reader(application: Application[Any], settings: Settings) -> EventReader:
    """Straight from the event table (several times faster than building Notification objects)."""
    return open_reader(StoreSpec.of(application, settings))


def open_reader(store: StoreSpec) -> EventReader:
    settings, table = store.settings, store.table
    if settings.uses_postgres:
        import psycopg

        connection = psycopg.connect(settings.postgres_conninfo(), autocommit=True)
        statement = (
            "SELECT notification_id, originator_id::text, originator_version, topic, state "
            f'FROM "{settings.postgres_schema}"."{table}" '
            "WHERE notification_id > %s AND notification_id <= %s ORDER BY notification_id LIMIT %s"
        )

        def read_postgres(after: int, stop: int, limit: int) -> Sequence[RawEvent]:
            # Binary results: bytea arrives as bytes, not hex text to decode.
            rows = connection.execute(statement, (after, stop, limit), binary=True).fetchall()
            return [(int(r[0]), r[1], int(r[2]), r[3], bytes(r[4])) for r in rows]

        return read_postgres
    import sqlite3

    lite = sqlite3.connect(f"file:{store.sqlite_file}?mode=ro", uri=True, check_same_thread=False)
    query = (
        # CAST: a state rewritten as TEXT (an attacker's UPDATE) must still be read as bytes, and fail the hash.
        f"SELECT rowid, originator_id, originator_version, topic, CAST(state AS BLOB) FROM {table} "
        "WHERE rowid > ? AND rowid <= ? ORDER BY rowid LIMIT ?"
    )

    def read_sqlite(after: int, stop: int, limit: int) -> Sequence[RawEvent]:
        rows = lite.execute(query, (after, stop, limit)).fetchall()
        return [(r[0], _canonical(r[1]), r[2], r[3], r[4]) for r in rows]

    return read_sqlite


def _describe(event: RawEvent) -> str:
    return f"event #{event[0]} (stream {event[1]} version {event[2]})"


def verify(
    application: Application[Any],
    database: ViewDatabase,
    public_key: Ed25519PublicKey,
    name: str = "ledger",
    progress: Progress | None = None,
    reader: EventReader | None = None,
    signed_heads: Sequence[tuple[BlockHead, bytes]] = (),
    unsealed_limit: float | None = None,
) -> VerifyReport:
    """Recompute the ledger from the store; the report names the first problem found.

    1. The chain of heads: numbering, hash links, running totals and every Ed25519 signature.
    2. ``signed_heads`` kept outside the database (the server's witness file, a head fetched earlier from
       ``$ledger-head``): each must verify and be in the ledger as it was signed; a log or ledger that ends
       before one of them was truncated.
    3. Each block: the stored events after the previous block up to its last id, hashed and combined; the
       count and Merkle root must equal the signed ones. A mismatch is diagnosed event by event against
       the recorded leaves, to name the first altered, missing, moved or inserted event.
    4. Events after the last signed head: each must decode as this log's event (a forged one does not
       authenticate), and none may be older than ``unsealed_limit`` seconds (the sealer signs every event
       within its interval, so an older unsealed one was written behind its back).
    """
    report = VerifyReport()
    with database.read() as tx:
        heads = [_head(r) for r in tx.execute(f"SELECT {_HEAD_COLUMNS} FROM {name}_blocks ORDER BY block").fetchall()]
        row = tx.execute("SELECT position FROM projection_tracking WHERE name = ?", (name,)).fetchone()
    position = int(row[0]) if row else 0
    previous, total = GENESIS, 0
    for number, (head, signature) in enumerate(heads):
        if head.number != number:
            report.problems.append(f"block {number} is missing from the ledger (found block {head.number})")
            return report
        if head.previous != previous:
            report.problems.append(f"block {head.number}: its head does not chain to block {head.number - 1}")
            return report
        if not verify_head(public_key, head, signature):
            report.problems.append(f"block {head.number}: the head's signature does not verify with this key")
            return report
        total += head.count
        if head.total is not None and head.total != total:
            report.problems.append(
                f"block {head.number}: its head says {head.total} events were sealed up to it, "
                f"the blocks before it and its own hold {total}"
            )
            return report
        previous = head.digest()
    report.blocks = len(heads)
    plain = [head for head, _ in heads]
    problem = _truncation(application, plain, position, signed_heads, public_key)
    if problem is not None:
        report.problems.append(problem)
        return report
    reader = reader or recorder_reader(application)
    events, problem = _verify_blocks(reader, database, name, plain, _FIRST, progress)
    report.events = events
    if problem is None:
        after = plain[-1].last_id if plain else _FIRST
        report.unsealed, problem = _check_unsealed(application, reader, after, unsealed_limit)
    if problem is not None:
        report.problems.append(problem)
    return report


def _truncation(
    application: Application[Any],
    heads: Sequence[BlockHead],
    position: int,
    signed_heads: Sequence[tuple[BlockHead, bytes]],
    public_key: Ed25519PublicKey,
) -> str | None:
    """Whether the log or its ledger ends before a head that was signed (and kept elsewhere) says it went."""
    for kept, signature in signed_heads:
        if not verify_head(public_key, kept, signature):
            return f"the signed head kept for block {kept.number} does not verify with this key"
        if kept.number >= len(heads):
            last = f"block {len(heads) - 1}" if heads else "no block"
            return (
                f"the log was truncated: block {kept.number} (events up to #{kept.last_id}) was signed, "
                f"but the ledger ends at {last}"
            )
        if heads[kept.number] != kept:
            return f"block {kept.number}: the ledger's head differs from the signed head kept for it"
    if heads and position > heads[-1].last_id:
        return (
            f"the log was truncated: the ledger sealed events up to #{position}, "
            f"but its last block ends at #{heads[-1].last_id}"
        )
    latest = application.recorder.max_notification_id() or 0
    if heads and latest < heads[-1].last_id:
        return (
            f"the log was truncated: block {heads[-1].number}'s signed head covers events up to "
            f"#{heads[-1].last_id} ({heads[-1].total or 'its'} events), the log ends at #{latest}"
        )
    return None


def _check_unsealed(
    application: Application[Any], reader: EventReader, after: int, limit: float | None
) -> tuple[int, str | None]:
    """Count the events after notification id ``after``; the first problem among them, if any."""
    count, stale, oldest = 0, 0, None
    now = datetime.now(UTC)
    while batch := reader(after, 2**62, 1000):
        for event in batch:
            stored = StoredEvent(UUID(event[1]), event[2], event[3], event[4])
            try:
                decoded = application.mapper.to_domain_event(stored)
            except Exception as error:
                return count, (
                    f"{_describe(event)} after the last signed head was inserted: "
                    f"it does not decode as this log's event ({str(error)[:160]})"
                )
            timestamp = getattr(decoded, "timestamp", None)
            if isinstance(timestamp, datetime) and timestamp.tzinfo is None:
                timestamp = timestamp.replace(tzinfo=UTC)
            if limit is not None and isinstance(timestamp, datetime) and (now - timestamp).total_seconds() > limit:
                stale += 1
                oldest = oldest or event
            count += 1
        after = batch[-1][0]
    if oldest is not None:
        return count, (
            f"{stale} events after the last signed head are not yet sealed, {_describe(oldest)} the first of "
            f"them: recorded more than {limit:.0f} s ago, the sealer would have signed them "
            "(written behind the server's back, or its sealer is not running)"
        )
    return count, None


def _verify_blocks(
    reader: EventReader,
    database: ViewDatabase,
    name: str,
    heads: Sequence[BlockHead],
    after: int,
    progress: Progress | None = None,
) -> tuple[int, str | None]:
    """Check consecutive blocks, the first starting after notification id ``after``: (events, first problem)."""
    events = 0
    for head in heads:
        batch = reader(after, head.last_id, head.count + 1)
        if len(batch) == head.count and merkle_root([leaf_hash(*e) for e in batch]) == head.root:
            events += head.count
            after = head.last_id
            if progress is not None:
                progress(head.count)
            continue
        return events, _diagnose(reader, database, name, head, after)
    return events, None


def _diagnose(reader: EventReader, database: ViewDatabase, name: str, head: BlockHead, after: int) -> str:
    """Name the first event of a failing block that differs from what the ledger recorded."""
    stored = list(reader(after, head.last_id, 10 * head.count + 10))
    leaves = f"{name}_leaves"
    with database.read() as tx:
        recorded = tx.execute(
            f"SELECT notification_id, originator_id, originator_version, leaf FROM {leaves} "
            "WHERE block = ? ORDER BY leaf_index",
            (head.number,),
        ).fetchall()
        position = 0
        for nid, originator, version, leaf in recorded:
            pending = stored[position] if position < len(stored) else None
            if pending is not None and pending[0] < nid:
                return _inserted_or_moved(tx, leaves, pending)  # never in the ledger, or recorded elsewhere
            if pending is None or pending[0] > nid:
                return f"event #{nid} (stream {originator} version {version}) is missing from the store"
            if pending[1] != originator or pending[2] != int(version):
                return _inserted_or_moved(tx, leaves, pending)
            if leaf_hash(*pending) != bytes(leaf):
                return f"{_describe(pending)} was altered: its stored bytes do not match the ledger"
            position += 1
        if position < len(stored):
            return _inserted_or_moved(tx, leaves, stored[position])
    return f"block {head.number}: the recorded leaves do not give the signed Merkle root"


@dataclass(frozen=True)
class StoreSpec:
    """Where the event table is (picklable: enough to open a reader anywhere)."""

    settings: Settings
    table: str
    sqlite_file: str

    @classmethod
    def of(cls, application: Application[Any], settings: Settings) -> StoreSpec:
        table = str(getattr(application.recorder, "events_table_name", "stored_events"))
        sqlite_file = application.env.get("SQLITE_DBNAME") or str(settings.data_dir / "events.sqlite")
        return cls(settings, table, sqlite_file)


def _inserted_or_moved(tx: Tx, leaves: str, event: RawEvent) -> str:
    row = tx.execute(
        f"SELECT notification_id FROM {leaves} WHERE originator_id = ? AND originator_version = ?",
        (event[1], event[2]),
    ).fetchone()
    if row is None:
        return f"{_describe(event)} was inserted: the ledger never recorded it"
    return f"{_describe(event)} was moved (reordered): the ledger recorded it as event #{int(row[0])}"


class LedgerSealer(threading.Thread):
    """Seals a partly filled block every ``seconds``, so recent events are soon under a signature."""

    def __init__(self, ledgers: list[Ledger], seconds: float) -> None:
        super().__init__(name="ehr-ledger-sealer", daemon=True)
        self.ledgers = ledgers
        self.seconds = seconds
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)
        # A clean shutdown leaves nothing unsealed: ``ehr verify`` reports events left unsigned for longer
        # than the sealing interval, which must mean tampering, not a server that was stopped in between.
        for ledger in self.ledgers:
            try:
                ledger.seal(partial=True)
            except Exception:
                log.warning("ledger %s could not seal at shutdown", ledger.name, exc_info=True)

    def run(self) -> None:
        while not self._stopping.wait(self.seconds):
            for ledger in self.ledgers:
                try:
                    ledger.seal(partial=True)
                except Exception:  # the sealer must outlive a database restart
                    log.warning("ledger %s could not seal; retrying", ledger.name, exc_info=True)
