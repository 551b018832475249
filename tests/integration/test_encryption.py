"""Encryption at rest per patient compartment, master keys, rotation (both backends)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import MapperDeserialisationError, StoredEvent

from ehr_core.context import WriteContext
from ehr_core.demo.population import population
from ehr_core.encryption import MAGIC, stored_key_id
from ehr_core.importing import Importer
from ehr_core.keys import SYSTEM, KeyStore, KeyStoreError, MasterKey, MasterKeyMissing, write_key_file
from ehr_core.settings import Settings
from fhir_api.resolver import ViewResolver
from fhir_api.services import Services
from tests.conftest import CORPUS

CTX = WriteContext(institution="IMSS", unit="DFIMS000011", user="dra.lopez", role="physician")


def _load_demo(services: Services, people: int = 12) -> list[dict[str, Any]]:
    application, resources = services.application, []
    for write in population(people, 7):
        context = WriteContext(institution=write.institution, unit=write.unit, user=write.user, interaction="update")
        application.commit(
            [application.prepare_update(r["resourceType"], r["id"], r, context) for r in write.resources]
        )
        resources += write.resources
    services.projector.catch_up()
    return resources


def _load_synthea(services: Services, files: int = 3) -> list[dict[str, Any]]:
    import orjson

    paths = sorted((CORPUS / "synthea" / "smart-r4-2019").glob("*.json"))[:files]
    importer = Importer(services.application, ViewResolver(services), services.projector.wait_until, CTX)
    report = importer.run(paths)
    assert report.stored > 100 and not report.rejected
    return [entry["resource"] for path in paths for entry in orjson.loads(path.read_bytes())["entry"]]


def _sensitive(resources: list[dict[str, Any]]) -> set[str]:
    """Names, birth dates, identifier values (CURP, NSS, MRN...) and clinical codes of the loaded data."""
    needles: set[str] = set()

    def codes(value: Any) -> None:
        if isinstance(value, dict):
            for coding in value.get("coding", []) if isinstance(value.get("coding"), list) else []:
                if isinstance(coding, dict) and isinstance(coding.get("code"), str) and len(coding["code"]) >= 5:
                    needles.add(coding["code"])
            for item in value.values():
                codes(item)
        elif isinstance(value, list):
            for item in value:
                codes(item)

    for resource in resources:
        if resource["resourceType"] == "Patient":
            for name in resource.get("name", []):
                needles.update(n for n in [name.get("family"), *name.get("given", [])] if n and len(n) >= 4)
            if resource.get("birthDate"):
                needles.add(resource["birthDate"])
            needles.update(i["value"] for i in resource.get("identifier", []) if len(i.get("value", "")) >= 6)
        if resource["resourceType"] in ("Observation", "Condition", "Procedure", "MedicationRequest"):
            codes(resource.get("code") or resource.get("medicationCodeableConcept"))
    return needles


def _event_states(services: Services) -> list[StoredEvent]:
    return list(services.application.recorder.select_notifications(start=1, limit=1_000_000))


def test_every_event_is_sealed_under_its_compartments_key(services: Services) -> None:
    patient = services.application.create({"resourceType": "Patient", "name": [{"family": "Zapata"}]}, CTX)
    observation = services.application.create(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{patient.resource_id}"},
        },
        CTX,
    )
    services.application.create({"resourceType": "Organization", "name": "Hospital Juárez"}, CTX)
    keys = services.application.keys
    states = [n for n in _event_states(services) if n.topic.startswith("ehr_core.streams:")]
    assert len(states) == 3 and all(bytes(n.state).startswith(MAGIC) for n in states)
    patient_key = keys.key_id_of(patient.resource_id)
    assert [stored_key_id(n.state) for n in states] == [patient_key, patient_key, keys.key_id_of(SYSTEM)]
    # The stored key id is random: neither the patient id nor derived from it.
    assert patient_key is not None and patient.resource_id.encode() not in b"".join(bytes(n.state) for n in states)
    assert b"Zapata" not in b"".join(bytes(n.state) for n in states)
    stored = services.application.stream("Observation", observation.resource_id)
    assert stored is not None and "8867-4" in (stored.resource or "")


def test_a_ciphertext_moved_to_another_stream_or_version_does_not_decrypt(services: Services) -> None:
    first = services.application.create({"resourceType": "Patient", "name": [{"family": "Uno"}]}, CTX)
    services.application.update(
        "Patient", first.resource_id, {"resourceType": "Patient", "id": first.resource_id, "active": True}, CTX
    )
    states = [n for n in _event_states(services) if n.topic.startswith("ehr_core.streams:")]
    mapper = services.application.mapper
    v1 = states[0]
    with pytest.raises(MapperDeserialisationError, match="does not authenticate"):
        mapper.to_domain_event(StoredEvent(v1.originator_id, 2, v1.topic, v1.state))
    other = services.application.create({"resourceType": "Patient", "id": "x"}, CTX)
    assert other.notification_id is not None
    with pytest.raises(MapperDeserialisationError):
        mapper.to_domain_event(StoredEvent(_event_states(services)[-1].originator_id, 1, v1.topic, v1.state))
    tampered = bytearray(v1.state)
    tampered[-1] ^= 1
    with pytest.raises(MapperDeserialisationError):
        mapper.to_domain_event(StoredEvent(v1.originator_id, 1, v1.topic, bytes(tampered)))


def test_master_key_rotation_rewraps_data_keys_without_touching_events(settings: Settings, tmp_path: Path) -> None:
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    write_key_file(old, MasterKey.generate())
    write_key_file(new, MasterKey.generate())
    configured = settings.model_copy(update={"master_key_file": old})
    services = Services.open(configured, follow=False)
    try:
        written = services.application.create({"resourceType": "Patient", "name": [{"family": "Rota"}]}, CTX)
        before = [(n.id, bytes(n.state)) for n in _event_states(services)]
        keys = services.application.keys
        assert keys.rotate(MasterKey.parse(new.read_text())) == len(keys.rows()) >= 1
    finally:
        services.close()
    rotated = settings.model_copy(update={"master_key_file": new})
    services = Services.open(rotated, follow=False)
    try:
        # The same stored bytes (the identity index may have appended Person events since: not ours).
        assert [(n.id, bytes(n.state)) for n in _event_states(services)][: len(before)] == before
        stream = services.application.stream("Patient", written.resource_id)
        assert stream is not None and "Rota" in (stream.resource or "")
        assert {row.master_id for row in services.application.keys.rows()} == {MasterKey.parse(new.read_text()).id}
    finally:
        services.close()
    # The old master opens nothing any more: loudly, not as silently missing data.
    store = KeyStore(settings.model_copy(update={"master_key_file": old}))
    try:
        key_id = store.rows()[0].key_id
        with pytest.raises(KeyStoreError, match="not configured"):
            store.by_id(key_id)
    finally:
        store.close()


def test_production_refuses_to_start_without_a_master_key(settings: Settings) -> None:
    with pytest.raises(MasterKeyMissing):
        Services.open(settings.model_copy(update={"env": "production"}), follow=False)


def test_development_generates_and_announces_a_master_key(
    sqlite_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    services = Services.open(sqlite_settings, follow=False)
    services.close()
    assert (sqlite_settings.data_dir / "master-key").exists()
    assert "DEVELOPMENT MASTER KEY" in capsys.readouterr().err
    assert oct((sqlite_settings.data_dir / "master-key").stat().st_mode & 0o777) == "0o600"


def test_sqlite_event_file_holds_no_plaintext_phi(sqlite_settings: Settings) -> None:
    services = Services.open(sqlite_settings, follow=False)
    try:
        resources = _load_demo(services) + _load_synthea(services, 2)
    finally:
        services.close()
    needles = _sensitive(resources)
    assert len(needles) > 100
    raw = (sqlite_settings.data_dir / "events.sqlite").read_bytes()
    # Stream ids are UUIDv5 text (no PHI) whose hex groups can spell a code like "8480-6": blank them out.
    raw = re.sub(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", b"\0", raw)
    assert [n for n in needles if n.encode() in raw] == []
    # ...while the projections hold them in plain text, for serving and search (stated in the report).
    views = sqlite3.connect(sqlite_settings.data_dir / "views.sqlite")
    bodies = b"".join(bytes(r[0]) for r in views.execute("SELECT body FROM resources WHERE body IS NOT NULL"))
    assert all(n.encode() in bodies for n in list(needles)[:20])


@pytest.mark.postgres
def test_pg_dump_of_the_whole_schema_has_no_plaintext_phi_in_the_event_table(postgres_settings: Settings) -> None:
    services = Services.open(postgres_settings, follow=False)
    try:
        resources = _load_demo(services) + _load_synthea(services, 2)
        services.projector.catch_up()
    finally:
        services.close()
    needles = _sensitive(resources)
    assert len(needles) > 100
    params = postgres_settings.postgres_params()
    dump = subprocess.run(
        ["pg_dump", "-h", params["host"], "-p", params["port"], "-U", params["user"], "-n",
         postgres_settings.postgres_schema, "--data-only", params["dbname"]],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    tables = dict(re.findall(r"^COPY [^.]+\.(\w+) \(.*?\) FROM stdin;\n(.*?)^\\\.$", dump, re.S | re.M))
    assert "ehr_events" in tables and "ehr_data_keys" in tables
    event_rows = tables["ehr_events"].splitlines()
    assert len(event_rows) > 500
    plain = bytearray()
    for line in event_rows:
        for column in line.split("\t"):
            if _is_uuid(column):
                # The stream id: a UUIDv5 hash of Type/id, no PHI, but its hex groups can spell a code such
                # as "8480-6" ("…8480-6b2c…"), so it is not searched.
                continue
            # Columns joined by NUL, so a needle cannot be made of the end of one and the start of the next.
            plain += (bytes.fromhex(column[3:]) if column.startswith("\\\\x") else column.encode()) + b"\0"
    assert bytes(plain).count(MAGIC) >= len(event_rows)
    assert [n for n in needles if n.encode() in plain] == []
    # The key table: random key ids, wrapped keys, patient ids (opaque resource ids), no PHI.
    keys = tables["ehr_data_keys"]
    assert [n for n in needles if n in keys] == []
    # Projections keep plain text on purpose (serving and search): the needles ARE in the views.
    found_in_views = {n for n in needles if n in tables.get("resources", "") or n in tables.get("search_string", "")}
    assert found_in_views
    with psycopg.connect(postgres_settings.postgres_conninfo()) as connection:
        count = connection.execute(
            f'SELECT COUNT(*) FROM "{postgres_settings.postgres_schema}".ehr_data_keys'
        ).fetchone()
    assert count is not None and count[0] > 10


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False
