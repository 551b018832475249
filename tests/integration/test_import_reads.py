"""``ehr_core.importing``'s reads, on every backend: a chunk's conditional entries and claimed profiles read
one state of the views, caught up once at the chunk's start, and a later chunk sees what an earlier one
stored (read-your-writes across chunks)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from ehr_core.importing import Importer
from fhir_api.resolver import ViewResolver
from fhir_api.services import Services
from projections.terminology.store import TerminologyStore

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
