"""A create's search index and full-text rows on PostgreSQL: one prepared statement each (projections/search/
writes.py), the rows those of the extraction, an open range's infinite bound kept (JSON has no infinity)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ehr_core.settings import Settings
from fhir_api.services import Services
from projections.changes import Change
from projections.db import PostgresViews, Tx
from projections.search import SearchIndex
from projections.search.extract import extract
from projections.search.fulltext import FullTextIndex

pytestmark = pytest.mark.postgres

OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Presión arterial</div>'},
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-04-09T10:00:00Z",
    "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
}
#: An open Range: its missing high bound is indexed as infinity (onset-age, and the composite's columns).
CONDITION = {
    "resourceType": "Condition",
    "id": "c1",
    "subject": {"reference": "Patient/p1"},
    "onsetRange": {"low": {"value": 10, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}},
}


class _Counted:
    """The transaction, counting the statements sent through it."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        self.dialect = tx.dialect
        self.statements = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Tx:
        self.statements += 1
        return self.tx.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.statements += len(rows)
        self.tx.executemany(sql, rows)

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.statements += bool(rows)
        self.tx.insert(table, columns, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tx, name)


def _change(number: int, resource: dict[str, Any]) -> Change:
    return Change(
        number, resource["resourceType"], resource["id"], 1, "2026-01-01T00:00:00Z", datetime.now(UTC), "POST",
        orjson.dumps(resource), [], {},
    )  # fmt: skip


def test_a_create_is_one_prepared_statement_per_view_with_the_extracted_rows(postgres_settings: Settings) -> None:
    Services.open(postgres_settings, follow=False).close()  # the views' tables and indexes, as a store has them
    views = PostgresViews(postgres_settings.postgres_conninfo(), postgres_settings.postgres_schema, pool_size=1)
    index, text = SearchIndex(), FullTextIndex()
    try:
        for number, resource in enumerate((OBSERVATION, CONDITION), start=1):
            with views.write() as tx, tx.pipelined():  # as a create's read-your-writes projection
                counted = _Counted(tx)
                index.apply(counted, [_change(number, resource)])
                assert counted.statements == 1, resource["resourceType"]
                counted = _Counted(tx)
                text.apply(counted, [_change(number, resource)])
                assert counted.statements == 1, resource["resourceType"]
        with views.read_primary() as tx:
            prepared = [str(row[0]) for row in tx.execute("SELECT statement FROM pg_prepared_statements").fetchall()]
            assert any("INSERT INTO search_ids" in statement for statement in prepared), prepared
            assert any("INSERT INTO search_fulltext" in statement for statement in prepared), prepared
            stored = index.dump(tx)
            fulltext = tx.execute("SELECT sid, narrative IS NOT NULL FROM search_fulltext ORDER BY sid").fetchall()
    finally:
        views.close()
    assert fulltext == [(1, True), (2, False)]
    for sid, resource in enumerate((OBSERVATION, CONDITION), start=1):
        rows = extract(resource)
        for name in vars(rows):
            table = f"search_{name}"
            # A reference's target key (projections/search/targets.py) is the index's: Patient/p1 is not stored.
            ours = [row[1:-1] for row in stored[table] if row[-1] == sid]
            found = sorted((row[:-1] if name == "reference" and row[-1] is None else row for row in ours), key=repr)
            wanted = sorted((_stored(name, row) for row in getattr(rows, name)), key=repr)
            assert found == wanted, (resource["resourceType"], table)
    onset = next(row for row in stored["search_quantity"] if row[1] == "onset-age")
    assert onset[5:7] == (10.0, math.inf)


def _stored(name: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row as PostgreSQL gives it back: a date component's bounds (composite ``low``, ``high``) as doubles."""
    if name != "composite":
        return row
    return (*row[:3], *(float(value) if isinstance(value, int) else value for value in row[3:]))
