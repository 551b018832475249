"""Search latency at scale on PostgreSQL: ``python -m bench.search [--resources N]``.

1. **Generate** N synthetic resources (5% Patient, 20% Encounter, 70% Observation, 4.9% Condition,
   a few Practitioners and Organizations: Mexican names with accents, CURPs, LOINC vital signs, dates
   over ten years) and **bulk-load** them: each resource's index rows come from the index's own
   extraction code (``projections.search.extract``, what the projector runs), and are written with
   ``COPY`` into a fresh schema's ``search_*`` tables and ``resources`` table, with the indexes dropped
   during the load and rebuilt after. The event log is bypassed: this measures reads, and the write path
   has its own benchmark (``python -m bench``). Generation time and the index's size on disk per
   resource are reported.
2. **Measure** first pages (``_count=20&_total=none``) of a token search, a string search on names, a
   date range and a chained search, each with fresh random values, sequentially: the search itself
   (``search_bundle``: parse, SQL, stored bytes into the Bundle, JSON) and the whole HTTP request in
   process (FastAPI routing and the audit middleware, which records every search, included).

Target: median under 20 ms, p99 under 100 ms at 1 million resources.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson
import psycopg
from psycopg import sql

from bench.pg import DEFAULT_URL, available, conninfo, fresh_schema
from bench.stats import percentile
from projections.search.fold import fold

FAMILIES = [
    "García", "Hernández", "Martínez", "López", "González", "Pérez", "Rodríguez", "Sánchez", "Ramírez", "Cruz",
    "Flores", "Gómez", "Morales", "Vázquez", "Jiménez", "Reyes", "Díaz", "Torres", "Gutiérrez", "Ruiz",
    "Mendoza", "Aguilar", "Ortiz", "Moreno", "Castillo", "Romero", "Álvarez", "Méndez", "Chávez", "Rivera",
    "Juárez", "Ramos", "Domínguez", "Herrera", "Medina", "Castro", "Vargas", "Guzmán", "Velázquez", "Muñoz",
    "Rojas", "Salazar", "Contreras", "Luna", "Ortega", "Guerrero", "Estrada", "Bautista", "Cortés", "Soto",
]  # fmt: skip
GIVEN = [
    "María", "José", "Juan", "Guadalupe", "Francisco", "Ana", "Luis", "Carmen", "Jesús", "Rosa", "Miguel",
    "Alejandra", "Pedro", "Verónica", "Jorge", "Leticia", "Antonio", "Gabriela", "Ramón", "Sofía", "Andrés",
    "Ximena", "Ángel", "Itzel", "Raúl", "Citlali", "Héctor", "Yolanda", "Óscar", "Fernanda",
]  # fmt: skip
CITIES = ["Ciudad de México", "Guadalajara", "Monterrey", "Puebla", "Tijuana", "León", "Mérida", "Querétaro"]
VITALS = [
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 90, 180),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 55, 110),
    ("8867-4", "Heart rate", "/min", 50, 120),
    ("9279-1", "Respiratory rate", "/min", 10, 30),
    ("8310-5", "Body temperature", "Cel", 35, 40),
    ("59408-5", "Oxygen saturation", "%", 85, 100),
    ("8302-2", "Body height", "cm", 50, 200),
    ("29463-7", "Body weight", "kg", 3, 150),
    ("8280-0", "Waist circumference", "cm", 50, 150),
    ("2339-0", "Glucose", "mg/dL", 60, 300),
]
CONDITIONS = [("E11.9", "Diabetes mellitus tipo 2"), ("I10", "Hipertensión esencial"), ("J06.9", "Infección aguda")]
#: Reasons for a visit, in the Encounter's narrative (what ``_text`` searches), written as a clinician would:
#: accents and capitals vary ("dolor torácico", "DOLOR TORACICO"), which the full-text index folds.
REASONS = [
    "dolor torácico", "cefalea intensa", "tos persistente", "dolor abdominal", "fiebre y escalofríos",
    "control de diabetes", "revisión de presión arterial", "lumbalgia mecánica", "mareo y vómito", "disnea de esfuerzo",
    "erupción cutánea", "dolor de garganta", "ansiedad e insomnio", "control prenatal", "herida en la mano",
    "dolor de rodilla", "diarrea aguda", "visión borrosa", "palpitaciones nocturnas", "pérdida de peso",
]  # fmt: skip
#: Value sets of LOINC vital-sign codes (what ``:in`` expands), stored as a user would store them.
VALUE_SETS = {
    "presion-arterial": ("Presión arterial", ["8480-6", "8462-4"]),
    "medidas-corporales": ("Medidas corporales", ["8302-2", "29463-7", "8280-0"]),
    "signos-cardiorrespiratorios": ("Signos cardiorrespiratorios", ["8867-4", "9279-1", "59408-5"]),
}
VALUE_SET_BASE = "http://imss.gob.mx/fhir/ValueSet/"
CURP = "urn:oid:2.16.840.1.113883.4.629"
UCUM = "http://unitsofmeasure.org"
VITAL_SIGNS = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]
}
ACTIVE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
LOINC = "http://loinc.org"
START = datetime(2015, 1, 1, tzinfo=UTC)
SPAN_SECONDS = 10 * 365 * 24 * 3600


class Generator:
    """Deterministic synthetic resources; remembers what the queries will ask for."""

    def __init__(self, total: int, seed: int = 4) -> None:
        self.rng = random.Random(seed)
        self.total = total
        self.patients = max(1, total * 5 // 100)
        self.organizations = max(1, total // 2000)
        self.practitioners = max(1, total // 1000)
        self.encounters = max(1, total * 20 // 100)
        self.conditions = max(1, total * 49 // 1000)
        self.observations = total - self.patients - self.organizations - self.practitioners
        self.observations -= self.encounters + self.conditions + len(VALUE_SETS)
        self.curps: list[str] = []
        self.patient_ids: list[str] = []
        self.encounter_ids: list[str] = []
        self.organization_ids: list[str] = []
        self.practitioner_ids: list[str] = []

    def _id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _moment(self) -> datetime:
        return START + timedelta(seconds=self.rng.randrange(SPAN_SECONDS))

    def _curp(self) -> str:
        letters = "".join(self.rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4))
        digits = f"{self.rng.randrange(100):02d}{self.rng.randrange(1, 13):02d}{self.rng.randrange(1, 29):02d}"
        tail = "".join(self.rng.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(3))
        return f"{letters}{digits}{self.rng.choice('HM')}DF{tail}{self.rng.randrange(10)}{self.rng.randrange(10)}"

    def resources(self) -> Iterator[dict[str, Any]]:
        rng = self.rng
        for name, (title, codes) in VALUE_SETS.items():
            yield {
                "resourceType": "ValueSet",
                "id": name,
                "url": VALUE_SET_BASE + name,
                "version": "1.0.0",
                "name": name.replace("-", "_"),
                "title": title,
                "status": "active",
                "compose": {"include": [{"system": LOINC, "concept": [{"code": code} for code in codes]}]},
            }
        for _ in range(self.organizations):
            self.organization_ids.append(oid := self._id())
            yield {
                "resourceType": "Organization",
                "id": oid,
                "identifier": [
                    {"system": "urn:oid:2.16.840.1.113883.4.631", "value": f"DFIMS{rng.randrange(10**6):06d}"}
                ],
                "name": f"Unidad de Medicina Familiar {rng.randrange(1, 400)} {rng.choice(CITIES)}",
            }
        for _ in range(self.practitioners):
            self.practitioner_ids.append(pid := self._id())
            yield {
                "resourceType": "Practitioner",
                "id": pid,
                "identifier": [{"system": CURP, "value": self._curp()}],
                "name": [{"family": rng.choice(FAMILIES), "given": [rng.choice(GIVEN)], "prefix": ["Dr."]}],
            }
        for _ in range(self.patients):
            yield from self._patient_record()

    def _patient_record(self) -> Iterator[dict[str, Any]]:
        """A patient then their encounters, observations and conditions (interleaved, as a record grows)."""
        rng = self.rng
        pid = self._id()
        self.patient_ids.append(pid)
        self.curps.append(curp := self._curp())
        yield {
            "resourceType": "Patient",
            "id": pid,
            "identifier": [
                {"system": CURP, "value": curp},
                {"system": "http://imss.gob.mx/fhir/sid/nss", "value": f"{rng.randrange(10**11):011d}"},
            ],
            "active": True,
            "name": [{"family": rng.choice(FAMILIES), "given": [rng.choice(GIVEN), rng.choice(GIVEN)]}],
            "telecom": [{"system": "phone", "value": f"+52 55 {rng.randrange(10**8):08d}"}],
            "gender": rng.choice(["female", "male"]),
            "birthDate": (datetime(1930, 1, 1) + timedelta(days=rng.randrange(94 * 365))).date().isoformat(),
            "address": [{"city": rng.choice(CITIES), "state": "CDMX", "postalCode": f"{rng.randrange(10**5):05d}"}],
            "managingOrganization": {"reference": f"Organization/{rng.choice(self.organization_ids)}"},
        }
        subject = {"reference": f"Patient/{pid}"}
        encounters = []
        for _ in range(self._share(self.encounters)):
            encounters.append(eid := self._id())
            start = self._moment()
            reason = rng.choice(REASONS)
            reason = reason.upper() if rng.random() < 0.1 else reason
            yield {
                "resourceType": "Encounter",
                "id": eid,
                "text": {
                    "status": "generated",
                    "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>Consulta de medicina familiar.</p>'
                    f"<p>Motivo: {reason}.</p></div>",
                },
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": subject,
                "participant": [{"individual": {"reference": f"Practitioner/{rng.choice(self.practitioner_ids)}"}}],
                "period": {"start": start.isoformat(), "end": (start + timedelta(minutes=20)).isoformat()},
                "serviceProvider": {"reference": f"Organization/{rng.choice(self.organization_ids)}"},
            }
        for _ in range(self._share(self.conditions)):
            code, text = rng.choice(CONDITIONS)
            yield {
                "resourceType": "Condition",
                "id": self._id(),
                "clinicalStatus": ACTIVE,
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code, "display": text}]},
                "subject": subject,
                "onsetDateTime": self._moment().isoformat(),
            }  # fmt: skip
        for _ in range(self._share(self.observations)):
            code, display, unit, low, high = rng.choice(VITALS)
            encounter = {"encounter": {"reference": f"Encounter/{rng.choice(encounters)}"}} if encounters else {}
            yield {
                "resourceType": "Observation",
                "id": self._id(),
                "status": "final",
                "category": [VITAL_SIGNS],
                "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                "subject": subject,
                **encounter,
                "effectiveDateTime": self._moment().isoformat(),
                "valueQuantity": {"value": round(rng.uniform(low, high), 1), "unit": unit, "system": UCUM, "code": unit},  # noqa: E501
            }  # fmt: skip

    def _share(self, total: int) -> int:
        """How many of ``total`` one patient gets: the average, rounded at random (totals come out right)."""
        average = total / self.patients
        return int(average) + (self.rng.random() < average - int(average))


# -- loading ----------------------------------------------------------------------------------------


def _search_indexes(cursor: psycopg.Cursor[Any], schema: str) -> list[tuple[str, str]]:
    rows = cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename LIKE 'search_%%' "
        "AND indexname NOT LIKE '%%_pkey'",
        (schema,),
    ).fetchall()
    return [(str(name), str(definition)) for name, definition in rows]


def load(url: str, schema: str, generator: Generator, chunk: int = 20000) -> dict[str, float]:
    """Bulk-load the generated resources; returns timings (seconds)."""
    from projections.search.dates import date_range
    from projections.search.extract import extract
    from projections.search.fulltext import _pg_text, content_text, narrative_text
    from projections.search.index import VALUE_TABLES, _span_updates
    from projections.search.narrative import WORDS
    from projections.search.narrative import insert_from as insert_words
    from projections.terminology.store import TERMINOLOGY_TYPES

    timings: dict[str, float] = {}
    started = time.perf_counter()
    with psycopg.connect(conninfo(url), autocommit=True, options=f"-c search_path={schema}") as connection:
        cursor = connection.cursor()
        indexes = _search_indexes(cursor, schema)
        for name, _ in indexes:
            cursor.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        # The full-text view's rows as FullTextIndex writes them: text folded in Python, turned into
        # tsvectors by PostgreSQL's Spanish configuration (COPY cannot call to_tsvector: a staging table).
        cursor.execute(
            "CREATE TEMP TABLE bench_fulltext (sid BIGINT, resource_type TEXT, resource_id TEXT, narrative TEXT, "
            "content TEXT)"
        )
        extract_seconds = 0.0
        spans: dict[tuple[str, str], tuple[int, ...]] = {}
        batch: list[dict[str, Any]] = []
        keys: dict[tuple[str, str], int] = {}
        sid = 0
        instant = datetime.now(UTC).isoformat(timespec="microseconds")
        micros = date_range(instant)[0]

        def flush() -> None:
            nonlocal extract_seconds, sid
            tick = time.perf_counter()
            resources_rows: list[tuple[Any, ...]] = []
            ids_rows: list[tuple[Any, ...]] = []
            text_rows: list[tuple[Any, ...]] = []
            terminology_rows: list[tuple[Any, ...]] = []
            values: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in VALUE_TABLES}
            for resource in batch:
                sid += 1
                resource["meta"] = {"versionId": "1", "lastUpdated": instant}
                kind, rid = resource["resourceType"], resource["id"]
                body = orjson.dumps(resource)
                resources_rows.append((kind, rid, 1, instant, body, sid))
                ids_rows.append((sid, kind, rid, micros))
                narrative, content = narrative_text(resource), content_text(resource)
                if narrative or content:
                    text_rows.append((sid, kind, rid, _pg_text(narrative), _pg_text(content)))
                if kind in TERMINOLOGY_TYPES:  # what TerminologyView keeps of it
                    terminology_rows.append((kind, rid, resource["url"], resource["version"], body.decode()))
                keys[(kind, rid)] = sid
                rows = extract(resource)
                for table in VALUE_TABLES:
                    values[table] += [(kind, *row, sid) for row in getattr(rows, table)]
            # A reference's target key, as SearchIndex writes it (projections/search/targets.py): the generator
            # yields every target before the resources that refer to it.
            values["reference"] = [
                (*row[:-1], keys.get((row[2], row[3])) if row[2] is not None else None, row[-1])
                for row in values["reference"]
            ]
            for resource_type, param, *found in _span_updates(values["date"]):
                known = spans.get((resource_type, param), (0, 0, 0))
                spans[(resource_type, param)] = tuple(max(a, b) for a, b in zip(known, found, strict=True))
            extract_seconds += time.perf_counter() - tick
            with connection.transaction():
                _copy(
                    cursor,
                    "resources",
                    ("resource_type", "resource_id", "version", "last_updated", "body", "notification_id"),
                    resources_rows,
                )
                _copy(cursor, "search_ids", ("sid", "resource_type", "resource_id", "last_updated"), ids_rows)
                for kind, (table, columns) in VALUE_TABLES.items():
                    _copy(cursor, table, ("resource_type", "param", *columns, "sid"), values[kind])
                _copy(
                    cursor, "bench_fulltext", ("sid", "resource_type", "resource_id", "narrative", "content"), text_rows
                )
                cursor.execute(
                    "WITH f AS (INSERT INTO search_fulltext (sid, resource_type, resource_id, narrative, content) "
                    "SELECT sid, resource_type, resource_id, CASE WHEN narrative = '' THEN NULL "
                    "ELSE to_tsvector('spanish', narrative) END, to_tsvector('spanish', content) FROM bench_fulltext "
                    f"RETURNING sid, resource_type, narrative) {insert_words('f')}"
                )
                cursor.execute("TRUNCATE bench_fulltext")
                _copy(cursor, "terminology_resources", ("resource_type", "resource_id", "url", "version", "body"),
                      terminology_rows)  # fmt: skip
            batch.clear()

        for resource in generator.resources():
            batch.append(resource)
            if len(batch) >= chunk:
                flush()
                print(f"  loaded {sid:,} / {generator.total:,}", file=sys.stderr, flush=True)
        if batch:
            flush()
        cursor.executemany(
            "INSERT INTO search_date_spans (resource_type, param, max_span, open_start, open_end) "
            "VALUES (%s, %s, %s, %s, %s)",
            [(t, p, *found) for (t, p), found in spans.items()],
        )
        timings["extract_and_copy"] = time.perf_counter() - started
        timings["extract_only"] = extract_seconds
        tick = time.perf_counter()
        for _, definition in indexes:
            cursor.execute(definition)
        timings["create_indexes"] = time.perf_counter() - tick
        tick = time.perf_counter()
        tables = ("resources", "search_ids", *(t for t, _ in VALUE_TABLES.values()), "search_fulltext", WORDS)
        for table in (*tables, "terminology_resources"):
            cursor.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
        timings["vacuum_analyze"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    timings["resources"] = sid
    return timings


def _copy(cursor: psycopg.Cursor[Any], table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    with cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def sizes(url: str, schema: str) -> dict[str, int]:
    with psycopg.connect(conninfo(url), autocommit=True) as connection:
        rows = connection.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' "
            "AND (c.relname LIKE 'search_%%' OR c.relname = 'resources')",
            (schema,),
        ).fetchall()
    return {str(name): int(size) for name, size in rows}


# -- measuring --------------------------------------------------------------------------------------


def queries(generator: Generator, rng: random.Random) -> dict[str, Callable[[], str]]:
    def week() -> str:
        start = START + timedelta(days=rng.randrange(3650 - 7))
        return f"date=ge{start.date().isoformat()}&date=lt{(start + timedelta(days=7)).date().isoformat()}"

    page = "_count=20&_total=none"

    def curp() -> str:
        return f"{CURP}|{rng.choice(generator.curps)}"

    def prefix() -> str:
        return rng.choice(FAMILIES + GIVEN)[:3].lower()

    def person() -> str:
        return f"family={rng.choice(FAMILIES)}&given={rng.choice(GIVEN)}"

    def code() -> str:
        return str(rng.choice(VITALS)[0])

    def above() -> str:
        """A code and a threshold within its values' range (search.html#composite: both in one Observation)."""
        code, _, _, low, high = rng.choice(VITALS)
        return f"{LOINC}|{code}${'gt'}{round(rng.uniform(low, high))}"

    def reason() -> str:
        """A reason for a visit, as typed: without accents or in capitals at times (folded either way)."""
        words = rng.choice(REASONS)
        return fold(words) if rng.random() < 0.3 else words

    return {
        "token: Observation?code (1 of 10 codes)": lambda: f"Observation?code={LOINC}|{code()}&{page}",
        "token: Patient?identifier (CURP)": lambda: f"Patient?identifier={curp()}&{page}",
        "string: Patient?name (3-letter prefix)": lambda: f"Patient?name={prefix()}&{page}",
        "string: Patient?family&given": lambda: f"Patient?{person()}&{page}",
        "date: Observation?date (one week)": lambda: f"Observation?{week()}&{page}",
        "date+token: Observation?code&date (week)": lambda: f"Observation?code={code()}&{week()}&{page}",
        "chain: Observation?patient.identifier": lambda: f"Observation?patient.identifier={curp()}&{page}",
        "chain: Encounter?patient.name&date": lambda: f"Encounter?patient.name={rng.choice(FAMILIES)}&date=ge2024-01-01&{page}",  # noqa: E501
        "composite: Observation?code-value-quantity": lambda: f"Observation?code-value-quantity={above()}&{page}",
        "_text: Encounter?_text (Spanish narrative)": lambda: f"Encounter?_text={reason()}&{page}",
        ":in: Observation?code:in (ValueSet url)": lambda: f"Observation?code:in={VALUE_SET_BASE}{rng.choice(list(VALUE_SETS))}&{page}",  # noqa: E501
    }  # fmt: skip


def measure(
    url: str, schema: str, generator: Generator, count: int, warmup: int, only: list[str] | None = None
) -> list[dict[str, Any]]:
    from fastapi.testclient import TestClient

    from ehr_core.settings import Settings
    from fhir_api.app import create_app
    from fhir_api.interactions.search import search_bundle
    from fhir_api.services import Services

    settings = Settings(database_url=url, postgres_schema=schema, postgres_pool_size=4, auth="disabled-for-development")
    services = Services.open(settings, follow=False)
    rng = random.Random(7)
    figures = []
    base = "http://bench/fhir"
    try:
        with TestClient(create_app(services=services)) as client:
            for name, make in queries(generator, rng).items():
                if only and not any(word in name for word in only):
                    continue
                engine: list[float] = []
                http: list[float] = []
                hits: list[int] = []
                for number in range(warmup + count):
                    resource_type, pairs, url = _request(make())
                    tick = time.perf_counter()
                    bundle = search_bundle(services, resource_type, pairs, base)
                    orjson.dumps(bundle)
                    elapsed = time.perf_counter() - tick
                    tick = time.perf_counter()
                    response = client.get(url)
                    http_elapsed = time.perf_counter() - tick
                    assert response.status_code == 200, response.text
                    if number >= warmup:
                        engine.append(elapsed)
                        http.append(http_elapsed)
                        hits.append(len(bundle["entry"]))
                figures.append(_figure(name, engine, http, hits))
                # How many resources one such query finds in all (a non-empty answer shows the data fits it).
                resource_type, pairs, _ = _request(make().replace("_total=none", "_total=accurate"))
                figures[-1]["sample_total"] = search_bundle(services, resource_type, pairs, base).get("total")
                print(_line(figures[-1]), file=sys.stderr, flush=True)
    finally:
        services.close()
    return figures


class RecordingTx:
    """A :class:`projections.db.Tx` that remembers the statements a search sends (for ``--explain``, and for
    the tests that check a page query's plan)."""

    def __init__(self, tx: Any, seen: list[tuple[str, list[Any]]]) -> None:
        self._tx, self._seen = tx, seen
        self.dialect = tx.dialect

    def execute(self, statement: str, params: Any = ()) -> RecordingTx:
        self._seen.append((statement, list(params)))
        self._tx.execute(statement, params)
        return self

    def unprepared(self) -> RecordingTx:
        return RecordingTx(self._tx.unprepared(), self._seen)

    def reusing_plans(self) -> RecordingTx:
        return RecordingTx(self._tx.reusing_plans(), self._seen)

    def fetchone(self) -> Any:
        return self._tx.fetchone()

    def fetchall(self) -> Any:
        return self._tx.fetchall()


def explain(url: str, schema: str, generator: Generator, only: list[str], count: int) -> list[dict[str, Any]]:
    """Per figure, the page query (the last statement a search sends, no ``_include`` here) of ``count`` requests
    under ``EXPLAIN (ANALYZE, BUFFERS)``: the first one's plan is printed, and the buffers every one touched
    are summed up (what other sessions' load does not change, unlike a time)."""
    from ehr_core.settings import Settings
    from fhir_api.services import Services
    from projections.search.engine import run_search
    from projections.search.query import parse_search

    settings = Settings(database_url=url, postgres_schema=schema, postgres_pool_size=1, auth="disabled-for-development")
    services = Services.open(settings, follow=False)
    rng = random.Random(11)
    figures = []
    try:
        with psycopg.connect(conninfo(url), options=f"-c search_path={schema} -c jit=off") as connection:
            for name, make in queries(generator, rng).items():
                if only and not any(word in name for word in only):
                    continue
                buffers: list[float] = []
                times: list[float] = []
                for number in range(count):
                    resource_type, pairs, _ = _request(make())
                    seen: list[tuple[str, list[Any]]] = []
                    with services.views.read() as tx:
                        request = parse_search(resource_type, pairs)
                        run_search(RecordingTx(tx, seen), "postgres", request, None, 20)  # type: ignore[arg-type]
                    statement, params = seen[-1]  # the page's own query comes last (no _include here)
                    text = statement.replace("%", "%%").replace("?", "%s")
                    if number == 0:
                        print(f"\n== {name}: {resource_type}?{'&'.join(f'{k}={v}' for k, v in pairs)}")
                        print(f"{statement}\n{params}")
                        plan = connection.execute(f"EXPLAIN (ANALYZE, BUFFERS) {text}", params).fetchall()  # type: ignore[arg-type]
                        print("\n".join(str(row[0]) for row in plan), flush=True)
                    found = connection.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {text}", params).fetchone()  # type: ignore[arg-type]
                    document = found[0] if found and not isinstance(found[0], str) else orjson.loads(found[0])  # type: ignore[index]
                    top = document[0]["Plan"]
                    buffers.append(int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"]))
                    times.append(float(document[0]["Execution Time"]))
                    connection.rollback()
                buffers.sort()
                times.sort()
                figures.append(
                    {
                        "query": name,
                        "buffers_median": statistics.median(buffers),
                        "buffers_p99": percentile(buffers, 0.99),
                        "buffers_max": buffers[-1],
                        "execution_median_ms": statistics.median(times),
                        "execution_p99_ms": percentile(times, 0.99),
                    }
                )
    finally:
        services.close()
    print()
    for figure in figures:
        print(
            f"{figure['query']:<44} buffers median {figure['buffers_median']:8,.0f}  p99 {figure['buffers_p99']:8,.0f}"
            f"  max {figure['buffers_max']:8,}   execution median {figure['execution_median_ms']:6.1f} ms"
            f"  p99 {figure['execution_p99_ms']:6.1f} ms"
        )
    return figures


def _request(query: str) -> tuple[str, list[tuple[str, str]], str]:
    """``Type?a=b&...`` as written → its type, its (name, value) pairs and the URL path that sends it."""
    resource_type, _, text = query.partition("?")
    pairs = [(name, value) for name, _, value in (part.partition("=") for part in text.split("&"))]
    encoded = "&".join(f"{name}={quote(value, safe='|$:/,')}" for name, value in pairs)
    return resource_type, pairs, f"/fhir/{resource_type}?{encoded}"


def _no_auth(settings_class: Any) -> dict[str, str]:
    """In-process requests carry no bearer token: turn authentication off where the server has it."""
    return {"auth": "disabled-for-development"} if "auth" in settings_class.model_fields else {}


def _figure(name: str, engine: list[float], http: list[float], hits: list[int]) -> dict[str, Any]:
    engine.sort()
    http.sort()
    return {
        "query": name,
        "n": len(engine),
        "search_median_ms": statistics.median(engine) * 1000,
        "search_p99_ms": percentile(engine, 0.99) * 1000,
        "http_median_ms": statistics.median(http) * 1000,
        "http_p99_ms": percentile(http, 0.99) * 1000,
        "mean_entries": statistics.mean(hits) if hits else 0,
        "empty_pages": sum(1 for hit in hits if hit == 0),
    }


def _line(f: dict[str, Any]) -> str:
    return (
        f"{f['query']:<44} search median {f['search_median_ms']:6.1f} ms  p99 {f['search_p99_ms']:6.1f} ms   "
        f"http median {f['http_median_ms']:6.1f} ms  p99 {f['http_p99_ms']:6.1f} ms   entries {f['mean_entries']:.1f}"
        f" (empty pages {f.get('empty_pages', 0)}, one query's total {f.get('sample_total', '-')})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=1_000_000, help="resources to generate (default 1,000,000)")
    parser.add_argument("--queries", type=int, default=200, help="measured queries per figure (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured queries per figure first")
    parser.add_argument("--postgres-url", default=DEFAULT_URL)
    parser.add_argument(
        "--build-cost",
        action="store_true",
        help="also the index build cost per resource, today's code beside the baseline's (bench/search_build.py)",
    )
    parser.add_argument(
        "--keep-schema",
        action="store_true",
        help="leave the loaded schema in place and print its name (drop it by hand)",
    )
    parser.add_argument(
        "--schema", help="measure a schema loaded before (--keep-schema) instead of loading one; N is its resources"
    )
    parser.add_argument(
        "--only", action="append", default=[], help="only the figures whose name contains this (repeatable)"
    )
    parser.add_argument(
        "--explain", action="store_true", help="print EXPLAIN (ANALYZE, BUFFERS) of one page query per figure first"
    )
    parser.add_argument("--explain-only", action="store_true", help="with --explain: plans and buffers, no timing")
    args = parser.parse_args(argv)
    problem = available(args.postgres_url)
    if problem is not None:
        print(f"PostgreSQL at {args.postgres_url} is not answering: {problem}", file=sys.stderr)
        return 1
    if args.schema:
        generator = _loaded(args.postgres_url, args.schema)
        figures = _measure_all(args, args.schema, generator)
    else:
        generator = Generator(args.resources)
        with fresh_schema(args.postgres_url, "bench_search", keep=args.keep_schema) as schema:
            _load_and_report(args.postgres_url, schema, generator)
            if args.keep_schema:
                print(f"kept schema {schema} (DROP SCHEMA {schema} CASCADE when done)", flush=True)
            figures = _measure_all(args, schema, generator)
    print()
    for figure in figures:
        print(_line(figure))
    if args.build_cost:
        from bench import search_build

        print()
        print(search_build.report(search_build.measure(3000, search_build.BASELINE, conninfo(args.postgres_url))))
    return 0


def _loaded(url: str, schema: str) -> Generator:
    """The generator of a schema loaded before: its size read back, its values (CURPs...) generated again
    (the generator is deterministic), and the schema brought to today's tables and indexes."""
    from ehr_core.settings import Settings
    from fhir_api.services import Services

    with psycopg.connect(conninfo(url), autocommit=True, options=f"-c search_path={schema}") as connection:
        row = connection.execute("SELECT COUNT(*) FROM search_ids").fetchone()
    generator = Generator(int(row[0]) if row else 0)
    for _ in generator.resources():
        pass
    Services.open(Settings(database_url=url, postgres_schema=schema), follow=False).close()
    print(f"schema {schema}: {generator.total:,} resources", file=sys.stderr)
    return generator


def _load_and_report(url: str, schema: str, generator: Generator) -> None:
    from ehr_core.settings import Settings
    from fhir_api.services import Services

    settings = Settings(database_url=url, postgres_schema=schema)
    Services.open(settings, follow=False).close()  # every table, as the server creates them
    print(f"generating and loading {generator.total:,} resources into schema {schema}", file=sys.stderr)
    timings = load(url, schema, generator)
    table_sizes = sizes(url, schema)
    index_bytes = sum(size for name, size in table_sizes.items() if name.startswith("search_"))
    loaded = int(timings["resources"])
    print(
        f"\nresources: {loaded:,}  generation+load: {timings['total']:.0f} s "
        f"(extract {timings['extract_only']:.0f} s, extract+COPY {timings['extract_and_copy']:.0f} s, "
        f"indexes {timings['create_indexes']:.0f} s, vacuum analyze {timings['vacuum_analyze']:.0f} s)"
    )
    print(
        f"search index on disk: {index_bytes / 2**20:,.0f} MiB = {index_bytes / loaded:,.0f} bytes per resource"
        f" (resources table: {table_sizes.get('resources', 0) / 2**20:,.0f} MiB)"
    )
    for name, size in sorted(table_sizes.items(), key=lambda item: -item[1]):
        print(f"  {name:<22} {size / 2**20:10,.1f} MiB")


def _measure_all(args: argparse.Namespace, schema: str, generator: Generator) -> list[dict[str, Any]]:
    if args.explain:
        explain(args.postgres_url, schema, generator, args.only, args.queries)
        if args.explain_only:
            return []
    return measure(args.postgres_url, schema, generator, args.queries, args.warmup, args.only)


if __name__ == "__main__":
    raise SystemExit(main())
