"""Which database errors a projection retries rather than quarantining the event (projections/projector.py)."""

from __future__ import annotations

import psycopg
import pytest

from projections.projector import transient


@pytest.mark.parametrize(
    "error",
    [psycopg.errors.ReadOnlySqlTransaction("read-only"), psycopg.errors.SerializationFailure("raced")],
    ids=["database read-only", "serialization failure"],
)
def test_a_database_that_cannot_write_now_is_retried(error: psycopg.Error) -> None:
    assert transient(error)


def test_a_bad_value_is_not_retried() -> None:
    assert not transient(psycopg.errors.InvalidTextRepresentation("bad input"))
