"""A page reads about its own rows, on a store never analysed (this machine kind runs PostgreSQL with
autovacuum off): ``_text`` walks its words' lists in key order (projections/search/narrative.py); the keys
that drive a page (``_content``'s matches, out of a GIN bitmap in no key order; a keyed composite's range;
the smallest of several conditions' sets, as counted) are sorted once and looked up one at a time until the
page is full (projections/search/keysets.py). The pages are checked against what the index holds, forwards
and back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest

from bench.search import RecordingTx
from ehr_core.settings import Settings
from fhir_api.services import Services
from projections.access import Viewer
from projections.search.dates import date_range
from projections.search.engine import run_search
from projections.search.keysets import PROBE_KEYS
from projections.search.narrative import WORDS, insert_from
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


def _executed(connection: psycopg.Connection[Any], seen: list[tuple[str, list[Any]]]) -> dict[str, Any]:
    """The page query's plan as executed (``EXPLAIN ANALYZE``)."""
    statement, params = seen[-1]  # the page's own query comes last (no _include here)
    explained = connection.execute(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + statement.replace("%", "%%").replace("?", "%s"),
        params,  # type: ignore[arg-type]
    ).fetchone()
    assert explained is not None
    document = explained[0] if not isinstance(explained[0], str) else orjson.loads(explained[0])
    return dict(document[0]["Plan"])


def _scans(node: dict[str, Any], tables: tuple[str, ...], rows: bool) -> int:
    """The loops of the plan's scans of ``tables`` (or, with ``rows``, the rows they returned in all)."""
    own = 0
    if node.get("Relation Name") in tables:
        own = int(node["Actual Loops"]) * (int(node["Actual Rows"]) if rows else 1)
    return own + sum(_scans(child, tables, rows) for child in node.get("Plans", ()))


def _search_ids_lookups(connection: psycopg.Connection[Any], seen: list[tuple[str, list[Any]]]) -> int:
    """How many times the page query read ``search_ids`` (the loops of its scans there), as executed."""
    return _scans(_executed(connection, seen), ("search_ids",), rows=False)


def _encounters(connection: psycopg.Connection[Any], narratives: str, count: int) -> None:
    """``count`` Encounters, sids 1.., their narratives the SQL expression ``narratives`` of ``g`` (the
    sid), indexed as the full-text view writes them (folded)."""
    connection.execute(
        "INSERT INTO search_ids (sid, resource_type, resource_id, last_updated) "
        "SELECT g, 'Encounter', 'e' || g, 0 FROM generate_series(1, %s) g",
        (count,),
    )
    connection.execute(
        "INSERT INTO search_fulltext (sid, resource_type, resource_id, narrative, content) "
        f"SELECT g, 'Encounter', 'e' || g, to_tsvector('spanish', {narratives}), to_tsvector('spanish', "
        "'consulta') FROM generate_series(1, %s) g",
        (count,),
    )
    connection.execute(insert_from("search_fulltext"))


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
    _encounters(connection, "CASE WHEN g %% 2 = 0 THEN 'dolor toracico' ELSE 'cefalea' END", 2 * ROWS)
    sids, _, seen = _page(services, "Encounter?_text=dolor torácico")
    assert sids == list(range(2, 42, 2))
    assert _search_ids_lookups(connection, seen) <= 21
    # The words' index gives the page's matches in key order: a step or two per word of each row it
    # returns, not the 3,000 matches a GIN bitmap gives in no order.
    assert _scans(_executed(connection, seen), ("search_fulltext", WORDS), rows=True) <= 2 * 2 * 21
    forward, backward = _all_pages(services, "Encounter?_text=dolor", 500)
    assert forward == backward == list(range(2, 2 * ROWS + 1, 2))
    for query in ("Encounter?_content=consulta", "Encounter?_text=cefalea,dolor"):
        forward, backward = _all_pages(services, query, 700)
        assert forward == backward == list(range(1, 2 * ROWS + 1))


def test_a_text_page_walks_a_common_and_a_rare_word_side_by_side(
    store: tuple[Services, psycopg.Connection[Any]],
) -> None:
    """Every narrative has "dolor", one in 37 "torácico" and one in 11 "cefalea": the page of "dolor torácico"
    skips from one "torácico" to the next (a leapfrog over the two lists), it does not read "dolor" row by
    row; alternatives (commas) and the total are those of the words' sets."""
    services, connection = store
    _encounters(
        connection,
        "'dolor ' || CASE WHEN g %% 37 = 0 THEN 'toracico ' ELSE '' END || CASE WHEN g %% 11 = 0 THEN 'cefalea' "
        "ELSE '' END",
        37 * 40,
    )
    sids, _, seen = _page(services, "Encounter?_text=DOLOR TORÁCICO")
    assert sids == [37 * n for n in range(1, 21)]
    assert _scans(_executed(connection, seen), (WORDS,), rows=False) <= 3 * 21
    both = sorted({37 * n for n in range(1, 41)} | {11 * n for n in range(1, 37 * 40 // 11 + 1)})
    forward, backward = _all_pages(services, "Encounter?_text=torácico,cefalea dolor", 9)
    assert forward == backward == both
    forward, backward = _all_pages(services, "Encounter?_text=cefalea torácico", 5)
    assert forward == backward == [37 * 11 * n for n in range(1, 4)]
    _, page, _ = _page(services, "Encounter?_text=torácico,cefalea&_total=accurate")
    assert page.total == len(both)
    assert _page(services, "Encounter?_text=de la")[0] == []  # stop words only: nothing to look for


def test_a_store_made_before_the_words_table_gets_it_filled(postgres_settings: Settings) -> None:
    """A full-text view written before ``search_narrative_words`` existed holds each narrative's ``tsvector``:
    opening the store fills the table from them, so ``_text`` finds what it found before."""
    services = Services.open(postgres_settings, follow=False)
    services.close()
    with psycopg.connect(postgres_settings.postgres_conninfo(), autocommit=True) as connection:
        connection.execute(f'SET search_path = "{postgres_settings.postgres_schema}"')
        _encounters(connection, "CASE WHEN g %% 2 = 0 THEN 'dolor toracico' ELSE 'cefalea' END", 100)
        connection.execute(f"DROP TABLE {WORDS}")
    services = Services.open(postgres_settings, follow=False)
    try:
        assert _page(services, "Encounter?_text=toracico", 100)[0] == list(range(2, 101, 2))
    finally:
        services.close()


def _rows_read(connection: psycopg.Connection[Any], seen: list[tuple[str, list[Any]]], relation: str) -> int:
    """How many rows the page query's scans of ``relation`` gave (over all their loops), as executed."""
    return _scans(_executed(connection, seen), (relation,), rows=True)


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


def _plan_nodes(connection: psycopg.Connection[Any], seen: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every node of the page query's plan, as executed."""

    def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [node, *(found for child in node.get("Plans", ()) for found in nodes(child))]

    return nodes(_executed(connection, seen))


def _search_ids_rows(connection: psycopg.Connection[Any], seen: list[tuple[str, list[Any]]]) -> int:
    """How many rows of ``search_ids`` the page query read, as executed."""
    return _scans(_executed(connection, seen), ("search_ids",), rows=True)


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
    # Without a total: the page's own statement (a first page that also counts reads every match, in the
    # same statement: test_a_page_of_one_name_checks_the_policy_on_its_own_keys).
    sids, _, seen = _page(services, f"{query}&_total=none")
    assert sids == expected[:20]
    # The smaller set (the family's 400 keys) drives; the page's 20 rows, and the one after, are all
    # search_ids gives (walking search_ids in key order read a row per Patient until the page was full).
    assert _search_ids_rows(connection, seen) <= 21
    sids, page, _ = _page(services, query)
    assert sids == expected[:20] and page.total == len(expected)
    forward, backward = _all_pages(services, query, 7)
    assert forward == backward == expected


def _patients(connection: psycopg.Connection[Any], owner: str) -> None:
    """``PEOPLE`` Patients (sids 1..), each owned by the institution the SQL expression ``owner`` of ``g`` (the
    sid) names."""
    connection.execute(
        "INSERT INTO search_ids (sid, resource_type, resource_id, last_updated) "
        "SELECT g, 'Patient', 'p' || g, 0 FROM generate_series(1, %s) g",
        (PEOPLE,),
    )
    connection.execute(
        "INSERT INTO resource_owners (resource_type, resource_id, institution) "
        f"SELECT 'Patient', 'p' || g, {owner} FROM generate_series(1, %s) g",
        (PEOPLE,),
    )


def test_a_page_of_one_name_checks_the_policy_on_its_own_keys(
    store: tuple[Services, psycopg.Connection[Any]],
) -> None:
    """``Patient?family=X`` as an institution reads it (the access policy on). As a semi-join, on this store
    never analysed, the page checked the policy (a subplan per row) on each of the family's 400 keys before
    sorting them for the page; with statistics older than the table, the benchmark's store checked it on
    every Patient. Driven from the family's keys, counted first, the page checks 21 of them, and a page with
    its total the 400 (the count needs them all), in one statement."""
    services, connection = store
    _patients(connection, "CASE WHEN g %% 4 = 0 THEN 'issste' ELSE 'imss' END")
    connection.execute(
        "INSERT INTO search_string (resource_type, param, value, exact, sid) SELECT 'Patient', 'family', "
        "'familia' || lpad((g %% %s)::text, 2, '0'), 'x', g FROM generate_series(1, %s) g",
        (FAMILIES, PEOPLE),
    )
    expected = [n for n in range(1, PEOPLE + 1) if _family(n) == "familia07" and n % 4 != 0]
    viewer = Viewer(institution="imss", now="2026-01-01T00:00:00Z")
    owners = ("resource_owners",)
    for total in ("none", "accurate"):
        seen: list[tuple[str, list[Any]]] = []
        with services.views.read() as tx:
            page = run_search(
                RecordingTx(tx, seen),  # type: ignore[arg-type]
                "postgres",
                parse_search("Patient", [("family", "familia07"), ("_total", total)]),
                None,
                20,
                viewer,
            )
        assert [match.sid for match in page.matches] == expected[:20]
        looked_up = _scans(_executed(connection, seen), owners, rows=False)
        # The snapshot, the consents, the keys' count (one bounded index read), the page.
        assert len(seen) <= 4
        if total == "none":
            assert page.total is None
            assert looked_up <= 21 + 21 // 3  # the page's keys (and the one after it)
        else:
            # The total checks every key of the family (400), never every Patient (20,000); the page comes
            # with it, from the same statement.
            assert page.total == len(expected)
            assert looked_up <= PEOPLE // FAMILIES
    forward, backward = _all_pages(services, "Patient?family=familia07", 7)
    assert forward == backward == [n for n in range(1, PEOPLE + 1) if _family(n) == "familia07"]


def test_a_lone_set_keeps_its_plan_and_its_answers(store: tuple[Services, psycopg.Connection[Any]]) -> None:
    """The statements of a page driven from a lone set are prepared once a connection has run them a few
    times, and PostgreSQL then reuses one generic plan (not planned per search: the policy's subqueries made
    planning six times the run); the answers stay those of each value, a common family's and a rare one's."""
    services, connection = store
    _patients(connection, "'imss'")
    # Every family has 400 Patients but familia99, which has one (sid 7, moved from familia07).
    connection.execute(
        "INSERT INTO search_string (resource_type, param, value, exact, sid) SELECT 'Patient', 'family', "
        "CASE WHEN g = 7 THEN 'familia99' ELSE 'familia' || lpad((g %% %s)::text, 2, '0') END, 'x', g "
        "FROM generate_series(1, %s) g",
        (FAMILIES, PEOPLE),
    )
    viewer = Viewer(institution="imss", now="2026-01-01T00:00:00Z")
    families = [f"familia{n % FAMILIES:02d}" for n in range(3 * FAMILIES // 2)] + ["familia99"]
    for family in families:
        members = [n for n in range(1, PEOPLE + 1) if _family(n) == family and n != 7]
        expected = [7] if family == "familia99" else members
        with services.views.read() as tx:
            page = run_search(tx, "postgres", parse_search("Patient", [("family", family)]), None, 20, viewer)
        assert [match.sid for match in page.matches] == expected[:20], family
        assert page.total == len(expected), family
    with services.views.read() as tx:  # the one connection those searches ran on (the pool holds one)
        plans = tx.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE ?",
            ("%count(*) OVER ()%",),
        ).fetchall()
    assert plans and plans[0][0] > 0, plans


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
    sids, page, _ = _page(services, query)
    assert sids == expected[:20] and page.total == len(expected)
    sids, _, seen = _page(services, f"{query}&_total=none")  # the page's own statement
    assert sids == expected[:20]
    nodes = _plan_nodes(connection, seen)
    assert _search_ids_rows(connection, seen) <= 21
    # The week's keys drive; the code is looked up by each key in the token table's sid index, never by
    # reading the code's range of a lookup index again for each key.
    assert all(int(node["Actual Loops"]) <= 1 for node in nodes if "lookup" in node.get("Index Name", "")), nodes
    assert any(node.get("Index Name") == "search_token_sid" for node in nodes), nodes
    forward, backward = _all_pages(services, query, 7)
    assert forward == backward == expected


#: Encounters per Patient of the chain tests (their sids follow the Patients').
VISITS = 4


def _rows_of_search(connection: psycopg.Connection[Any], seen: list[tuple[str, list[Any]]], relation: str) -> int:
    """How many rows every statement of a search (the probe, the total, the page) read from ``relation``."""
    total = 0
    for statement, params in seen:
        explained = connection.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + statement.replace("%", "%%").replace("?", "%s"),
            params,  # type: ignore[arg-type]
        ).fetchone()
        assert explained is not None
        document = explained[0] if not isinstance(explained[0], str) else orjson.loads(explained[0])
        total += _scans(document[0]["Plan"], (relation,), rows=True)
    return total


def _visit_day(sid: int, start: int, day: int) -> int:
    return start + (sid * 7919 % DAYS) * day


@pytest.fixture
def visits(store: tuple[Services, psycopg.Connection[Any]]) -> tuple[Services, psycopg.Connection[Any]]:
    """``PEOPLE`` Patients (sids 1..), each with a family (:func:`_family`) and an identifier ``curp<n>``, and
    ``VISITS`` Encounters each (sids after them), their ``patient`` references and dates over ten years: a
    store never analysed."""
    services, connection = store
    day, start = 86_400_000_000, date_range("2015-01-01")[0]
    connection.execute(
        "INSERT INTO search_ids (sid, resource_type, resource_id, last_updated) "
        "SELECT g, 'Patient', 'p' || g, 0 FROM generate_series(1, %(n)s) g UNION ALL "
        "SELECT %(n)s + g, 'Encounter', 'e' || g, 0 FROM generate_series(1, %(e)s) g",
        {"n": PEOPLE, "e": PEOPLE * VISITS},
    )
    connection.execute(
        "INSERT INTO search_string (resource_type, param, value, exact, sid) SELECT 'Patient', 'family', "
        "'familia' || lpad((g %% %s)::text, 2, '0'), 'x', g FROM generate_series(1, %s) g",
        (FAMILIES, PEOPLE),
    )
    connection.execute(
        "INSERT INTO search_token (resource_type, param, system, code, sid) "
        "SELECT 'Patient', 'identifier', 'urn:curp', 'curp' || g, g FROM generate_series(1, %s) g",
        (PEOPLE,),
    )
    # Encounter n (sid PEOPLE + n) is a visit of Patient (n - 1) / VISITS + 1 (its key too: sid = number).
    connection.execute(
        "INSERT INTO search_reference (resource_type, param, target_type, target_id, base, target_sid, sid) "
        "SELECT 'Encounter', 'patient', 'Patient', 'p' || ((g - 1) / %(v)s + 1), NULL, (g - 1) / %(v)s + 1, %(n)s + g "
        "FROM generate_series(1, %(e)s) g",
        {"n": PEOPLE, "v": VISITS, "e": PEOPLE * VISITS},
    )
    connection.execute(
        "INSERT INTO search_date (resource_type, param, low, high, sid) "
        "SELECT 'Encounter', 'date', %(start)s + (g * 7919 %% %(days)s) * %(day)s::bigint, "
        "%(start)s + (g * 7919 %% %(days)s) * %(day)s::bigint, g FROM generate_series(%(first)s, %(last)s) g",
        {"start": start, "days": DAYS, "day": day, "first": PEOPLE + 1, "last": PEOPLE * (VISITS + 1)},
    )
    connection.execute(
        "INSERT INTO search_date_spans (resource_type, param, max_span, open_start, open_end) "
        "VALUES ('Encounter', 'date', 0, 0, 0)"
    )
    return services, connection


def _visits_of(families: set[str], since: str) -> list[int]:
    day, start, low = 86_400_000_000, date_range("2015-01-01")[0], date_range(since)[0]
    return [
        PEOPLE + n
        for n in range(1, PEOPLE * VISITS + 1)
        if _family((n - 1) // VISITS + 1) in families and _visit_day(PEOPLE + n, start, day) >= low
    ]


def test_a_page_of_a_chain_and_a_date_is_driven_from_the_chain(
    visits: tuple[Services, psycopg.Connection[Any]],
) -> None:
    """R4 §3.1.1.4.12: ``Encounter?patient.family=X&date=ge...``. The chain's 1,600 Encounters (400 Patients)
    are fewer than the date's and than a set is counted to: read once from the Patients outward (their
    references looked up by the Patients' keys, projections/search/targets.py), they drive the page, each date
    checked by key until the page is full; on a store never analysed, whatever the planner would guess."""
    services, connection = visits
    query = "Encounter?patient.family=familia07&date=ge2024-01-01&_total=none"
    expected = _visits_of({"familia07"}, "2024-01-01")
    chain = PEOPLE // FAMILIES * VISITS
    assert 40 < len(expected) < chain < PROBE_KEYS < len(_visits_of({_family(n) for n in range(FAMILIES)}, "2024"))
    sids, _, seen = _page(services, query)
    assert sids == expected[:20]
    # The chain's references once each (not once for the count and again for the page, nor every
    # Encounter's), by the Patients' keys: no Patient is looked up in search_ids (by key, for its id), only
    # the snapshot's newest key and the page's Encounters.
    assert _rows_of_search(connection, seen, "search_reference") <= chain
    assert _rows_of_search(connection, seen, "search_ids") <= 1 + 21
    # The page checks the dates of the chain's first keys, up to the page's end (about ten per match).
    assert _rows_read(connection, seen, "search_date") <= 21
    forward, backward = _all_pages(services, query, 30)
    assert forward == backward == expected


def test_the_total_of_a_chain_and_a_date_reads_the_chain_once(
    visits: tuple[Services, psycopg.Connection[Any]],
) -> None:
    services, connection = visits
    query = "Encounter?patient.family=familia07&date=ge2024-01-01&_total=accurate"
    expected = _visits_of({"familia07"}, "2024-01-01")
    sids, page, seen = _page(services, query)
    assert page.total == len(expected) and sids == expected[:20]
    assert _rows_of_search(connection, seen, "search_reference") <= PEOPLE // FAMILIES * VISITS
    # A chain of more keys than a set is counted to is left to the semi-joins, with the same answer.
    families = {_family(n) for n in range(FAMILIES) if _family(n).startswith("familia0")}
    wide = _visits_of(families, "2024-06-01")
    assert len(wide) * 20 > PROBE_KEYS
    sids, page, _ = _page(services, "Encounter?patient.family=familia0&date=ge2024-06-01&_total=accurate")
    assert page.total == len(wide) and sids == wide[:20]


def test_a_chain_on_an_identifier_reads_only_its_patients_references(
    visits: tuple[Services, psycopg.Connection[Any]],
) -> None:
    """``Encounter?patient.identifier=X``: one Patient, its four visits; the chain alone drives the page (as a
    semi-join, on a store never analysed, the planner walked every ``patient`` reference)."""
    services, connection = visits
    sids, page, seen = _page(services, "Encounter?patient.identifier=urn:curp|curp123&_total=accurate")
    assert sids == [PEOPLE + 122 * VISITS + n for n in range(1, VISITS + 1)] and page.total == VISITS
    assert _rows_of_search(connection, seen, "search_reference") <= VISITS
    # The snapshot's newest key and the Patient's visits for the total and again for the page.
    assert _rows_of_search(connection, seen, "search_ids") <= 1 + 2 * VISITS
