"""The master patient index's candidates for a whole projection batch, read in one statement.

Every create of a Patient waits for the identity projection's batch (read-your-writes), and the batch holds
the index's tracking row while it runs. Asking the database for each record's candidates (the records
sharing a blocking key) made that batch one round trip longer per Patient, so under concurrent creates the
batch everyone queues for grew with the load. Here one statement reads every Patient's candidates as the
index stood before the batch (PostgreSQL: a ``LATERAL`` query per record, each with its own limit), and the
records the batch itself has written so far are matched in memory: each record sees exactly the rows the
per-record query would have seen at its turn (an earlier record of the batch with its features and decided
person, a later one as it stood before).

Used only for batches made of resource events (the creates and updates the index decides on): a batch that
also applies Person or Membership events, or an erasure, changes ``mpi_records`` in ways not mirrored here,
and asks record by record as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ehr_core.identity.features import Features
from ehr_core.identity.index import Candidate
from projections.db import Tx
from projections.indexed import indexed

__all__ = ["NONE", "BatchCandidates", "Blocking", "blocking"]

NONE = "-"  # a blocking key no record has (keys are letters, digits and spaces)


@dataclass(frozen=True)
class Blocking:
    """A record's blocking columns as ``mpi_records`` holds them (names as bounded prefixes)."""

    curp: str
    birth_date: str
    birth_year: str
    given: str
    surname1: str
    surname2: str


def blocking(features: Features) -> Blocking:
    f = features
    return Blocking(f.curp, f.birth_date, f.birth_date[:4], indexed(f.given), indexed(f.surname1), indexed(f.surname2))


def _parameters(b: Blocking) -> tuple[str, str, str, str, str, str, str]:
    """The query's values for a record: its keys, a key it lacks never matching (``NONE``)."""
    s1, s2 = b.surname1 or NONE, b.surname2 or NONE
    return (b.curp or NONE, b.birth_date or NONE, b.birth_year or NONE, s1, s2, b.surname1 or NONE, b.given or NONE)


#: The per-record query of ``IdentityIndex.candidates``, once per record of the batch, each with its own limit.
_BATCH = (
    "SELECT k.i, m.record_id, m.person_id, m.features FROM unnest(?::int[], ?::text[], ?::text[], ?::text[], "
    "?::text[], ?::text[], ?::text[], ?::text[], ?::text[]) AS k(i, exclude, curp, birth_date, birth_year, s1, s2, "
    "s1b, given) CROSS JOIN LATERAL (SELECT record_id, person_id, features FROM mpi_records WHERE deleted = 0 "
    "AND record_id <> k.exclude AND (curp = k.curp OR birth_date = k.birth_date OR (birth_year = k.birth_year AND "
    "(surname1 IN (k.s1, k.s2) OR surname2 IN (k.s1, k.s2))) OR (surname1 = k.s1b AND given = k.given)) "
    "ORDER BY record_id LIMIT ?) m ORDER BY k.i, m.record_id"
)


@dataclass
class _Written:
    """A record as the batch has written it so far."""

    person: str
    features: Features | None  # None: deleted
    keys: Blocking | None


class BatchCandidates:
    """Candidates of a batch's records: read ahead in one statement, then kept right as the batch writes."""

    def __init__(self, tx: Tx, records: Sequence[tuple[str, int, Features]], limit: int) -> None:
        #: (record id, version) to the rows read for it, in ``record_id`` order.
        self._read: dict[tuple[str, int], list[tuple[str, str, Features]]] = {}
        self._written: dict[str, _Written] = {}
        self._limit = limit
        if not records:
            return
        columns: list[list[object]] = [[] for _ in range(9)]
        for i, (record, version, features) in enumerate(records):
            for column, value in zip(columns, (i, record, *_parameters(blocking(features))), strict=True):
                column.append(value)
            self._read[(record, version)] = []
        # Each record's own limit, plus one row for every record of the batch: those are replaced by what the
        # batch writes, and what is left must still hold the first ``limit`` rows.
        rows = tx.execute(_BATCH, (*columns, limit + len(records))).fetchall()
        for row in rows:
            record, version, _ = records[int(row[0])]
            self._read[(record, version)].append((str(row[1]), str(row[2]), Features.from_json(row[3])))

    def candidates(self, record: str, version: int, features: Features) -> list[Candidate] | None:
        """The candidates of version ``version`` of ``record`` at its turn (None: not read ahead, ask the database)."""
        read = self._read.pop((record, version), None)
        if read is None:
            return None
        wanted = _parameters(blocking(features))
        found = [(rid, person, f) for rid, person, f in read if rid not in self._written]
        for rid, written in self._written.items():
            if (
                rid != record
                and written.features is not None
                and written.keys is not None
                and _matches(written.keys, wanted)
            ):
                found.append((rid, written.person, written.features))
        found.sort(key=lambda row: row[0])  # the query's ORDER BY record_id (the database's collation is C)
        return [Candidate(f"Patient/{rid}", person, f) for rid, person, f in found[: self._limit]]

    def wrote(self, record: str, features: Features | None, person: str) -> None:
        """The batch wrote ``record`` (its features, or deleted) and decided its person."""
        self._written[record] = _Written(person, features, blocking(features) if features is not None else None)


def _matches(row: Blocking, wanted: tuple[str, str, str, str, str, str, str]) -> bool:
    """The query's condition on one row (its keys as stored) for one record's parameters."""
    curp, birth_date, birth_year, s1, s2, s1b, given = wanted
    return (
        row.curp == curp
        or row.birth_date == birth_date
        or (row.birth_year == birth_year and (row.surname1 in (s1, s2) or row.surname2 in (s1, s2)))
        or (row.surname1 == s1b and row.given == given)
    )
