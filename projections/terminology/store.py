"""The terminology store: the CodeSystem, ValueSet and ConceptMap resources users stored, followed from the
log like every view, and the spec's own (``ehr_core.spec.terminology``) behind them. It also holds the
StructureDefinitions (profiles, R4 profiling.html), found by canonical url the same way, and behind the
stored ones the resources this server ships (``ehr_core.profiles``: the Mexican profiles and CIE-10).

``terminology_resources`` holds the current version of each stored resource with its canonical url and
version, so the operations find a code system or value set by the url a ``compose`` or a request names
(R4 terminology-service.html) without searching the resource views. A stored resource takes precedence
over the spec's of the same url: a deployment may publish a newer version of an HL7 code system.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ehr_core.profiles import shipped_resource
from ehr_core.spec.terminology import spec_terminology
from projections.changes import Change
from projections.db import Dialect, Tx, ViewDatabase
from projections.terminology.engine import Resolver
from projections.view import View

__all__ = ["TERMINOLOGY_TYPES", "TerminologyStore", "TerminologyView"]

#: The resource types this store follows.
TERMINOLOGY_TYPES = frozenset({"CodeSystem", "ValueSet", "ConceptMap", "StructureDefinition"})


class TerminologyView(View):
    tables = ("terminology_resources",)

    def create(self, tx: Tx, dialect: Dialect) -> None:
        tx.execute(
            """CREATE TABLE IF NOT EXISTS terminology_resources (
                resource_type TEXT NOT NULL,
                resource_id TEXT NOT NULL,
                url TEXT NOT NULL,
                version TEXT NOT NULL,
                body TEXT NOT NULL,
                PRIMARY KEY (resource_type, resource_id))"""
        )
        tx.execute("CREATE INDEX IF NOT EXISTS terminology_resources_url ON terminology_resources (resource_type, url)")

    def apply(self, tx: Tx, changes: Sequence[Change]) -> None:
        for change in changes:
            if change.resource_type not in TERMINOLOGY_TYPES:
                continue
            key = (change.resource_type, change.resource_id)
            if change.body is None:
                tx.execute("DELETE FROM terminology_resources WHERE resource_type = ? AND resource_id = ?", key)
                continue
            resource = orjson.loads(change.body)
            url = resource.get("url") if isinstance(resource.get("url"), str) else ""
            version = resource.get("version") if isinstance(resource.get("version"), str) else ""
            tx.upsert(
                "terminology_resources",
                ("resource_type", "resource_id", "url", "version", "body"),
                ("resource_type", "resource_id"),
                [(*key, url, version, change.body.decode("utf-8"))],
            )


class TerminologyStore:
    """Finds terminology resources: the stored ones first, then the spec's."""

    def __init__(self, database: ViewDatabase) -> None:
        self.database = database

    @staticmethod
    def resolver(tx: Tx) -> Resolver:
        """A :data:`Resolver` reading in ``tx`` (one operation sees one state of the store)."""

        def resolve(resource_type: str, url: str, version: str | None) -> dict[str, Any] | None:
            return TerminologyStore.find(tx, resource_type, url, version)

        return resolve

    @staticmethod
    def find(tx: Tx, resource_type: str, url: str, version: str | None = None) -> dict[str, Any] | None:
        """The resource of canonical ``url`` (``url|version`` is split by the caller): a stored one (that
        version, or the latest stored id-order last when several share the url), else the spec's."""
        sql = "SELECT body FROM terminology_resources WHERE resource_type = ? AND url = ?"
        params: tuple[str, ...] = (resource_type, url)
        if version:
            sql += " AND version = ?"
            params += (version,)
        rows = tx.execute(sql + " ORDER BY version, resource_id", params).fetchall()
        if rows:
            found: dict[str, Any] = orjson.loads(rows[-1][0])
            return found
        spec = spec_terminology().find(resource_type, url)
        if spec is not None and (not version or spec.get("version") in (None, version)):
            return spec
        return shipped_resource(resource_type, url, version)

    @staticmethod
    def read(tx: Tx, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """By logical id (instance-level operations): a stored resource, else the spec's of that id."""
        row = tx.execute(
            "SELECT body FROM terminology_resources WHERE resource_type = ? AND resource_id = ?",
            (resource_type, resource_id),
        ).fetchone()
        if row is not None:
            found: dict[str, Any] = orjson.loads(row[0])
            return found
        return spec_terminology().read(resource_type, resource_id)

    @staticmethod
    def concept_maps(tx: Tx, url: str | None = None) -> list[dict[str, Any]]:
        """The stored ConceptMaps (of canonical ``url``, when given), in id order."""
        sql = "SELECT body FROM terminology_resources WHERE resource_type = 'ConceptMap'"
        params: tuple[str, ...] = ()
        if url:
            sql += " AND url = ?"
            params = (url,)
        return [orjson.loads(row[0]) for row in tx.execute(sql + " ORDER BY resource_id", params).fetchall()]
