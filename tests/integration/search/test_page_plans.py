"""A full-text page looks up in ``search_ids`` only the rows it returns, on a store never analysed (this
machine kind runs PostgreSQL with autovacuum off): the matches, out of a GIN bitmap in no key order, are
sorted once and looked up one at a time until the page is full (projections/search/keysets.py). The pages
are checked against what the index holds, forwards and back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest

from bench.search import RecordingTx
from ehr_core.settings import Settings
from fhir_api.services import Services
from projections.search.engine import run_search
from projections.search.query import parse_search

pytestmark = pytest.mark.postgres

#: Resources of each set: enough that looking every one up costs what a page does not.
ROWS = 3000


@pytest.fixture
def store(postgres_settings: Settings) -> Iterator[tuple[Services, psycopg.Connection[Any]]]:
    services = Services.open(postgres_settings, follow=False)  # the views' tables and indexes, as a store has them
    try:
        with psycopg.connect(postgres_settings.postgres_conninfo(), autocommit=True) as connection:
            connection.execute(f'SET search_path = "{postgres_settings.postgres_schema}"')
            yield services, connection
    finally:
        services.close()


def _page(services: Services, query: str, count: int = 20) -> tuple[list[int], Any, list[tuple[str, list[Any]]]]:
    """The sids of one page of ``query`` (``Type?a=b&...``), the page, and the statements it sent."""
    resource_type, _, text = query.partition("?")
    pairs = [(name, value) for name, _, value in (part.partition("=") for part in text.split("&"))]
    seen: list[tuple[str, list[Any]]] = []
    with services.views.read() as tx:
        page = run_search(RecordingTx(tx, seen), "postgres", parse_search(resource_type, pairs), None, count)  # type: ignore[arg-type]
    return [match.sid for match in page.matches], page, seen


def _search_ids_lookups(connection: psycopg.Connection[Any], seen: list[tuple[str, list[Any]]]) -> int:
    """How many times the page query read ``search_ids`` (the loops of its scans there), as executed."""
    statement, params = seen[-1]  # the page's own query comes last (no _include here)
    explained = connection.execute(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + statement.replace("%", "%%").replace("?", "%s"),
        params,  # type: ignore[arg-type]
    ).fetchone()
    assert explained is not None
    document = explained[0] if not isinstance(explained[0], str) else orjson.loads(explained[0])

    def loops(node: dict[str, Any]) -> int:
        own = int(node["Actual Loops"]) if node.get("Relation Name") == "search_ids" else 0
        return own + sum(loops(child) for child in node.get("Plans", ()))

    return loops(document[0]["Plan"])


def _all_pages(services: Services, query: str, count: int) -> tuple[list[int], list[int]]:
    """Every match of ``query`` by next links, then again by previous links from the last page."""
    forward: list[int] = []
    sids, page, _ = _page(services, query, count)
    pages = [sids]
    while page.next_cursor is not None:
        forward += sids
        sids, page, _ = _page(services, f"{query}&_cursor={page.next_cursor}", count)
        pages.append(sids)
    forward += sids
    backward: list[int] = list(pages[-1])
    while page.prev_cursor is not None:
        sids, page, _ = _page(services, f"{query}&_cursor={page.prev_cursor}", count)
        backward = sids + backward
    return forward, backward


def test_a_full_text_page_looks_up_only_its_rows(store: tuple[Services, psycopg.Connection[Any]]) -> None:
    services, connection = store
    # Every other Encounter's narrative says "dolor torácico" (folded, as the index writes it).
    connection.execute(
        "INSERT INTO search_ids (sid, resource_type, resource_id, last_updated) "
        "SELECT g, 'Encounter', 'e' || g, 0 FROM generate_series(1, %s) g",
        (2 * ROWS,),
    )
    connection.execute(
        "INSERT INTO search_fulltext (sid, resource_type, resource_id, narrative, content) "
        "SELECT g, 'Encounter', 'e' || g, to_tsvector('spanish', CASE WHEN g %% 2 = 0 THEN 'dolor toracico' "
        "ELSE 'cefalea' END), to_tsvector('spanish', 'consulta') FROM generate_series(1, %s) g",
        (2 * ROWS,),
    )
    sids, _, seen = _page(services, "Encounter?_text=dolor torácico")
    assert sids == list(range(2, 42, 2))
    assert _search_ids_lookups(connection, seen) <= 21
    forward, backward = _all_pages(services, "Encounter?_text=dolor", 500)
    assert forward == backward == list(range(2, 2 * ROWS + 1, 2))


def _rows_read(connection: psycopg.Connection[Any], seen: list[tuple[str, list[Any]]], relation: str) -> int:
    """How many rows the page query's scans of ``relation`` gave (over all their loops), as executed."""
    statement, params = seen[-1]
    explained = connection.execute(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + statement.replace("%", "%%").replace("?", "%s"),
        params,  # type: ignore[arg-type]
    ).fetchone()
    assert explained is not None
    document = explained[0] if not isinstance(explained[0], str) else orjson.loads(explained[0])

    def rows(node: dict[str, Any]) -> int:
        own = int(node["Actual Rows"]) * int(node["Actual Loops"]) if node.get("Relation Name") == relation else 0
        return own + sum(rows(child) for child in node.get("Plans", ()))

    return rows(document[0]["Plan"])


@pytest.mark.parametrize("analysed", [False, True], ids=["never-analysed", "analysed"])
def test_a_composite_page_reads_its_key_range_in_key_order(
    store: tuple[Services, psycopg.Connection[Any]], analysed: bool
) -> None:
    """``code-value-quantity=X$gt10``: the rows of code X over 10 read in sid order until the page is full
    (types/composite.py), with statistics or without; never every match of the code, nor every value over
    10 of any code."""
    services, connection = store
    connection.execute(
        "INSERT INTO search_ids (sid, resource_type, resource_id, last_updated) "
        "SELECT g, 'Observation', 'o' || g, 0 FROM generate_series(1, %s) g",
        (2 * ROWS,),
    )
    # Even sids have code A, odd ones code B; each value is its sid.
    connection.execute(
        "INSERT INTO search_composite (resource_type, param, component, rep, token_system, token_code, low, high, "
        "sid) SELECT 'Observation', 'code-value-quantity', 1, 0, 'http://loinc.org', CASE WHEN g %% 2 = 0 THEN "
        "'A' ELSE 'B' END, g, g, g FROM generate_series(1, %s) g",
        (2 * ROWS,),
    )
    if analysed:
        connection.execute("ANALYZE search_ids")
        connection.execute("ANALYZE search_composite")
    query = "Observation?code-value-quantity=http://loinc.org|A$gt10"
    sids, _, seen = _page(services, query)
    assert sids == list(range(12, 52, 2))
    assert _rows_read(connection, seen, "search_composite") <= 21
    assert _search_ids_lookups(connection, seen) <= 21
    forward, backward = _all_pages(services, query, 500)
    assert forward == backward == list(range(12, 2 * ROWS + 1, 2))
    assert _page(services, f"Observation?code-value-quantity=http://loinc.org|A$gt{2 * ROWS}")[0] == []
