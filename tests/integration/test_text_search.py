"""``_text`` and ``_content`` over HTTP on both backends (R4 §3.1.1.5, "Parameters for all resources").

Spanish-aware: case and accents folded, Spanish stop words dropped, words stemmed; the words of one
value must all be found (AND), commas separate alternatives (OR).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_api.cli.rebuild import projectors_named
from fhir_api.services import Services
from projections.changes import Change
from projections.db import SQLiteViews
from projections.privacy import Erasure, erase
from projections.rebuild import rebuild
from projections.search import FullTextIndex, SearchIndex
from projections.search import fulltext as fulltext_module
from projections.search.narrative import WORDS


def _narrative(text: str) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{text}</p></div>'}


def _condition(resource_id: str, narrative: str | None, note: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": resource_id,
        "subject": {"reference": "Patient/p1"},
        "code": {"text": "motivo de consulta"},
    }
    if narrative is not None:
        resource["text"] = _narrative(narrative)
    if note is not None:
        resource["note"] = [{"text": note}]
    return resource


def _put(client: TestClient, resource: dict[str, Any]) -> None:
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
    assert response.status_code in (200, 201), response.text


def _search(client: TestClient, query: str) -> list[str]:
    response = client.get(f"/fhir/{query}")
    assert response.status_code == 200, response.text
    bundle = response.json()
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match")


@pytest.fixture
def conditions(client: TestClient) -> TestClient:
    _put(client, {"resourceType": "Patient", "id": "p1", "name": [{"family": "Núñez"}]})
    _put(client, _condition("lower", "Dolor toracico de inicio súbito"))
    _put(client, _condition("upper", "DOLOR TORÁCICO OPRESIVO"))
    _put(client, _condition("plural", "Refiere dolores torácicos &amp; disnea"))
    _put(client, _condition("other", "Cefalea tensional; sin dolor en el pecho"))
    _put(client, _condition("none", None, note="Paciente con dolor torácico anotado en una nota"))
    return client


def test_text_folds_case_and_accents_and_stems(conditions: TestClient) -> None:
    client = conditions
    for query in ("dolor torácico", "DOLOR TORACICO", "dolores toracicos", "Torácico   dolor"):
        assert _search(client, f"Condition?_text={query}") == ["lower", "plural", "upper"], query
    # Terms are ANDed: "dolor" alone also finds the narrative that has it without "torácico".
    assert _search(client, "Condition?_text=dolor") == ["lower", "other", "plural", "upper"]
    assert _search(client, "Condition?_text=opresivo") == ["upper"]
    # The XHTML is stripped and its entities resolved: no match on markup.
    assert _search(client, "Condition?_text=xhtml") == []
    assert _search(client, "Condition?_text=div") == []
    assert _search(client, "Condition?_text=disnea") == ["plural"]


def test_text_has_no_false_positives_and_ors_commas(conditions: TestClient) -> None:
    client = conditions
    assert _search(client, "Condition?_text=dolor abdominal") == []
    assert _search(client, "Condition?_text=cefalea") == ["other"]
    assert _search(client, "Condition?_text=cefalea,opresivo") == ["other", "upper"]
    # Repeating the parameter ANDs.
    assert _search(client, "Condition?_text=dolor&_text=pecho") == ["other"]
    # Stop words alone find nothing (there is nothing to look for), on both backends.
    assert _search(client, "Condition?_text=de el") == []
    # A note is not narrative: _text does not see it.
    assert _search(client, "Condition?_text=anotado") == []


def test_content_searches_every_string_value(conditions: TestClient) -> None:
    client = conditions
    # The note's text is in the resource but not in its narrative.
    assert _search(client, "Condition?_content=anotado nota") == ["none"]
    assert _search(client, "Condition?_content=dolores toracicos") == ["lower", "none", "plural", "upper"]
    # code.text, a coded element's text, is content too.
    assert len(_search(client, "Condition?_content=motivo consulta")) == 5
    assert _search(client, "Condition?_content=inexistente") == []
    assert _search(client, "Patient?_content=nunez") == ["p1"]
    # A system search applies it to each type; POST _search reads it from the form.
    assert _search(client, "?_type=Condition,Patient&_content=nunez") == ["p1"]
    posted = client.post("/fhir/Condition/_search", data={"_content": "anotado"})
    assert posted.status_code == 200 and [e["resource"]["id"] for e in posted.json()["entry"]] == ["none"]


def test_the_index_follows_updates_and_deletes(conditions: TestClient) -> None:
    client = conditions
    _put(client, _condition("upper", "Fiebre y escalofríos"))
    assert _search(client, "Condition?_text=opresivo") == []
    assert _search(client, "Condition?_text=escalofrios") == ["upper"]
    assert client.delete("/fhir/Condition/upper").status_code in (200, 204)
    assert _search(client, "Condition?_text=escalofrios") == []
    _put(client, _condition("upper", "Escalofríos de nuevo"))
    assert _search(client, "Condition?_text=escalofrio") == ["upper"]


def test_pages_of_matches_in_key_order(client: TestClient) -> None:
    """Pages of a full-text search follow each other in the index's order, forwards and back, whatever
    the words' index reads them from (R4 §3.1.1.6 "Paging")."""
    _put(client, {"resourceType": "Patient", "id": "p1"})
    for number in range(23):
        reason = ["Dolor torácico", "DOLOR ABDOMINAL", "cefalea", "tos y dolor toracico"][number % 4]
        _put(client, _condition(f"c{number:02d}", f"Consulta {number}: {reason}"))
    expected = [f"c{n:02d}" for n in range(23) if n % 4 in (0, 2, 3)]  # "torácico" or "cefalea"
    url: str | None = "/fhir/Condition?_text=dolores toracicos,cefalea&_count=4"
    seen: list[str] = []
    pages: list[dict[str, Any]] = []
    while url is not None:
        bundle = client.get(url).json()
        assert bundle["total"] == len(expected)
        pages.append(bundle)
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    assert seen == expected
    back: list[str] = [e["resource"]["id"] for e in pages[-1]["entry"]]
    url = next((link["url"] for link in pages[-1]["link"] if link["relation"] == "previous"), None)
    while url is not None:
        bundle = client.get(url).json()
        back = [e["resource"]["id"] for e in bundle.get("entry", [])] + back
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "previous"), None)
    assert back == expected


def test_self_link_and_combination_with_other_parameters(conditions: TestClient) -> None:
    client = conditions
    bundle = client.get("/fhir/Condition", params={"_text": "dolor torácico", "subject": "Patient/p1"}).json()
    assert bundle["total"] == 3
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert "_text=dolor+tor%C3%A1cico" in self_link and "subject=Patient%2Fp1" in self_link
    for query in ("Condition?_text=", "Condition?_text:exact=dolor"):
        refused = client.get(f"/fhir/{query}")
        assert refused.status_code == 400 and refused.json()["resourceType"] == "OperationOutcome", query


def test_rebuild_fills_the_full_text_index(services: Services, conditions: TestClient) -> None:
    client = conditions
    projectors = projectors_named(services, ["resources"])
    before = projectors[0].dump()["search_fulltext"]
    words = projectors[0].dump()[WORDS]  # PostgreSQL's _text index (SQLite reads FTS5: none)
    assert len(before) == 6  # five Conditions and the Patient
    assert len(words) > 0 if services.settings.uses_postgres else words == []
    rebuild(services.settings, projectors)
    assert projectors[0].dump()["search_fulltext"] == before
    assert projectors[0].dump()[WORDS] == words
    assert _search(client, "Condition?_text=dolores toracicos") == ["lower", "plural", "upper"]
    assert _search(client, "Condition?_content=anotado") == ["none"]


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_sqlite_rebuild_indexes_the_words_in_one_pass(
    services: Services, conditions: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: a rebuild fills FTS5 once, from the copied rows (its ``rebuild`` command). Before, a trigger
    indexed each row as the shadow's replay inserted it (an index nobody read: only the table is copied),
    and again as the swap deleted and re-inserted every live row. CPython's trace callback reports a
    statement once more for each trigger program it runs and each statement in it: a statement traced once
    per row ran no trigger."""
    client = conditions
    projectors = projectors_named(services, ["resources"])
    before = projectors[0].dump()["search_fulltext"]
    assert len(before) == 6
    traced: list[str] = []
    connect = sqlite3.connect

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)
        connection.set_trace_callback(traced.append)
        return connection

    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    rebuild(services.settings, projectors)
    monkeypatch.undo()
    inserts = [statement for statement in traced if statement.startswith("INSERT INTO search_fulltext ")]
    # One insert per row in the shadow's replay and one per row in the swap's copy (before: 36, three each).
    assert len(inserts) == 2 * len(before)
    assert traced.count("DELETE FROM search_fulltext") == 1  # the swap's emptying (before: 13, two per row)
    assert projectors[0].dump()["search_fulltext"] == before
    assert _search(client, "Condition?_text=dolores toracicos") == ["lower", "plural", "upper"]
    assert _search(client, "Condition?_content=anotado") == ["none"]
    # The triggers are back: a write after the rebuild is indexed, an update's old words leave.
    _put(client, _condition("upper", "Fiebre vespertina"))
    assert _search(client, "Condition?_text=fiebre") == ["upper"]
    assert _search(client, "Condition?_text=dolor toracico") == ["lower", "plural"]


def _change(notification_id: int, resource: dict[str, Any]) -> Change:
    return Change(
        notification_id=notification_id,
        resource_type=resource["resourceType"],
        resource_id=resource["id"],
        version=1,
        last_updated="2026-01-01T00:00:00Z",
        recorded=datetime(2026, 1, 1, tzinfo=UTC),
        method="POST",
        body=json.dumps(resource).encode(),
        compartment=[],
        context={},
    )


def test_erasure_leaves_no_term_in_the_sqlite_index_segments(tmp_path: Path) -> None:
    """FTS5's ``delete`` only marks entries as deleted: an erased patient's words would stay in the index's
    segments (bytes on disk) until a merge. Erasure merges them away (crypto-shredding, DESIGN.md)."""
    views = SQLiteViews(tmp_path / "views.sqlite")
    index, fulltext = SearchIndex(), FullTextIndex()
    kept = {"resourceType": "Patient", "id": "kept", "name": [{"family": "Barrera"}]}
    gone = {"resourceType": "Patient", "id": "gone", "name": [{"family": "Xilófono"}]}
    try:
        with views.write() as tx:
            for view in (index, fulltext):
                view.create(tx, "sqlite")
        for number, resource in enumerate((kept, gone), start=1):
            with views.write() as tx:  # one transaction each: two FTS5 segments
                for view in (index, fulltext):
                    view.apply(tx, [_change(number, resource)])

        def segments() -> bytes:
            with views.read() as tx:
                rows = tx.execute("SELECT block FROM search_fulltext_terms_data").fetchall()
            return b"".join(row[0] for row in rows if isinstance(row[0], bytes))

        assert b"xilofon" in segments()
        erasure = Erasure(3, "gone", "shredded", "2026-01-02T00:00:00", [("Patient", "gone")])
        with views.write() as tx:
            erase(tx, "sqlite", [index, fulltext], erasure)
        assert b"xilofon" not in segments() and b"barrer" in segments()
        with views.read() as tx:
            rows = tx.execute("SELECT resource_id FROM search_fulltext").fetchall()
        assert [row[0] for row in rows] == ["kept"]
    finally:
        views.close()


def test_a_batch_strips_each_narrative_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The narrative (``_text``) is part of the content (``_content``): its XHTML is stripped once per
    resource, for both (Python's HTML parser is the costliest step of a resource's text)."""
    views = SQLiteViews(tmp_path / "views.sqlite")
    index, text = SearchIndex(), FullTextIndex()
    stripped: list[str] = []
    strip = fulltext_module._strip

    def counted(xhtml: str) -> str:
        stripped.append(xhtml)
        return strip(xhtml)

    monkeypatch.setattr(fulltext_module, "_strip", counted)
    conditions = [_condition(f"c{n}", f"Dolor torácico {n}") for n in range(3)]
    try:
        with views.write() as tx:
            for view in (index, text):
                view.create(tx, "sqlite")
        with views.write() as tx:
            changes = [_change(number, resource) for number, resource in enumerate(conditions, start=1)]
            for view in (index, text):
                view.apply(tx, changes)
        assert len(stripped) == len(conditions)
        with views.read() as tx:
            rows = tx.execute("SELECT narrative, content FROM search_fulltext ORDER BY sid").fetchall()
        assert [row[0] for row in rows] == ["dolor torac 0", "dolor torac 1", "dolor torac 2"]
        assert all(narrative in content for narrative, content in rows)
    finally:
        views.close()
