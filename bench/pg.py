"""PostgreSQL for the benchmark: a fresh schema per use, always dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

__all__ = ["DEFAULT_URL", "available", "conninfo", "fresh_schema"]

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def conninfo(url: str) -> str:
    from ehr_core.settings import Settings

    return Settings(database_url=url).postgres_conninfo()


def available(url: str) -> str | None:
    """None if the server answers, else why not."""
    try:
        with psycopg.connect(conninfo(url), connect_timeout=3):
            return None
    except psycopg.Error as error:
        return str(error).strip() or type(error).__name__


@contextmanager
def fresh_schema(url: str, prefix: str, keep: bool = False) -> Iterator[str]:
    """A new, empty schema named ``{prefix}_<random>``; dropped with everything in it on exit, unless ``keep``
    (a benchmark measured again later without loading again; whoever keeps it drops it)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(conninfo(url), autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        if not keep:
            with psycopg.connect(conninfo(url), autocommit=True) as connection:
                connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
