"""Replacing a resource's index rows must not depend on fresh statistics (this machine kind runs PostgreSQL
with autovacuum off, and a new store is never analysed): the delete by sid reads the sid index alone, never
every row of the resource type through a lookup index."""

from __future__ import annotations

import psycopg
import pytest

from ehr_core.settings import Settings
from fhir_api.services import Services
from projections.search.index import delete_by_sid

pytestmark = pytest.mark.postgres

#: Rows of one type in the token table: enough that reading all of them costs what one sid lookup does not.
ROWS = 100_000


def test_a_delete_by_sid_reads_only_the_sid_index_without_statistics(postgres_settings: Settings) -> None:
    Services.open(postgres_settings, follow=False).close()  # the views' tables and indexes, as a store has them
    schema = postgres_settings.postgres_schema
    with psycopg.connect(postgres_settings.postgres_conninfo(), autocommit=True) as connection:
        connection.execute(f'SET search_path = "{schema}"')
        connection.execute(
            "INSERT INTO search_token (resource_type, param, system, code, sid) "
            "SELECT 'Observation', 'code', 'http://loinc.org', (g %% 50)::text, g / 3 FROM generate_series(1, %s) g",
            (ROWS,),
        )
        statement = delete_by_sid("search_token", 3).replace("?", "%s")
        plan = "\n".join(
            str(row[0])
            for row in connection.execute("EXPLAIN " + statement, (4, 5, 6, "Observation")).fetchall()  # type: ignore[arg-type]
        )
    assert "search_token_sid" in plan, plan
    assert "lookup" not in plan and "BitmapAnd" not in plan and "Seq Scan" not in plan, plan
