"""A page looks up in ``search_ids`` only the rows it returns, on a store never analysed (this machine kind
runs PostgreSQL with autovacuum off): the keys that drive it (a full-text condition's matches, out of a GIN
bitmap in no key order; the smallest of several conditions' sets, as counted) are sorted once and looked up
one at a time until the page is full (projections/search/keysets.py). The pages are checked against what
the index holds, forwards and back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest

from bench.search import RecordingTx
from ehr_core.settings import Settings
from fhir_api.services import Services
from projections.search.dates import date_range
from projections.search.engine import run_search
from projections.search.keysets import PROBE_KEYS
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


def _plan_nodes(connection: psycopg.Connection[Any], seen: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every node of the page query's plan, as executed."""
    statement, params = seen[-1]  # the page's own query comes last (no _include here)
    explained = connection.execute(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + statement.replace("%", "%%").replace("?", "%s"),
        params,  # type: ignore[arg-type]
    ).fetchone()
    assert explained is not None
    document = explained[0] if not isinstance(explained[0], str) else orjson.loads(explained[0])

    def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [node, *(found for child in node.get("Plans", ()) for found in nodes(child))]

    return nodes(document[0]["Plan"])


def _search_ids_lookups(connection: psycopg.Connection[Any], seen: list[tuple[str, list[Any]]]) -> int:
    """How many times the page query read ``search_ids`` (the loops of its scans there), as executed."""
    return sum(
        int(node["Actual Loops"]) for node in _plan_nodes(connection, seen) if node.get("Relation Name") == "search_ids"
    )


def _search_ids_rows(connection: psycopg.Connection[Any], seen: list[tuple[str, list[Any]]]) -> int:
    """How many rows of ``search_ids`` the page query read, as executed."""
    return sum(
        int(node["Actual Loops"]) * int(node["Actual Rows"])
        for node in _plan_nodes(connection, seen)
        if node.get("Relation Name") == "search_ids"
    )


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


#: Patients of the family&given test, and Observations of the code&date test.
PEOPLE = 20_000
FAMILIES, GIVEN = 50, 30
CODES, DAYS = 3, 3650


def _family(n: int) -> str:
    return f"familia{n % FAMILIES:02d}"


def _given(n: int) -> tuple[str, str]:
    return f"nombre{n * 7 % GIVEN:02d}", f"nombre{(n * 13 + 5) % GIVEN:02d}"


def test_a_page_of_two_names_is_driven_from_the_smaller_set(store: tuple[Services, psycopg.Connection[Any]]) -> None:
    services, connection = store
    connection.execute(
        "INSERT INTO search_ids (sid, resource_type, resource_id, last_updated) "
        "SELECT g, 'Patient', 'p' || g, 0 FROM generate_series(1, %s) g",
        (PEOPLE,),
    )
    connection.execute(
        "INSERT INTO search_string (resource_type, param, value, exact, sid) "
        "SELECT 'Patient', 'family', v, v, g FROM generate_series(1, %(n)s) g, "
        "LATERAL (SELECT 'familia' || lpad((g %% %(f)s)::text, 2, '0') AS v) f "
        "UNION ALL SELECT 'Patient', 'given', v, v, g FROM generate_series(1, %(n)s) g, "
        "LATERAL (VALUES ('nombre' || lpad((g * 7 %% %(g)s)::text, 2, '0')), "
        "('nombre' || lpad(((g * 13 + 5) %% %(g)s)::text, 2, '0'))) v(v)",
        {"n": PEOPLE, "f": FAMILIES, "g": GIVEN},
    )
    query = "Patient?family=familia07&given=nombre19"
    expected = [n for n in range(1, PEOPLE + 1) if _family(n) == "familia07" and "nombre19" in _given(n)]
    assert len(expected) > 40
    sids, _, seen = _page(services, query)
    assert sids == expected[:20]
    # The smaller set (the family's 400 keys) drives; the page's 20 rows, and the one after, are all
    # search_ids gives (walking search_ids in key order read a row per Patient until the page was full).
    assert _search_ids_rows(connection, seen) <= 21
    forward, backward = _all_pages(services, query, 7)
    assert forward == backward == expected


def test_a_page_of_a_code_and_a_week_looks_the_code_up_by_key(
    store: tuple[Services, psycopg.Connection[Any]],
) -> None:
    services, connection = store
    day = 86_400_000_000
    start = date_range("2015-01-01")[0]
    connection.execute(
        "INSERT INTO search_ids (sid, resource_type, resource_id, last_updated) "
        "SELECT g, 'Observation', 'o' || g, 0 FROM generate_series(1, %s) g",
        (PEOPLE,),
    )
    # Every code has more Observations than a set is counted to (keysets.PROBE_KEYS): read whole, it is dear.
    connection.execute(
        "INSERT INTO search_token (resource_type, param, system, code, sid) "
        "SELECT 'Observation', 'code', 'http://loinc.org', 'c' || (g %% %s), g FROM generate_series(1, %s) g",
        (CODES, PEOPLE),
    )
    connection.execute(
        "INSERT INTO search_date (resource_type, param, low, high, sid) "
        "SELECT 'Observation', 'date', %(start)s + (g * 7919 %% %(days)s) * %(day)s::bigint, "
        "%(start)s + (g * 7919 %% %(days)s) * %(day)s::bigint, g FROM generate_series(1, %(n)s) g",
        {"start": start, "days": DAYS, "day": day, "n": PEOPLE},
    )
    connection.execute(
        "INSERT INTO search_date_spans (resource_type, param, max_span, open_start, open_end) "
        "VALUES ('Observation', 'date', 0, 0, 0)"
    )
    query = "Observation?code=c2&date=ge2016-01-01&date=lt2016-03-01"
    low, high = date_range("2016-01-01")[0], date_range("2016-03-01")[0]
    expected = [n for n in range(1, PEOPLE + 1) if n % CODES == 2 and low <= start + (n * 7919 % DAYS) * day < high]
    assert len(expected) > 40 and PEOPLE // CODES > PROBE_KEYS
    sids, _, seen = _page(services, query)
    assert sids == expected[:20]
    nodes = _plan_nodes(connection, seen)
    assert _search_ids_rows(connection, seen) <= 21
    # The week's keys drive; the code is looked up by each key in the token table's sid index, never by
    # reading the code's range of a lookup index again for each key.
    assert all(int(node["Actual Loops"]) <= 1 for node in nodes if "lookup" in node.get("Index Name", "")), nodes
    assert any(node.get("Index Name") == "search_token_sid" for node in nodes), nodes
    forward, backward = _all_pages(services, query, 7)
    assert forward == backward == expected
