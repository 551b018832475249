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
