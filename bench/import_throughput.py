"""Import throughput for the Synthea corpus, beside raw PostgreSQL COPY of the same bytes.

    python -m bench.import_throughput [--backends sqlite,postgres] [--rounds N]

What is measured is what `ehr import` does, warm: validated (fhir.resources R4B), stored (eventsourcing),
projected (current resources, history, search index...) and so searchable — the clock stops only when
the projections have caught up. The importer and a projector run in two processes, as the CLI runs them.
A first, unmeasured pass into a throwaway store builds the R4B model classes (seconds, once per process).

The baseline is the ceiling: the same resource bytes COPYed into a bare two-column table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.pg import DEFAULT_URL, available, conninfo, fresh_schema

# As the tests find it: ``$EHR_CORPUS``, else ``shared/corpus`` beside the repository (a git worktree elsewhere
# sets the variable).
CORPUS = Path(os.environ.get("EHR_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus")) / "synthea"


def _settings(backend: str, directory: Path, schema: str | None, url: str) -> Any:
    from ehr_core.settings import Settings

    if backend == "postgres":
        return Settings(database_url=url, postgres_schema=schema, data_dir=directory)
    return Settings(data_dir=directory)


def _import(settings: Any, files: list[Path]) -> tuple[int, float]:
    """Resources stored and seconds until they are all projected."""
    from ehr_core.importing import Importer
    from fhir_api.cli.import_ import project_until_stopped
    from fhir_api.resolver import ViewResolver
    from fhir_api.services import Services

    services = Services.open(settings, follow=False)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    projector = context.Process(target=project_until_stopped, args=(stop, settings))
    projector.start()
    time.sleep(3.0)  # let the projector process start before the clock does
    try:
        importer = Importer(services.application, ViewResolver(services), lambda _: None)
        started = time.perf_counter()
        report = importer.run(files)
        stop.set()
        projector.join()
        seconds = time.perf_counter() - started
        assert not report.rejected, report.rejected[:3]
        assert services.projector.lag() == 0
        return report.stored, seconds
    finally:
        stop.set()
        projector.join()
        services.close()


def _resource_bytes(files: list[Path]) -> list[bytes]:
    out = []
    for path in files:
        for entry in json.loads(path.read_bytes())["entry"]:
            out.append(json.dumps(entry["resource"]).encode())
    return out


def _copy(url: str, rows: list[bytes]) -> float:
    with fresh_schema(url, "bench_copy") as schema, psycopg.connect(conninfo(url)) as connection:
        connection.execute(f'CREATE TABLE "{schema}".raw (id bigserial PRIMARY KEY, body bytea)')
        connection.commit()
        started = time.perf_counter()
        with connection.cursor() as cursor, cursor.copy(f'COPY "{schema}".raw (body) FROM STDIN') as copy:
            for row in rows:
                copy.write_row((row,))
        connection.commit()
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.import_throughput")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres-url", default=DEFAULT_URL)
    parser.add_argument("--rounds", type=int, default=2, help="measured imports per backend (best is kept)")
    args = parser.parse_args(argv)
    from ehr_core.importing import Importer

    files = Importer.sources([CORPUS / "smart-r4-2019", CORPUS / "fhir-data-pipes-2021"])
    rows: list[tuple[str, str, float, str]] = []
    for backend in args.backends.split(","):
        if backend == "postgres" and available(args.postgres_url) is not None:
            print(f"skipping postgres: {available(args.postgres_url)}", file=sys.stderr)
            continue
        best = 0.0
        for round_number in range(args.rounds + 1):
            with tempfile.TemporaryDirectory() as directory:
                if backend == "postgres":
                    with fresh_schema(args.postgres_url, "bench_import") as schema:
                        stored, seconds = _import(_settings(backend, Path(directory), schema, args.postgres_url), files)
                else:
                    stored, seconds = _import(_settings(backend, Path(directory), None, args.postgres_url), files)
            rate = stored / seconds
            label = "warm-up" if round_number == 0 else f"round {round_number}"
            print(
                f"[bench] {backend} import {label}: {stored} resources in {seconds:.2f} s = {rate:,.0f}/s",
                file=sys.stderr,
            )
            if round_number:
                best = max(best, rate)
        rows.append((backend, "ehr import (validated, stored, projected)", best, "resources/s"))
    if "postgres" in args.backends and available(args.postgres_url) is None:
        payload = _resource_bytes([f for f in files if f.suffix == ".json"])
        seconds = _copy(args.postgres_url, payload)
        rows.append(("postgres", "raw COPY of the same resource bytes", len(payload) / seconds, "rows/s"))
    copy_rate = next((rate for b, name, rate, _ in rows if name.startswith("raw COPY")), None)
    print(f"{'backend':<9} {'figure':<45} {'rate':>12}  {'unit':<12} {'÷ COPY':>8}")
    for backend, name, rate, unit in rows:
        ratio = f"{rate / copy_rate:.3f}" if copy_rate else "-"
        print(f"{backend:<9} {name:<45} {rate:>12,.0f}  {unit:<12} {ratio:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
