"""Read latencies at a size that fits the suite: ``$everything`` and search.

Both reuse their standalone benchmarks' loading and queries (``bench/everything.py``, ``bench/search.py``)
and time requests through the FastAPI app in process, as those do. Baselines from the same run:

- ``$everything``: the operation alone (no HTTP, no audit middleware), and the "no event sourcing"
  alternative: the same 1,000 resources in a plain JSONB table with a GIN index, fetched by three
  ``@>`` containment queries on the subject (the three linked records' ids known in advance: a plain
  table has no master patient index) and the three Patients by id;
- search: each query's ``search_bundle`` alone (parse, SQL, Bundle, JSON; no HTTP).

The 1-million-resource search run stays ``python -m bench.search``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql

from bench.pg import conninfo, fresh_schema
from bench.stats import percentile

__all__ = ["Latency", "measure_everything", "measure_search"]


@dataclass(frozen=True)
class Latency:
    name: str
    n: int
    median_ms: float
    p99_ms: float

    @classmethod
    def of(cls, name: str, times_ms: list[float]) -> Latency:
        ordered = sorted(times_ms)
        return cls(name, len(ordered), statistics.median(ordered), percentile(ordered, 0.99))


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _jsonb_everything(url: str, schema: str, bundle: dict[str, Any], patients: list[str], requests: int) -> list[float]:
    table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier("fhir_documents"))
    with psycopg.connect(conninfo(url), autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE TABLE {} (id text PRIMARY KEY, resource jsonb NOT NULL)").format(table))
        connection.execute(sql.SQL("CREATE INDEX ON {} USING gin (resource)").format(table))
        with connection.cursor() as cursor:
            cursor.executemany(
                sql.SQL("INSERT INTO {} VALUES (%s, %s::jsonb)").format(table),
                [
                    (
                        f"{entry['resource']['resourceType']}/{entry['resource']['id']}",
                        orjson.dumps(entry["resource"]).decode(),
                    )
                    for entry in bundle["entry"]
                ],
            )
        connection.execute(sql.SQL("ANALYZE {}").format(table))
        by_subject = sql.SQL("SELECT resource::text FROM {} WHERE resource @> %s::jsonb").format(table)
        union = sql.SQL(" UNION ALL ").join([by_subject] * len(patients))
        query = sql.SQL("{} UNION ALL SELECT resource::text FROM {} WHERE id = ANY(%s)").format(union, table)
        parameters = [orjson.dumps({"subject": {"reference": f"Patient/{p}"}}).decode() for p in patients]
        arguments = (*parameters, [f"Patient/{p}" for p in patients])
        expected = len(bundle["entry"])
        times = []
        for number in range(5 + requests):
            started = time.perf_counter()
            rows = connection.execute(query, arguments, prepare=True).fetchall()
            if number >= 5:
                times.append((time.perf_counter() - started) * 1000)
        if len(rows) != expected:
            raise RuntimeError(f"JSONB $everything found {len(rows)} resources, not {expected}")
    return times


def measure_everything(url: str, requests: int, resources: int = 1000) -> list[Latency]:
    """[HTTP $everything ?_count=1000, operation alone, JSONB table] on a fresh schema (dropped after)."""
    from fastapi.testclient import TestClient

    from bench.everything import _load, _time
    from ehr_core.settings import Settings
    from fhir_api.app import create_app
    from fhir_api.operations.everything import everything
    from fhir_api.services import Services

    with (
        tempfile.TemporaryDirectory(prefix="ehr-bench-everything-") as directory,
        fresh_schema(url, "bench_everything") as schema,
    ):
        settings = Settings(
            database_url=url, postgres_schema=schema, auth="disabled-for-development", data_dir=Path(directory)
        )
        services = Services.open(settings, follow=False)
        try:
            started = time.perf_counter()
            patient = _load(services, resources)
            _say(
                f"$everything: {resources} resources (3 linked records) loaded in {time.perf_counter() - started:.0f} s"
            )
            with TestClient(create_app(services=services)) as client:
                url_path = f"/fhir/Patient/{patient}/$everything?_count={resources}"
                http = _time(client, url_path, requests, resources)
                bundle = client.get(url_path).json()
            alone = []
            for _ in range(requests):
                started = time.perf_counter()
                everything(services, "http://bench/fhir", patient, None, None, resources, 0)
                alone.append((time.perf_counter() - started) * 1000)
        finally:
            services.close()
        patients = sorted(
            {entry["resource"]["id"] for entry in bundle["entry"] if entry["resource"]["resourceType"] == "Patient"}
        )
        plain = _jsonb_everything(url, schema, bundle, patients, requests)
    return [
        Latency.of(f"$everything ?_count={resources} (HTTP in process)", http),
        Latency.of("the operation alone (no HTTP)", alone),
        Latency.of("jsonb table: 3 x @> subject + ids", plain),
    ]


def measure_search(url: str, resources: int, requests: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(load timings and index size, one figure per query) at ``resources`` on a fresh schema (dropped after)."""
    from bench.search import Generator, load, measure, sizes
    from ehr_core.settings import Settings
    from fhir_api.services import Services

    generator = Generator(resources)
    with (
        tempfile.TemporaryDirectory(prefix="ehr-bench-search-") as directory,
        fresh_schema(url, "bench_search") as schema,
    ):
        settings = Settings(database_url=url, postgres_schema=schema, data_dir=Path(directory))
        Services.open(settings, follow=False).close()  # every table, as the server creates them
        timings = load(url, schema, generator)
        table_sizes = sizes(url, schema)
        index_bytes = sum(size for name, size in table_sizes.items() if name.startswith("search_"))
        timings["index_bytes_per_resource"] = index_bytes / max(1, int(timings["resources"]))
        _say(
            f"search: {int(timings['resources']):,} resources generated and loaded in {timings['total']:.0f} s, "
            f"index {timings['index_bytes_per_resource']:,.0f} bytes per resource"
        )
        # bench.search's measure() builds its own Settings: point its data directory (keys) here too,
        # never at the project's ./ehr-data.
        previous = os.environ.get("EHR_DATA_DIR")
        os.environ["EHR_DATA_DIR"] = directory
        try:
            figures = measure(url, schema, generator, requests, max(5, requests // 10))
        finally:
            if previous is None:
                os.environ.pop("EHR_DATA_DIR", None)
            else:
                os.environ["EHR_DATA_DIR"] = previous
    return timings, figures
