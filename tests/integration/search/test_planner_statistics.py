"""A PostgreSQL store keeps its planner statistics fresh by itself: this machine kind runs PostgreSQL with
autovacuum off, and a search table never analysed is planned as if nearly empty (nested loops that run into
the statement timeout). Writes through the FHIR API fill the search index; the server analyses it."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from projections.statistics import analyze_changed_tables
from tests.conftest import CORPUS
from tests.support.waiting import wait_until

pytestmark = pytest.mark.postgres

BUNDLES = sorted((CORPUS / "synthea" / "smart-r4-2019").glob("*.json"))[:3]
#: The tables of token and reference parameters (codes, identifiers, subjects): three patients' records put
#: more than the threshold's 1,000 rows in each (their resource keys, a row per resource, stay below it).
SEARCH_TABLES = ("search_token", "search_reference")


@pytest.fixture
def settings(postgres_settings: Settings) -> Settings:
    """PostgreSQL only: the statistics are PostgreSQL's (SQLite plans without them here)."""
    return postgres_settings


def _statistics(settings: Settings) -> dict[str, tuple[Any, float, int]]:
    """(last_analyze, reltuples, live rows) of each search table."""
    with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
        rows = connection.execute(
            "SELECT s.relname, s.last_analyze, c.reltuples, s.n_live_tup FROM pg_stat_user_tables s "
            "JOIN pg_class c ON c.oid = s.relid WHERE s.schemaname = %s AND s.relname = ANY(%s)",
            (settings.postgres_schema, list(SEARCH_TABLES)),
        ).fetchall()
    return {str(row[0]): (row[1], float(row[2]), int(row[3])) for row in rows}


def _row_count(settings: Settings, table: str) -> int:
    with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
        row = connection.execute(f'SELECT count(*) FROM "{settings.postgres_schema}".{table}').fetchone()
    assert row is not None
    return int(row[0])


def test_the_search_tables_are_analysed_after_writes_fill_them(settings: Settings, client: TestClient) -> None:
    for bundle in BUNDLES:
        response = client.post("/fhir", content=bundle.read_bytes(), headers={"content-type": "application/fhir+json"})
        assert response.status_code == 200, response.text[:500]
    written = {table: _row_count(settings, table) for table in SEARCH_TABLES}
    assert all(count > 1_000 for count in written.values()), written  # past the threshold: to be analysed

    def analysed() -> bool:
        seen = _statistics(settings)
        return len(seen) == len(SEARCH_TABLES) and all(last is not None for last, _, _ in seen.values())

    wait_until(analysed, "the search tables analysed", seen=lambda: _statistics(settings))
    # The planner now knows each table's size (never analysed, reltuples is -1: "unknown").
    for table, (_, reltuples, _) in _statistics(settings).items():
        assert reltuples == written[table], (table, reltuples, written)


def _write(connection: psycopg.Connection[Any], table: str, rows: int) -> None:
    """``rows`` inserts into ``table``, counted in ``n_mod_since_analyze`` before this returns: the backend
    flushes its counts to the statistics collector when it next goes idle, forced here (not up to 1 s later)."""
    connection.execute(f"INSERT INTO {table} (n) SELECT g FROM generate_series(1, %s) g", (rows,))
    connection.execute("SELECT pg_stat_force_next_flush()")


def test_a_table_is_analysed_past_1000_changed_rows_and_10_percent(postgres_settings: Settings) -> None:
    schema = postgres_settings.postgres_schema
    conninfo = postgres_settings.postgres_conninfo()
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
        connection.execute(f'SET search_path = "{schema}"')
        connection.execute("CREATE TABLE small (n BIGINT)")
        connection.execute("CREATE TABLE large (n BIGINT)")
        _write(connection, "small", 900)
        _write(connection, "large", 20_000)
        assert analyze_changed_tables(conninfo, schema) == ["large"]  # "small" is below 1,000 changed rows
        _write(connection, "large", 1_500)
        assert analyze_changed_tables(conninfo, schema) == []  # 1,500 rows are less than 10 % of 20,000
        _write(connection, "large", 600)
        assert analyze_changed_tables(conninfo, schema) == ["large"]
        _write(connection, "small", 200)
        assert analyze_changed_tables(conninfo, schema) == ["small"]
