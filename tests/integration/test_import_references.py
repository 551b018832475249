"""``ehr_core.importing`` with conditional references, on every backend: NDJSON loaded in dependency order,
lines whose targets come later deferred and resolved after, also across an interrupted import."""

from __future__ import annotations

import json
from pathlib import Path

from ehr_core.importing import Importer
from ehr_core.references import CONDITIONAL_REFERENCE
from fhir_api.resolver import ViewResolver
from fhir_api.services import Services
from projections.resources import ResourceViews
from tests.support.bulk_sample import write_bulk_sample
from tests.support.references import references


def _importer(services: Services) -> Importer:
    return Importer(services.application, ViewResolver(services), lambda _: None, chunk_size=16)


def test_deferred_lines_are_found_again_after_an_interruption(services: Services, tmp_path: Path) -> None:
    """A first run loads only the Encounters (their practitioners, locations and organizations absent), stores
    its chunks and dies before resolving what it deferred. The re-run skips those chunks, finds their deferred
    lines again (a conditional reference, the resource not in the store) and stores them once the rest is
    loaded; a second version of an Encounter later in the file stays the latest."""
    sample = write_bulk_sample(tmp_path / "export", encounters=30)
    encounters = sample.directory / "Encounter.ndjson"
    first = json.loads(encounters.read_text().splitlines()[0])
    with encounters.open("a") as out:
        out.write(json.dumps(first | {"status": "cancelled"}) + "\n")

    interrupted = _importer(services).run([encounters], finish=False)
    assert len(interrupted.deferred) == 31 and interrupted.stored == 0 and not interrupted.rejected

    files = Importer.sources([sample.directory])
    assert [path.name for path in files] == [
        "Organization.ndjson",
        "Location.ndjson",
        "Practitioner.ndjson",
        "Patient.ndjson",
        "Encounter.ndjson",
    ]
    report = _importer(services).run(files)
    assert report.rejected == [] and report.deferred == []
    assert report.skipped_chunks == 2 and report.resolved_later == 31
    services.projector.catch_up()
    with services.views.read() as tx:
        rows = tx.execute("SELECT body FROM resources WHERE resource_type = 'Encounter'").fetchall()
        bodies = [json.loads(bytes(row[0])) for row in rows]
        latest = ResourceViews.read(tx, "Encounter", first["id"])
    assert len(bodies) == 30
    assert not [r for body in bodies for r in references(body) if CONDITIONAL_REFERENCE.match(r)]
    assert latest is not None and latest.version == 2 and json.loads(latest.body or b"{}")["status"] == "cancelled"
