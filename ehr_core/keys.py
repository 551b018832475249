"""Data keys per patient compartment, wrapped by a master key (DESIGN.md "Keys, encryption, erasure").

- A **data key** is 32 random bytes (AES-256-GCM) with a random 16-byte **key id**. One per patient
  compartment, one for everything outside any compartment (the system key, compartment ``*system*``).
- Data keys live in a **key table** outside the event log: ``keys.sqlite`` in the data dir (SQLite) or the
  table ``ehr_data_keys`` in the deployment's PostgreSQL schema. Each row holds the key *wrapped*
  (AES-256-GCM under the master key, associated data = key id), the id of the master key that wrapped it,
  and a status: ``active``, ``blocked`` (ARCO cancellation during retention: readable, no new writes) or
  ``shredded`` (the wrapped key is overwritten with NULL: every event under it is unreadable for good).
- The **master key** comes from configuration: ``EHR_MASTER_KEY`` (base64 of 32 bytes) or
  ``EHR_MASTER_KEY_FILE`` (a file holding that base64). With ``EHR_ENV=production`` the server refuses to
  start without one. In development one is generated into ``<data dir>/master-key`` and announced loudly.
- **Rotation** re-wraps every data key under a new master key in one transaction; events are untouched.
  Rows carry the id of their master, so a keyring of current + previous masters reads during a rotation.

Unwrapped keys are cached in memory (key id → AESGCM; compartment → key id).
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ehr_core.errors import RecordError
from ehr_core.files import private_dir, private_sqlite
from ehr_core.settings import Settings

__all__ = [
    "SYSTEM",
    "Blocked",
    "DataKey",
    "Erased",
    "KeyStore",
    "KeyStoreError",
    "MasterKey",
    "MasterKeyMissing",
    "load_masters",
]

#: The compartment name of the system key (resources outside every patient compartment).
SYSTEM = "*system*"
_KEY_BYTES = 32
_ID_BYTES = 16
#: Rows per INSERT (and compartments per IN list) when many new patients arrive at once (an import):
#: five parameters a row stay far below both engines' limits on parameters per statement.
_INSERT_ROWS = 1000
_WRAP_AAD = b"ehr-core/data-key/v1|"
_DEV_FILE = "master-key"


class KeyStoreError(RuntimeError):
    """The key table and the configuration disagree (unknown master, missing key): never silent."""


class MasterKeyMissing(KeyStoreError):
    """Production mode without a master key."""


class Erased(RecordError):
    """The patient's data key was destroyed (crypto-shredding): their records answer 410 Gone."""

    category = "deleted"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="deleted")


class Blocked(RecordError):
    """An ARCO cancellation request blocks the patient's record during retention: 403."""

    category = "forbidden"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="suppressed")


@dataclass(frozen=True)
class MasterKey:
    key: bytes

    @property
    def id(self) -> str:
        """A public fingerprint (not the key): names which master wrapped a data key."""
        return hashlib.sha256(b"ehr-core/master-key-id|" + self.key).hexdigest()[:16]

    @classmethod
    def parse(cls, text: str | bytes) -> MasterKey:
        raw = base64.b64decode(text.strip(), validate=True)
        if len(raw) != _KEY_BYTES:
            raise KeyStoreError(f"a master key must be {_KEY_BYTES} bytes (base64), got {len(raw)}")
        return cls(raw)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(AESGCM.generate_key(bit_length=256))

    def encoded(self) -> bytes:
        return base64.b64encode(self.key) + b"\n"

    def wrap(self, key_id: bytes, data_key: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self.key).encrypt(nonce, data_key, _WRAP_AAD + key_id)

    def unwrap(self, key_id: bytes, wrapped: bytes) -> bytes:
        return AESGCM(self.key).decrypt(wrapped[:12], wrapped[12:], _WRAP_AAD + key_id)


def write_key_file(path: Path, key: MasterKey, exclusive: bool = False) -> None:
    """Write a master key file atomically, readable by its owner only.

    ``exclusive``: never replace an existing file (two processes generating at once: the first one wins).
    """
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.encoded())
        os.fsync(fd)
    finally:
        os.close(fd)
    if not exclusive:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def load_masters(settings: Settings, announce: bool = True) -> tuple[MasterKey, list[MasterKey]]:
    """The current master key and any previous ones (a rotation in progress), from configuration.

    Production (``EHR_ENV=production``) demands ``EHR_MASTER_KEY`` or ``EHR_MASTER_KEY_FILE``. Development
    falls back to ``<data dir>/master-key``, generated on first use, and says so on stderr.
    """
    previous: list[MasterKey] = []
    if settings.master_key_previous_file is not None and settings.master_key_previous_file.exists():
        previous.append(MasterKey.parse(settings.master_key_previous_file.read_text()))
    if settings.master_key:
        return MasterKey.parse(settings.master_key), previous
    if settings.master_key_file is not None:
        return MasterKey.parse(settings.master_key_file.read_text()), previous
    if settings.production:
        raise MasterKeyMissing(
            "EHR_ENV=production needs a master key: set EHR_MASTER_KEY (base64 of 32 bytes) or EHR_MASTER_KEY_FILE"
        )
    path = settings.data_dir / _DEV_FILE
    # Files a development rotation leaves behind (see KeyStore.rotate_development): read them all by id.
    for extra in (path.with_name(_DEV_FILE + ".previous"), path.with_name(_DEV_FILE + ".next")):
        if extra.exists():
            previous.append(MasterKey.parse(extra.read_text()))
    if not path.exists():
        write_key_file(path, MasterKey.generate(), exclusive=True)
        if announce:
            print(
                f"ehr: WARNING — DEVELOPMENT MASTER KEY generated at {path.resolve()}; set EHR_MASTER_KEY_FILE "
                "and EHR_ENV=production for real data",
                file=sys.stderr,
                flush=True,
            )
    elif announce:
        print(
            f"ehr: WARNING — using the DEVELOPMENT MASTER KEY in {path.resolve()} (no EHR_MASTER_KEY configured)",
            file=sys.stderr,
            flush=True,
        )
    return MasterKey.parse(path.read_text()), previous


@dataclass(frozen=True)
class DataKey:
    key_id: bytes
    compartment: str
    cipher: AESGCM


@dataclass(frozen=True)
class KeyRow:
    key_id: bytes
    compartment: str
    wrapped: bytes | None
    master_id: str | None
    status: str
    changed: str | None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Table:
    """The key table's SQL on one connection (SQLite file or PostgreSQL), serialised by a lock."""

    def __init__(self, settings: Settings) -> None:
        self.postgres = settings.uses_postgres
        self._lock = threading.RLock()
        self._settings = settings
        self._connection: Any = None
        self.name = "ehr_data_keys"
        self._connect()
        blob = "BYTEA" if self.postgres else "BLOB"
        with self.transaction() as cursor:
            cursor.execute(
                f"""CREATE TABLE IF NOT EXISTS {self.name} (
                    key_id {blob} PRIMARY KEY,
                    compartment TEXT NOT NULL UNIQUE,
                    wrapped {blob},
                    master_id TEXT,
                    status TEXT NOT NULL,
                    created TEXT NOT NULL,
                    changed TEXT)"""
            )

    def _connect(self) -> None:
        if self.postgres:
            import psycopg

            schema = self._settings.postgres_schema
            self._connection = psycopg.connect(
                self._settings.postgres_conninfo(),
                autocommit=True,
                options=f"{self._settings.postgres_options()} -c search_path={schema}",  # the timeouts kept
            )
        else:
            path = private_sqlite(self._settings.data_dir / "keys.sqlite")
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            # A shredded key is overwritten on disk, not only unlinked from the b-tree.
            connection.execute("PRAGMA secure_delete=ON")
            connection.execute("PRAGMA journal_mode=DELETE")
            connection.execute("PRAGMA busy_timeout=30000")
            self._connection = connection

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._lock:
            if self.postgres:
                if self._connection.closed:
                    self._connect()
                with self._connection.transaction(), self._connection.cursor() as cursor:
                    yield _Cursor(cursor, self)
            else:
                self._connection.execute("BEGIN IMMEDIATE")
                try:
                    yield _Cursor(self._connection.cursor(), self)
                except BaseException:
                    # SQLite may have rolled back already (an I/O error, a full disk): a second ROLLBACK
                    # would fail and hide the error that says what happened.
                    if self._connection.in_transaction:
                        self._connection.execute("ROLLBACK")
                    raise
                self._connection.execute("COMMIT")

    @contextmanager
    def statements(self) -> Iterator[Any]:
        """Statements that each stand alone: on PostgreSQL each commits by itself (no BEGIN, no COMMIT: two
        round trips fewer); on SQLite they share one transaction (one sync of the file, not one each)."""
        if not self.postgres:
            with self.transaction() as cursor:
                yield cursor
            return
        with self._lock:
            if self._connection.closed:
                self._connect()
            with self._connection.cursor() as cursor:
                yield _Cursor(cursor, self)

    def vacuum(self) -> None:
        """Make the forgotten bytes go away on disk too (PostgreSQL keeps dead tuples until VACUUM)."""
        with self._lock:
            if self.postgres:
                self._connection.execute(f"VACUUM {self.name}")
            else:
                self._connection.execute("VACUUM")

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


class _Cursor:
    def __init__(self, cursor: Any, table: _Table) -> None:
        self._cursor, self._table = cursor, table

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> _Cursor:
        self._cursor.execute(self._table.sql(statement), params)
        return self

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())


def _row(values: Any) -> KeyRow:
    wrapped = bytes(values[2]) if values[2] is not None else None
    return KeyRow(bytes(values[0]), str(values[1]), wrapped, values[3], str(values[4]), values[5])


_COLUMNS = "key_id, compartment, wrapped, master_id, status, changed"


class KeyStore:
    """Data keys by compartment and by key id, created on first use, cached unwrapped."""

    def __init__(self, settings: Settings, master: MasterKey | None = None, previous: list[MasterKey] | None = None):
        if master is None:
            master, previous = load_masters(settings)
        self.master = master
        self._masters = {m.id: m for m in [master, *(previous or [])]}
        self._table = _Table(settings)
        self._lock = threading.Lock()
        self._by_id: dict[bytes, DataKey] = {}
        self._by_compartment: dict[str, bytes] = {}
        self._status: dict[bytes, str] = {}

    # -- encryption side -------------------------------------------------------------------------

    def for_compartment(self, compartment: str) -> DataKey:
        """The key that encrypts new events of ``compartment`` (created on first use).

        Raises :class:`Erased` for a shredded compartment and :class:`Blocked` for a blocked one: nothing new
        may be written for them.
        """
        key_id = self._by_compartment.get(compartment)
        if key_id is not None and self._status.get(key_id) == "active":
            return self._by_id[key_id]
        row = self._select("compartment = ?", compartment)
        if row is None:
            row = self._create(compartment)
        if row.status == "shredded":
            raise Erased(f"the record of Patient/{compartment} was erased (crypto-shredded); nothing can be added")
        if row.status == "blocked":
            raise Blocked(
                f"the record of Patient/{compartment} is blocked by an ARCO cancellation request; "
                "it is retained under NOM-004 and may not be changed"
            )
        return self._remember(row)

    def prepare(self, compartments: set[str]) -> None:
        """Have the keys of ``compartments`` at hand before a write seals its events.

        One query finds the keys not cached yet and one transaction creates those that do not exist, instead
        of a round trip or two per new patient inside the append. Statuses are still checked, per event, by
        :meth:`for_compartment` (a blocked or shredded compartment's row is cached as such and refused there).
        """
        unknown = sorted(c for c in compartments if c not in self._by_compartment)
        if not unknown:
            return
        if self._table.postgres:
            self._prepare_in_one(unknown)
            return
        # Each statement stands alone (an INSERT ... ON CONFLICT DO NOTHING is idempotent and a key nobody
        # uses yet harms no one), so they run without BEGIN and COMMIT.
        with self._table.statements() as cursor:
            found = [_row(values) for values in self._select_compartments(cursor, unknown)]
            missing = sorted(set(unknown) - {row.compartment for row in found})
            for start in range(0, len(missing), _INSERT_ROWS):
                chunk = missing[start : start + _INSERT_ROWS]
                params, values = self._new_rows(chunk)
                cursor.execute(
                    f"INSERT INTO {self._table.name} (key_id, compartment, wrapped, master_id, status, created) "
                    f"VALUES {values} ON CONFLICT (compartment) DO NOTHING",
                    tuple(params),
                )
            if missing:
                # Ours, or the ones a concurrent writer made first.
                found += [_row(values) for values in self._select_compartments(cursor, missing)]
        for row in found:
            if row.status != "shredded":
                self._remember(row)

    def _new_rows(self, compartments: list[str]) -> tuple[list[Any], str]:
        """The parameters and ``VALUES`` list of one new key row per compartment, each data key wrapped by the
        master key."""
        params: list[Any] = []
        for compartment in compartments:
            key_id, data_key = os.urandom(_ID_BYTES), AESGCM.generate_key(bit_length=256)
            params += [key_id, compartment, self.master.wrap(key_id, data_key), self.master.id, _now()]
        return params, ", ".join("(?, ?, ?, ?, 'active', ?)" for _ in compartments)

    def _prepare_in_one(self, unknown: list[str]) -> None:
        """:meth:`prepare` on PostgreSQL: one statement (one round trip, on the path of every create that starts a
        compartment) inserts a key for each compartment and returns the rows: those it inserted, and those
        that existed. A key is generated for each, and thrown away where one existed (microseconds; the
        cache spares it for every compartment seen since the process started)."""
        found: list[KeyRow] = []
        with self._table.statements() as cursor:
            for start in range(0, len(unknown), _INSERT_ROWS):
                chunk = unknown[start : start + _INSERT_ROWS]
                params, values = self._new_rows(chunk)
                marks = ", ".join("?" for _ in chunk)
                # The statement's snapshot predates its own inserts: the inserted rows come from RETURNING,
                # the others from the table.
                rows = cursor.execute(
                    f"WITH inserted AS (INSERT INTO {self._table.name} "
                    "(key_id, compartment, wrapped, master_id, status, created) "
                    f"VALUES {values} ON CONFLICT (compartment) DO NOTHING RETURNING {_COLUMNS}) "
                    f"SELECT {_COLUMNS} FROM inserted UNION ALL "
                    f"SELECT {_COLUMNS} FROM {self._table.name} WHERE compartment IN ({marks})",
                    (*params, *chunk),
                ).fetchall()
                found += [_row(row) for row in rows]
            # A key a concurrent writer committed after this statement's snapshot: neither inserted nor seen.
            missing = sorted(set(unknown) - {row.compartment for row in found})
            if missing:
                found += [_row(values) for values in self._select_compartments(cursor, missing)]
        for row in found:
            if row.status != "shredded":
                self._remember(row)

    def _select_compartments(self, cursor: _Cursor, compartments: list[str]) -> list[Any]:
        rows: list[Any] = []
        for start in range(0, len(compartments), _INSERT_ROWS):
            chunk = compartments[start : start + _INSERT_ROWS]
            marks = ", ".join("?" for _ in chunk)
            statement = f"SELECT {_COLUMNS} FROM {self._table.name} WHERE compartment IN ({marks})"
            rows += cursor.execute(statement, tuple(chunk)).fetchall()
        return rows

    def _create(self, compartment: str) -> KeyRow:
        key_id, data_key = os.urandom(_ID_BYTES), AESGCM.generate_key(bit_length=256)
        wrapped = self.master.wrap(key_id, data_key)
        with self._table.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO {self._table.name} (key_id, compartment, wrapped, master_id, status, created) "
                "VALUES (?, ?, ?, ?, 'active', ?) ON CONFLICT (compartment) DO NOTHING",
                (key_id, compartment, wrapped, self.master.id, _now()),
            )
        row = self._select("compartment = ?", compartment)  # ours, or the one a concurrent writer made first
        assert row is not None
        return row

    # -- decryption side -------------------------------------------------------------------------

    def by_id(self, key_id: bytes) -> DataKey | None:
        """The key for ``key_id``; None if it was shredded. A key id nobody knows is an error, never silence."""
        key = self._by_id.get(key_id)
        if key is not None:
            return key
        row = self._select("key_id = ?", key_id)
        if row is None:
            raise KeyStoreError(f"data key {key_id.hex()} is not in the key table: wrong key table or database?")
        if row.status == "shredded":
            return None
        return self._remember(row)

    def forget(self, key_id: bytes) -> None:
        """Drop a key from the cache (another process shredded or blocked it; seen through the log)."""
        with self._lock:
            key = self._by_id.pop(key_id, None)
            self._status.pop(key_id, None)
            if key is not None and self._by_compartment.get(key.compartment) == key_id:
                del self._by_compartment[key.compartment]

    def _remember(self, row: KeyRow) -> DataKey:
        if row.wrapped is None or row.master_id is None:
            raise KeyStoreError(f"data key {row.key_id.hex()} has no wrapped key")
        master = self._masters.get(row.master_id)
        if master is None:
            raise KeyStoreError(
                f"data key {row.key_id.hex()} is wrapped by master key {row.master_id}, which is not configured "
                f"(configured: {', '.join(self._masters)})"
            )
        try:
            data_key = master.unwrap(row.key_id, row.wrapped)
        except InvalidTag:
            raise KeyStoreError(f"data key {row.key_id.hex()} does not unwrap with master key {master.id}") from None
        key = DataKey(row.key_id, row.compartment, AESGCM(data_key))
        with self._lock:
            self._by_id[row.key_id] = key
            self._status[row.key_id] = row.status
            self._by_compartment[row.compartment] = row.key_id
        return key

    def _select(self, where: str, value: Any) -> KeyRow | None:
        with self._table.transaction() as cursor:
            found = cursor.execute(f"SELECT {_COLUMNS} FROM {self._table.name} WHERE {where}", (value,)).fetchone()
        return _row(found) if found is not None else None

    # -- administration --------------------------------------------------------------------------

    def row(self, compartment: str) -> KeyRow | None:
        return self._select("compartment = ?", compartment)

    def key_id_of(self, compartment: str) -> bytes | None:
        row = self.row(compartment)
        return row.key_id if row is not None else None

    def set_status(self, compartment: str, status: str) -> KeyRow | None:
        """``blocked``/``active``; ``shredded`` goes through :meth:`shred`."""
        assert status in ("active", "blocked")
        with self._table.transaction() as cursor:
            cursor.execute(
                f"UPDATE {self._table.name} SET status = ?, changed = ? WHERE compartment = ? AND status != 'shredded'",
                (status, _now(), compartment),
            )
        row = self.row(compartment)
        if row is not None:
            self.forget(row.key_id)
        return row

    def mark_shredding(self, compartment: str) -> KeyRow | None:
        """Stop new writes for the compartment before its shredding is recorded (status ``blocked``)."""
        row = self.row(compartment)
        if row is None or row.status == "shredded":
            return row
        return self.set_status(compartment, "blocked")

    def shred(self, compartment: str) -> bool:
        """Destroy the compartment's data key: the wrapped bytes are overwritten with NULL and vacuumed."""
        with self._table.transaction() as cursor:
            found = cursor.execute(
                f"SELECT key_id FROM {self._table.name} WHERE compartment = ? AND status != 'shredded'", (compartment,)
            ).fetchone()
            if found is None:
                return False
            cursor.execute(
                f"UPDATE {self._table.name} SET wrapped = NULL, master_id = NULL, status = 'shredded', changed = ? "
                "WHERE compartment = ?",
                (_now(), compartment),
            )
        self.forget(bytes(found[0]))
        self._table.vacuum()
        return True

    def rotate(self, new_master: MasterKey) -> int:
        """Re-wrap every live data key under ``new_master`` in one transaction; return how many."""
        count = 0
        with self._table.transaction() as cursor:
            rows = [
                _row(r)
                for r in cursor.execute(
                    f"SELECT {_COLUMNS} FROM {self._table.name} WHERE wrapped IS NOT NULL"
                ).fetchall()
            ]
            for row in rows:
                assert row.wrapped is not None and row.master_id is not None
                master = self._masters.get(row.master_id)
                if master is None:
                    raise KeyStoreError(f"data key {row.key_id.hex()} is wrapped by unknown master {row.master_id}")
                data_key = master.unwrap(row.key_id, row.wrapped)
                cursor.execute(
                    f"UPDATE {self._table.name} SET wrapped = ?, master_id = ? WHERE key_id = ?",
                    (new_master.wrap(row.key_id, data_key), new_master.id, row.key_id),
                )
                count += 1
        self._masters[new_master.id] = new_master
        self.master = new_master
        return count

    def rows(self) -> list[KeyRow]:
        with self._table.transaction() as cursor:
            return [_row(r) for r in cursor.execute(f"SELECT {_COLUMNS} FROM {self._table.name}").fetchall()]

    def close(self) -> None:
        self._table.close()
