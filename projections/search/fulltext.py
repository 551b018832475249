"""Full-text search: the R4 ``_text`` and ``_content`` parameters, over a Spanish-aware index.

R4 §3.1.1.5 "Parameters for all resources": ``_text`` searches the narrative (``DomainResource.text``,
its XHTML ``div`` stripped of markup) and ``_content`` the whole resource's text (every string value of
it, narrative included). Words are matched as a person means them: case and accents folded (the string
index's folding, "TORÁCICO" finds "toracico"), Spanish stop words dropped and words stemmed ("dolores
torácicos" finds "dolor torácico"). The words of one value must all be there (AND); commas separate
alternatives (OR, R4 §3.1.1.3); a repeated parameter ANDs.

The index is a view, ``search_fulltext``: one row per current resource with text, keyed by the
resource's search key ``sid`` (:mod:`projections.search.index`). It is kept by the ``resources``
projector right after the search index (the ``sid`` comes from there), in the same transaction, so
read-your-writes covers it, and ``ehr rebuild`` rebuilds it with the other views.

- PostgreSQL: ``tsvector`` columns built by ``to_tsvector('spanish', ...)`` (the built-in configuration:
  Snowball stemmer and stop words). ``_content`` is a GIN index on its column, queried with
  ``plainto_tsquery('spanish', ...)``, which ANDs the words; ``_text`` reads the narrative's words kept in
  key order (:mod:`projections.search.narrative`), so a page reads its own rows and not every match.
  Accents are folded in Python before: the ``unaccent`` extension would do the
  same but needs a superuser to install, and the folding must equal the string index's anyway.
- SQLite: an FTS5 index (external content, kept by triggers) over the terms of
  :func:`projections.search.spanish.terms`: the same folding, stop words and Snowball stemmer, in Python.

Like the value tables of the search index (whose ``search_string`` rows hold folded names and texts in
clear), the view holds the words of clinical text in clear: views live beside the encrypted log on the
same server, are rebuilt from it, and lose an erased patient's rows with every other view
(:meth:`FullTextIndex.erase`, by ``resource_type``/``resource_id``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import suppress
from html.parser import HTMLParser
from typing import Any

import orjson

from ehr_core.errors import InvalidResource, Issue
from projections.changes import Change
from projections.db import Dialect, Tx
from projections.privacy import Erasure
from projections.search.fold import fold
from projections.search.index import resource_keys
from projections.search.narrative import WORDS, ordered_page
from projections.search.narrative import ddl as words_ddl
from projections.search.narrative import delete as delete_words
from projections.search.narrative import insert_from as insert_words
from projections.search.narrative import matches as word_matches
from projections.search.spanish import terms
from projections.search.special import SpecialFilter, SpecialParser, register
from projections.search.sql import Condition, Context
from projections.search.values import split_unescaped, unescape
from projections.view import View

__all__ = ["FullTextFilter", "FullTextIndex", "content_text", "narrative_text", "texts"]

#: Text kept per column: a tsvector holds at most 1 MB, and words past this many characters of one
#: resource add little to finding it.
MAX_CHARS = 200_000
_CHUNK = 400
#: Keys whose string values are not text: base64 content (Attachment.data, Binary.data).
_SKIPPED = frozenset({"data"})
#: Parameter → column.
COLUMNS = {"_text": "narrative", "_content": "content"}


class _Text(HTMLParser):
    """The character data of an XHTML fragment, entities resolved, each element's text a separate word."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _strip(xhtml: str) -> str:
    parser = _Text()
    parser.feed(xhtml)
    parser.close()
    return " ".join(" ".join(parser.parts).split())


def narrative_text(resource: dict[str, Any]) -> str:
    """``Resource.text.div`` stripped of XHTML (what ``_text`` searches)."""
    text = resource.get("text")
    div = text.get("div") if isinstance(text, dict) else None
    return _strip(div)[:MAX_CHARS] if isinstance(div, str) else ""


def content_text(resource: dict[str, Any]) -> str:
    """Every string value of ``resource``, the narrative stripped of XHTML (what ``_content`` searches)."""
    return texts(resource)[1]


def texts(resource: dict[str, Any]) -> tuple[str, str]:
    """:func:`narrative_text` and :func:`content_text` of ``resource``, its narrative stripped of XHTML once
    (the content holds it too, and Python's HTML parser is slow: 18% of the view's time in a profiled rebuild batch)."""
    text = resource.get("text")
    div = text.get("div") if isinstance(text, dict) else None
    strings = _Strings()
    narrative = ""
    if isinstance(div, str):
        strings.stripped[div] = _strip(div)
        narrative = strings.stripped[div][:MAX_CHARS]
    with suppress(_Full):
        strings.walk(resource, None)
    return narrative, " ".join(strings.found)[:MAX_CHARS]


class _Full(Exception):
    """The content has :data:`MAX_CHARS` characters: the walk stops."""


class _Strings:
    """The string values under a value, in document order, a ``div`` stripped of XHTML (``stripped`` holds
    those already stripped). One call per container, appending to one list: nested generators passed each
    string up through every level above it (the largest Python step in a profiled rebuild batch)."""

    __slots__ = ("found", "size", "stripped")

    def __init__(self) -> None:
        self.found: list[str] = []
        self.size = 0
        self.stripped: dict[str, str] = {}

    def add(self, text: str) -> None:
        self.found.append(text)
        self.size += len(text) + 1
        if self.size > MAX_CHARS:
            raise _Full

    def walk(self, value: Any, key: str | None) -> None:
        if isinstance(value, str):
            if key == "div":
                found = self.stripped.get(value)
                self.add(_strip(value) if found is None else found)
            elif key not in _SKIPPED and key != "resourceType":
                self.add(value)
        elif isinstance(value, dict):
            for name, item in value.items():
                self.walk(item, name)
        elif isinstance(value, list):
            for item in value:
                self.walk(item, key)


# -- the view ---------------------------------------------------------------------------------------

_COLUMNS = "narrative, content"
#: SQLite: the triggers that keep the FTS5 index in step with ``search_fulltext``, row by row.
_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS search_fulltext_added AFTER INSERT ON search_fulltext BEGIN "
    f"INSERT INTO search_fulltext_terms (rowid, {_COLUMNS}) VALUES (new.sid, new.narrative, new.content); END",
    "CREATE TRIGGER IF NOT EXISTS search_fulltext_removed AFTER DELETE ON search_fulltext BEGIN "
    f"INSERT INTO search_fulltext_terms (search_fulltext_terms, rowid, {_COLUMNS}) "
    "VALUES ('delete', old.sid, old.narrative, old.content); END",
    "CREATE TRIGGER IF NOT EXISTS search_fulltext_changed AFTER UPDATE ON search_fulltext BEGIN "
    f"INSERT INTO search_fulltext_terms (search_fulltext_terms, rowid, {_COLUMNS}) "
    "VALUES ('delete', old.sid, old.narrative, old.content); "
    f"INSERT INTO search_fulltext_terms (rowid, {_COLUMNS}) VALUES (new.sid, new.narrative, new.content); END",
)
_TRIGGER_NAMES = ("search_fulltext_added", "search_fulltext_removed", "search_fulltext_changed")


def _ddl(dialect: Dialect) -> list[str]:
    if dialect == "postgres":
        return [
            'CREATE TABLE IF NOT EXISTS search_fulltext (sid BIGINT PRIMARY KEY, resource_type TEXT COLLATE "C" '
            'NOT NULL, resource_id TEXT COLLATE "C" NOT NULL, narrative tsvector, content tsvector)',
            "CREATE INDEX IF NOT EXISTS search_fulltext_resource ON search_fulltext (resource_type, resource_id)",
            # _text reads search_narrative_words (projections.search.narrative); a store made before it had
            # a GIN index on the narrative too, which only cost writes now.
            "DROP INDEX IF EXISTS search_fulltext_narrative",
            "CREATE INDEX IF NOT EXISTS search_fulltext_content ON search_fulltext USING GIN (content)",
        ]
    return [
        "CREATE TABLE IF NOT EXISTS search_fulltext (sid INTEGER PRIMARY KEY, resource_type TEXT NOT NULL, "
        "resource_id TEXT NOT NULL, narrative TEXT NOT NULL, content TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS search_fulltext_resource ON search_fulltext (resource_type, resource_id)",
        # External content: the terms are stored once, in search_fulltext (what a rebuild's swap copies and
        # what erasure deletes); the triggers keep the FTS5 index in step with it. detail=column: column
        # filters work (``narrative : "dolor"``); word positions are not needed (no phrase search).
        f"CREATE VIRTUAL TABLE IF NOT EXISTS search_fulltext_terms USING fts5({_COLUMNS}, "
        "content='search_fulltext', content_rowid='sid', detail=column)",
        *_TRIGGERS,
    ]


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:  # numbers beyond a double (1e400), as the search index reads them
        return json.loads(body)


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class FullTextIndex(View):
    """``search_fulltext``: the words of each current resource's narrative and of its whole content.

    Applied after :class:`projections.search.index.SearchIndex` in the same batch: a resource's row
    carries the ``sid`` the search index just gave it.
    """

    tables = ("search_fulltext", WORDS)
    # A GIN index: only searches read it, and a rebuild builds it once after the bulk load. (The words'
    # primary key stays: an update's delete finds a resource's words through it.)
    query_indexes = ("search_fulltext_content",)

    def create(self, tx: Tx, dialect: Dialect) -> None:
        for statement in _ddl(dialect):
            tx.execute(statement)
        words_ddl(tx, dialect)

    def apply(self, tx: Tx, changes: Sequence[Change]) -> None:
        latest: dict[tuple[str, str], Change] = {}
        replaced: set[tuple[str, str]] = set()
        for change in changes:
            key = (change.resource_type, change.resource_id)
            if key not in latest and change.version > 1:
                replaced.add(key)  # it may have a row from an earlier batch
            latest[key] = change
        self._delete(tx, sorted(replaced))
        wanted = [change for change in latest.values() if not change.deleted]
        sids = resource_keys(tx, changes).final
        rows: list[tuple[Any, ...]] = []
        for change in wanted:
            sid = sids.get((change.resource_type, change.resource_id))
            if sid is None or change.body is None:
                continue
            resource = _loads(change.body)
            narrative, content = texts(resource)
            if narrative or content:
                rows.append((sid, change.resource_type, change.resource_id, narrative, content))
        self._insert(tx, rows)

    def suspend_derived(self, tx: Tx, dialect: Dialect) -> None:
        """SQLite: the FTS5 index stops following ``search_fulltext`` row by row (its triggers go) while a
        rebuild fills the table: the shadow's replay and the swap's copy each fired two index writes per row
        (the copy's ``DELETE`` and ``INSERT``), and the shadow's index was never read (only the table is
        copied). :meth:`rebuild_derived` indexes the copied rows in one pass."""
        if dialect == "sqlite":
            for name in _TRIGGER_NAMES:
                tx.execute(f"DROP TRIGGER IF EXISTS {name}")

    def rebuild_derived(self, tx: Tx, dialect: Dialect) -> None:
        """SQLite: FTS5's ``rebuild`` command indexes every row of the content table anew (in C, one pass;
        the index built row by row holds the same terms), then the triggers keep it in step again."""
        if dialect == "sqlite":
            tx.execute("INSERT INTO search_fulltext_terms (search_fulltext_terms) VALUES ('rebuild')")
            for statement in _TRIGGERS:
                tx.execute(statement)

    def erase(self, tx: Tx, dialect: Dialect, erasure: Erasure) -> None:
        """An erased patient's rows leave the view (projections/privacy.py). On SQLite the FTS5 index is
        merged too: its ``delete`` only marks entries as gone, and their terms would stay in the index's
        older segments until a later merge."""
        self._delete(tx, sorted(erasure.resources))
        if dialect == "sqlite":
            tx.execute("INSERT INTO search_fulltext_terms (search_fulltext_terms) VALUES ('optimize')")

    @staticmethod
    def _delete(tx: Tx, keys: list[tuple[str, str]]) -> None:
        by_type: dict[str, list[str]] = {}
        for resource_type, resource_id in keys:
            by_type.setdefault(resource_type, []).append(resource_id)
        for resource_type, ids in by_type.items():
            for chunk in _chunks(ids):
                if tx.dialect == "postgres":
                    delete_words(tx, resource_type, chunk)
                marks = ", ".join("?" * len(chunk))
                tx.execute(
                    f"DELETE FROM search_fulltext WHERE resource_type = ? AND resource_id IN ({marks})",
                    [resource_type, *chunk],
                )

    def _insert(self, tx: Tx, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        columns = "sid, resource_type, resource_id, narrative, content"
        if tx.dialect == "postgres":
            # Folded in Python (the string index's folding); NUL cannot be in PostgreSQL text. One statement of
            # fixed text for the batch, prepared once per connection, its rows one JSON array (orjson: no work
            # per value in Python): a statement per row cost the client more than the server's to_tsvector (a
            # rebuild inserts one row per resource), and arrays per column cost psycopg a dump per value.
            # The narrative's words go to their own table in the same statement (projections.search.narrative).
            folded = [(*row[:3], _pg_text(row[3]), _pg_text(row[4])) for row in rows]
            tx.execute(
                f"WITH f AS (INSERT INTO search_fulltext ({columns}) SELECT (r->>0)::bigint, r->>1, r->>2, "
                "CASE WHEN r->>3 = '' THEN NULL ELSE to_tsvector('spanish', r->>3) END, "
                "to_tsvector('spanish', r->>4) FROM jsonb_array_elements(?::jsonb) r "
                f"RETURNING sid, resource_type, narrative) {insert_words('f')}",
                (orjson.dumps(folded).decode(),),
            )
            return
        tx.insert(
            "search_fulltext",
            ("sid", "resource_type", "resource_id", "narrative", "content"),
            [(*row[:3], " ".join(terms(row[3])), " ".join(terms(row[4]))) for row in rows],
        )


def _pg_text(text: str) -> str:
    return fold(text.replace("\x00", " "))


# -- the parameters ---------------------------------------------------------------------------------


class FullTextFilter(SpecialFilter):
    """``_text`` or ``_content`` on ``resource_type``: any of ``values`` (OR), each with all its words (AND)."""

    #: A GIN index (``_content``; FTS5 on SQLite) gives its matches in no key order; ``_text`` pages on
    #: PostgreSQL walk its words' lists in key order instead (:meth:`ordered_page`).
    unordered = True

    def __init__(self, name: str, resource_type: str, values: tuple[str, ...]) -> None:
        self.name = name
        self.column = COLUMNS[name]
        self.resource_type = resource_type
        self.values = values

    def ordered_page(self, rest: Condition, after: int | None, backwards: bool, limit: int) -> Condition | None:
        if self.name != "_text":
            return None
        folded = [fold(value) for value in self.values]
        return ordered_page(self.resource_type, folded, rest, after, backwards, limit)

    def condition(self, alias: str, base: str | None, context: Context) -> Condition:
        if context.dialect == "postgres" and self.name == "_text":
            return word_matches(self.resource_type, [fold(value) for value in self.values], alias)
        if context.dialect == "postgres":
            ors = " OR ".join(f"f.{self.column} @@ plainto_tsquery('spanish', ?)" for _ in self.values)
            return Condition(
                f"{alias}.sid IN (SELECT f.sid FROM search_fulltext f WHERE {ors})",
                [fold(value) for value in self.values],
            )
        alternatives = [terms(value) for value in self.values]
        # A value of stop words only has nothing to look for: it matches nothing (as on PostgreSQL).
        groups = [
            "(" + " AND ".join(f'{self.column} : "{term}"' for term in words) + ")" for words in alternatives if words
        ]
        if not groups:
            return Condition("1 = 0")
        return Condition(
            f"{alias}.sid IN (SELECT rowid FROM search_fulltext_terms WHERE search_fulltext_terms MATCH ?)",
            [" OR ".join(groups)],
        )


def _parser(name: str) -> SpecialParser:
    def parse(resource_type: str, raw: str, base: str | None) -> FullTextFilter:
        values = tuple(unescape(item).strip() for item in split_unescaped(raw, ","))
        if not any(values) or not all(values):
            raise InvalidResource(
                [Issue("invalid", f"search parameter {name}: an empty value matches nothing; leave it out", name)]
            )
        return FullTextFilter(name, resource_type, values)

    return parse


for _name in COLUMNS:
    register(_name, _parser(_name))
