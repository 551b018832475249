"""A deployment's PostgreSQL schema, and the lock under which processes set it up.

Every process creates what it needs when it starts (``CREATE TABLE IF NOT EXISTS``, the event store's
``CREATE OR REPLACE FUNCTION``). Two processes doing so at the same moment — ``ehr serve --workers 2``, a
server and ``ehr project`` started together, an import's workers — can fail with PostgreSQL's "tuple
concurrently updated" or a duplicate ``pg_type`` row: the statements are idempotent, not concurrency-safe.
So set-up runs under an advisory lock of its own per schema: one process at a time, the others wait.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from ehr_core.settings import Settings

__all__ = ["setup_lock"]


@contextmanager
def setup_lock(settings: Settings) -> Iterator[None]:
    """Hold the set-up lock of ``settings``' schema (creating the schema first); nothing to hold on SQLite."""
    if not settings.uses_postgres:
        yield
        return
    with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as connection:
        key = f"ehr-setup:{settings.postgres_schema}"
        connection.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        try:
            connection.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(settings.postgres_schema))
            )
            yield
        finally:
            connection.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
