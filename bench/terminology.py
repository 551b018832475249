"""``python -m bench.terminology``: how long ``ValueSet/$expand`` of a 1,000-concept value set takes.

A CodeSystem of 1,000 concepts (ten chapters of 99 codes under them, so ``is-a`` walks a hierarchy) and two
ValueSets over it are stored through the API (in-process, no network), then each expansion is asked
``--requests`` times: the whole system, the ``is-a`` filter of every chapter (all 1,000 codes), and a
page of 50 with a text filter. Prints one line per figure (p50 and max, ms) for SQLite and, when it
answers, PostgreSQL. A benchmark, not a test: nothing asserts on time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from bench.pg import available, fresh_schema
from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.services import Services

SYSTEM = "urn:ehr-core:bench:cs:thousand"
FHIR = {"Content-Type": "application/fhir+json"}


def code_system() -> dict[str, Any]:
    chapters = []
    for chapter in range(10):
        children = [
            {"code": f"C{chapter}.{n:02d}", "display": f"Concepto {chapter}.{n:02d} de prueba"} for n in range(1, 100)
        ]
        chapters.append({"code": f"C{chapter}", "display": f"Capítulo {chapter}", "concept": children})
    return {"resourceType": "CodeSystem", "id": "thousand", "url": SYSTEM, "status": "active",
            "content": "complete", "hierarchyMeaning": "is-a", "concept": chapters}  # fmt: skip


def value_sets() -> list[dict[str, Any]]:
    whole = {"resourceType": "ValueSet", "id": "thousand-all", "url": SYSTEM + "-all", "status": "active",
             "compose": {"include": [{"system": SYSTEM}]}}  # fmt: skip
    is_a = {"resourceType": "ValueSet", "id": "thousand-is-a", "url": SYSTEM + "-is-a", "status": "active",
            "compose": {"include": [{"system": SYSTEM, "filter": [
                {"property": "concept", "op": "is-a", "value": f"C{chapter}"}]} for chapter in range(10)]}}  # fmt: skip
    return [whole, is_a]


@contextmanager
def _client(settings: Settings) -> Iterator[TestClient]:
    services = Services.open(settings)
    try:
        with TestClient(create_app(services=services)) as client:
            yield client
    finally:
        services.close()


def _figure(client: TestClient, name: str, params: dict[str, str], requests: int, total: int | None) -> str:
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get("/fhir/ValueSet/$expand", params=params)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
        assert total is None or response.json()["expansion"]["total"] == total, response.text[:300]
    return f"{name:<34} {statistics.median(timings):8.1f} ms p50 {max(timings):8.1f} ms max ({requests} requests)"


def run(settings: Settings, backend: str, requests: int) -> None:
    with _client(settings) as client:
        for resource in (code_system(), *value_sets()):
            response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers=FHIR)
            assert response.status_code in (200, 201), response.text
        for line in (
            _figure(client, "whole system (1,000 codes)", {"url": SYSTEM + "-all"}, requests, 1000),
            _figure(client, "is-a of 10 chapters (1,000 codes)", {"url": SYSTEM + "-is-a"}, requests, 1000),
            _figure(client, "filter '5 prueba', page of 50", {"url": SYSTEM + "-all", "filter": "5 prueba",
                                                               "count": "50"}, requests, None),
        ):  # fmt: skip
            print(f"{backend:<9} {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.terminology", description=__doc__)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        run(
            Settings(data_dir=Path(directory) / "ehr-data", auth="disabled-for-development"),
            "sqlite",
            arguments.requests,
        )
    down = available(arguments.postgres_url)
    if down is not None:
        print(f"postgres  not measured: {down}", file=sys.stderr)
        return 0
    with fresh_schema(arguments.postgres_url, "bench_terminology") as schema, tempfile.TemporaryDirectory() as data:
        settings = Settings(database_url=arguments.postgres_url, postgres_schema=schema, postgres_pool_size=2,
                            data_dir=Path(data) / "ehr-data", auth="disabled-for-development")  # fmt: skip
        run(settings, "postgres", arguments.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
