"""The search index's rows of a few resources as one PostgreSQL statement (a create's projection).

A create gives its resource's key row, index rows in up to eight value tables (R4 §3.1.1.5: one per
parameter type) and the date spans (``search_date_spans``). As a statement per table, each is a message, a
parse and a plan for the server and a query built for a row count by the client. Here they are one
statement of fixed text, prepared once per connection: each table's rows travel as one JSON array of
arrays (serialised by orjson, no work per value in Python) and are inserted by a data-modifying ``WITH``,
which PostgreSQL runs exactly once, to completion, whether the statement reads it or not. A large batch
(``ehr rebuild``'s 500 resources) is COPYed per table instead (:meth:`projections.db.Tx.insert`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from typing import Any

import orjson

from projections.db import Tx
from projections.search.targets import CLAIM, TARGET_KEY, claim_params
from projections.search.types import SEARCH_TYPES

__all__ = ["ROW_LIMIT", "insert_rows"]

#: Rows in all tables up to which a batch is one statement; beyond, COPY per table streams them faster.
ROW_LIMIT = 2_000

#: A column's SQL type in a table definition (``{text}``, ``{real}``: the dialect's) → the cast of its JSON text.
_CASTS = {"{text}": "", "TEXT": "", "{real}": "::float8", "INTEGER": "::int4", "BIGINT": "::int8"}
_KEY_COLUMNS = {"sid": "::int8", "resource_type": "", "resource_id": "", "last_updated": "::int8"}
_SPAN_COLUMNS = {"resource_type": "", "param": "", "max_span": "::int8", "open_start": "::int4", "open_end": "::int4"}
#: JSON has no infinity (orjson writes null): an open range's bound goes as the text float8 reads as one.
_INFINITIES = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _casts(definition: str) -> dict[str, str]:
    """Column → cast, from an :class:`~projections.search.types.base.IndexTable` definition."""
    found = {}
    for column in definition.split(","):
        name, kind = column.split()[:2]
        found[name] = _CASTS[kind]
    return found


def _insert(table: str, casts: dict[str, str], computed: dict[str, str] | None = None) -> str:
    """``INSERT`` of the rows of one JSON array of arrays (a row's values in ``casts``' order; a column in
    ``computed`` is that SQL expression instead)."""
    computed = computed or {}
    values = ", ".join(
        computed.get(column, f"(r->>{n}){cast}" if cast else f"r->>{n}")
        for n, (column, cast) in enumerate(casts.items())
    )
    return f"INSERT INTO {table} ({', '.join(casts)}) SELECT {values} FROM jsonb_array_elements(?::jsonb) r"


@cache
def _tables() -> tuple[tuple[str, bool], ...]:
    """Per search type in :data:`SEARCH_TYPES` order: (its name, whether its rows may hold an infinite bound)."""
    return tuple((name, "{real}" in kind.table.definition) for name, kind in SEARCH_TYPES.items())


@cache
def _statement() -> str:
    parts = []
    for name, kind in SEARCH_TYPES.items():
        casts = {"resource_type": "", "param": "", **_casts(kind.table.definition), "sid": "::int8"}
        computed = {"target_sid": TARGET_KEY} if kind.table.name == "search_reference" else None
        parts.append(f"{name} AS ({_insert(kind.table.name, casts, computed)})")
    # References written before their target, which this batch creates, get its key (the statement's own
    # reference rows are not visible to it: those the batch's keys name carry them already).
    parts.append(f"claimed AS ({CLAIM})")
    grown = ", ".join(
        f"{column} = GREATEST(search_date_spans.{column}, excluded.{column})"
        for column in ("max_span", "open_start", "open_end")
    )
    parts.append(
        f"spans AS ({_insert('search_date_spans', _SPAN_COLUMNS)} "
        f"ON CONFLICT (resource_type, param) DO UPDATE SET {grown})"
    )
    return f"WITH {', '.join(parts)} {_insert('search_ids', _KEY_COLUMNS)}"


def _json(rows: Sequence[tuple[Any, ...]], infinite: bool = False) -> str:
    if infinite:
        rows = [
            tuple(_INFINITIES.get(value, value) if isinstance(value, float) else value for value in row)
            if math.inf in row or -math.inf in row
            else row
            for row in rows
        ]
    return orjson.dumps(rows).decode()


def insert_rows(
    tx: Tx,
    keys: Sequence[tuple[Any, ...]],
    values: dict[str, list[tuple[Any, ...]]],
    spans: Sequence[tuple[Any, ...]],
    created: Sequence[tuple[str, str, int]] = (),
) -> bool:
    """Insert the key rows, every value table's rows and the date spans as one statement, and give the
    references waiting for the ``created`` resources (type, id, key) their keys (projections/search/targets.py);
    False (nothing written) when this is not PostgreSQL or the batch is large enough for COPY (:data:`ROW_LIMIT`)."""
    if tx.dialect != "postgres" or sum(map(len, values.values())) > ROW_LIMIT:
        return False
    params = [_json(values[name], infinite) for name, infinite in _tables()]
    tx.execute(_statement(), [*params, *claim_params(created), _json(spans), _json(keys)])
    return True
