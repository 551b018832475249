"""``ehr_core.importing``'s reads, on every backend: a chunk's conditional entries and claimed profiles read
one state of the views, caught up once at the chunk's start, and a later chunk sees what an earlier one
stored (read-your-writes across chunks)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ehr_core.context import WriteContext
from ehr_core.importing import Importer
from ehr_core.references import CONDITIONAL_REFERENCE
from fhir_api.resolver import ViewResolver
from fhir_api.services import Services
from projections.db import _PostgresTx, _SQLiteTx
from projections.resources import ResourceViews
from projections.search import match
from projections.terminology.store import TerminologyStore
from tests.support.bulk_sample import write_bulk_sample
from tests.support.references import references

SYSTEM = "urn:oid:2.16.840.1.113883.4.631.9"
PROFILE = "http://example.org/fhir/StructureDefinition/not-on-this-server"


def _practitioner(number: int) -> dict[str, Any]:
    """A batch entry creating a Practitioner unless one with its identifier exists (R4 §3.1.0.8.1
    conditional create), claiming a profile this server does not hold (checked: a warning)."""
    resource = {
        "resourceType": "Practitioner",
        "meta": {"profile": [PROFILE]},
        "identifier": [{"system": SYSTEM, "value": f"P{number}"}],
        "name": [{"family": f"Ruiz{number}"}],
    }
    return {
        "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{number:012d}",
        "resource": resource,
        "request": {"method": "POST", "url": "Practitioner", "ifNoneExist": f"identifier={SYSTEM}|P{number}"},
    }


def _batch(path: Path, numbers: list[int]) -> Path:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [_practitioner(n) for n in numbers]}
    path.write_text(json.dumps(bundle))
    return path


def test_a_chunk_catches_the_views_up_once_and_looks_each_profile_up_once(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two chunks of 20 conditional creates, each claiming one profile: the log's head is asked once per
    chunk by the conditional matches and once by the profile checks (not once per entry for each), and the
    profile is looked up once per chunk. Half the second chunk repeats the first one's identifiers: caught
    up at its start, it finds them, so nothing is created twice."""
    importing = threading.current_thread()
    recorder = services.application.recorder
    heads = 0
    lookups = 0
    head = recorder.max_notification_id
    find = TerminologyStore.find

    def counted_head() -> Any:
        nonlocal heads
        heads += threading.current_thread() is importing  # not the subscriptions' delivery thread
        return head()

    def counted_find(*args: Any) -> Any:
        nonlocal lookups
        lookups += 1
        return find(*args)

    monkeypatch.setattr(recorder, "max_notification_id", counted_head)
    monkeypatch.setattr(TerminologyStore, "find", staticmethod(counted_find))
    source = _batch(tmp_path / "practitioners.json", [*range(20), *range(10, 30)])
    importer = Importer(services.application, ViewResolver(services), lambda _: None, chunk_size=20)

    report = importer.run([source])

    assert report.rejected == [] and report.stored == 30
    assert heads <= 4  # two chunks: the resource views and the terminology store, once each
    assert lookups == 2
    services.projector.catch_up()
    with services.views.read() as tx:
        stored = tx.execute("SELECT COUNT(*) FROM resources WHERE resource_type = 'Practitioner'").fetchone()
    assert stored is not None and stored[0] == 30


@contextmanager
def _counting_searches() -> Iterator[list[str]]:
    """The conditional searches the calling thread sends to the views, on either backend: each statement
    reading the token index (an identifier is a token), one or many searches in it."""
    thread = threading.get_ident()
    seen: list[str] = []
    originals = {cls: cls.execute for cls in (_SQLiteTx, _PostgresTx)}

    def counted(original: Any) -> Any:
        def execute(self: Any, sql: str, params: Any = ()) -> Any:
            writes = any(verb in sql for verb in ("INSERT", "DELETE", "UPDATE"))  # the projector's, caught up
            reads = "search_token" in sql and not writes
            if threading.get_ident() == thread and reads:
                seen.append(sql)
            return original(self, sql, params)

        return execute

    for cls, original in originals.items():
        setattr(cls, "execute", counted(original))  # noqa: B010  the class attribute, not a method call
    try:
        yield seen
    finally:
        for cls, original in originals.items():
            setattr(cls, "execute", original)  # noqa: B010


def test_a_batch_chunk_asks_all_its_conditional_creates_in_one_statement(services: Services, tmp_path: Path) -> None:
    """Two chunks of 20 conditional creates (R4 §3.1.0.8.1 ``ifNoneExist``): each chunk's 20 searches go to
    the views as one statement (not one round trip each), read after the chunk caught the views up. Half the
    second chunk repeats the first one's identifiers: it finds them, so nothing is created twice."""
    source = _batch(tmp_path / "practitioners.json", [*range(20), *range(10, 30)])
    importer = Importer(services.application, ViewResolver(services), lambda _: None, chunk_size=20)

    with _counting_searches() as searches:
        report = importer.run([source])

    assert report.rejected == [] and report.stored == 30
    assert len(searches) == 2  # one per chunk (before: one per entry, 40)
    services.projector.catch_up()
    with services.views.read() as tx:
        stored = tx.execute("SELECT COUNT(*) FROM resources WHERE resource_type = 'Practitioner'").fetchone()
    assert stored is not None and stored[0] == 30


def _transaction(path: Path, references: list[str], encounters: int = 12) -> Path:
    """A transaction of ``encounters`` Encounters naming ``references`` by turns (Synthea's habit: every
    resource names its practitioner, organization and location by identifier, R4 http.html#trules)."""
    entries = [
        {
            "fullUrl": f"urn:uuid:00000000-0000-4000-9000-{number:012d}",
            "resource": {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "participant": [{"individual": {"reference": references[number % len(references)]}}],
            },
            "request": {"method": "POST", "url": "Encounter"},
        }
        for number in range(encounters)
    ]
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    return path


def test_a_transactions_conditional_references_are_one_statement_and_keep_the_rules(
    services: Services, tmp_path: Path
) -> None:
    """A transaction naming four stored Practitioners by identifier asks the views once (before: once per
    distinct reference), and each reference becomes the one it matches. The R4 rules stay (http.html#trules):
    a reference matching no Practitioner, or two, rejects the whole transaction, answered from that same
    statement."""
    practitioners = _batch(tmp_path / "practitioners.json", [0, 1, 2, 3])
    importer = Importer(services.application, ViewResolver(services), lambda _: None)
    assert importer.run([practitioners]).stored == 4
    twin = {"resourceType": "Practitioner", "identifier": [{"system": SYSTEM, "value": "P3"}]}
    services.application.create(twin, WriteContext(user="test"))  # P3 now matches two Practitioners
    named = [f"Practitioner?identifier={SYSTEM}|P{n}" for n in range(3)]
    services.projector.catch_up()
    with services.views.read() as tx:
        ids = {n: match(tx, "Practitioner", [("identifier", f"{SYSTEM}|P{n}")]) for n in range(3)}

    with _counting_searches() as searches:
        report = importer.run([_transaction(tmp_path / "visits.json", [*named, named[0]])])

    assert report.rejected == [] and report.stored == 12
    assert len(searches) == 1
    services.projector.catch_up()
    with services.views.read() as tx:
        rows = tx.execute("SELECT resource_id FROM resources WHERE resource_type = 'Encounter'").fetchall()
        encounters = [str(row[0]) for row in rows]
        bodies = [
            json.loads(stored.body or b"{}") for e in encounters if (stored := ResourceViews.read(tx, "Encounter", e))
        ]
    assert len(bodies) == 12
    assert {b["participant"][0]["individual"]["reference"] for b in bodies} == {
        f"Practitioner/{found[0]}" for found in ids.values()
    }

    with _counting_searches() as searches:
        missing = importer.run(
            [_transaction(tmp_path / "unknown.json", [*named, f"Practitioner?identifier={SYSTEM}|P9"])]
        )
        several = importer.run(
            [_transaction(tmp_path / "twins.json", [*named, f"Practitioner?identifier={SYSTEM}|P3"])]
        )

    assert missing.stored == 0 and "matches no Practitioner" in missing.rejected[0].reason
    assert several.stored == 0 and "matches more than one Practitioner" in several.rejected[0].reason
    assert len(searches) == 2


def test_an_ndjson_chunk_asks_its_conditional_references_in_one_statement(services: Services, tmp_path: Path) -> None:
    """A Bulk Data export whose Encounters name their practitioner, location and organization by identifier:
    each chunk of Encounter lines asks the views once for all the references it has not resolved yet (before:
    once per distinct reference), and every reference is stored resolved."""
    sample = write_bulk_sample(tmp_path / "export", encounters=40)
    importer = Importer(services.application, ViewResolver(services), lambda _: None, chunk_size=20)
    files = Importer.sources([sample.directory])
    importer.run([path for path in files if path.name != "Encounter.ndjson"])
    encounters = sample.directory / "Encounter.ndjson"
    named = {r for line in encounters.read_text().splitlines() for r in references(json.loads(line))}
    assert len([r for r in named if CONDITIONAL_REFERENCE.match(r)]) > 2

    with _counting_searches() as searches:
        report = importer.run([encounters])

    assert report.rejected == [] and report.deferred == [] and report.stored == 40
    assert len(searches) <= 2  # two chunks of 20 lines
    services.projector.catch_up()
    with services.views.read() as tx:
        rows = tx.execute("SELECT resource_id FROM resources WHERE resource_type = 'Encounter'").fetchall()
        bodies = [
            json.loads(s.body or b"{}") for row in rows if (s := ResourceViews.read(tx, "Encounter", str(row[0])))
        ]
    assert len(bodies) == 40
    assert not [r for body in bodies for r in references(body) if CONDITIONAL_REFERENCE.match(r)]
