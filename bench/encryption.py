"""The cost of encryption at rest: the same runs with the encrypting mapper and without it.

    .venv/bin/python -m bench.encryption [--backends sqlite,postgres] [--files 8] [--rounds 3] [--reads 2000]

Per backend and round, two fresh stores load the same Synthea files through ``ehr_core.importing.Importer``
(validated, stored, projected: the clock stops when the projections have caught up), one with the
project's :class:`~ehr_core.encryption.EncryptingMapper` (per-patient AES-256-GCM data keys) and one with the
library's plain mapper (same orjson transcoder). Then, on each store:

- **read**: ``GET /fhir/{type}/{id}`` through the ASGI app in-process (TestClient), random ids: reads are
  served from the projections' stored bytes, so encryption should cost nothing here;
- **load**: ``RecordApplication.stream()`` of random resources (what every update/patch/delete does first:
  one event read from the log and decrypted);
- **rebuild**: the resource projector reset and caught up from the whole log (every event decrypted).

And, less exposed to machine noise, the **mapper alone**: the loaded resources' events encoded+sealed and
opened+decoded in a loop, best of 5, encrypted vs plain (the floor of what encryption can cost).

Figures are medians over rounds, reported as ratios encrypted / plain (throughput: < 1 means slower).
Runs alternate plain/encrypted to spread machine noise. Results also go to bench/results/encryption-*.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

from bench.pg import DEFAULT_URL, available, fresh_schema

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "synthea" / "smart-r4-2019"
RESULTS = Path(__file__).resolve().parent / "results"


@contextmanager
def _plain_mapper(enabled: bool) -> Iterator[None]:
    """Swap the encrypting mapper for the library's plain one (same transcoder) for one run."""
    if not enabled:
        yield
        return
    from eventsourcing.persistence import Mapper

    from ehr_core.application import RecordApplication

    def plain(self: Any) -> Any:
        return Mapper(self.construct_transcoder())

    with mock.patch.object(RecordApplication, "construct_mapper", plain):
        yield


def _one_run(settings: Any, files: list[Path], reads: int, plain: bool) -> dict[str, float]:
    from fastapi.testclient import TestClient

    from ehr_core.context import WriteContext
    from ehr_core.importing import Importer
    from fhir_api.app import create_app
    from fhir_api.resolver import ViewResolver
    from fhir_api.services import Services

    with _plain_mapper(plain):
        services = Services.open(settings, follow=False)
        try:
            importer = Importer(services.application, ViewResolver(services), services.projector.wait_until,
                                WriteContext(institution="IMSS", user="bench"))  # fmt: skip
            started = time.perf_counter()
            report = importer.run(files)
            services.projector.catch_up()
            imported = time.perf_counter() - started
            with services.views.read() as tx:
                ids = [(str(r[0]), str(r[1])) for r in tx.execute(
                    "SELECT resource_type, resource_id FROM resources WHERE body IS NOT NULL").fetchall()]  # fmt: skip
            rng = random.Random(11)
            sample = [rng.choice(ids) for _ in range(reads)]
            with TestClient(create_app(services=services)) as client:
                for t, i in sample[:50]:  # warm-up
                    client.get(f"/fhir/{t}/{i}")
                started = time.perf_counter()
                for t, i in sample:
                    assert client.get(f"/fhir/{t}/{i}").status_code == 200
                read = time.perf_counter() - started
            started = time.perf_counter()
            for t, i in sample:
                assert services.application.stream(t, i) is not None
            load = time.perf_counter() - started
            events = services.application.recorder.max_notification_id() or 0
            services.projector.reset()
            started = time.perf_counter()
            services.projector.catch_up()
            rebuild = time.perf_counter() - started
        finally:
            services.close()
    return {
        "resources": float(report.stored),
        "events": float(events),
        "import_per_s": report.stored / imported,
        "read_per_s": reads / read,
        "load_per_s": reads / load,
        "rebuild_events_per_s": events / rebuild,
    }


def mapper_figures(settings: Any, resources: list[dict[str, Any]], repeat: int = 5) -> dict[str, float]:
    """Events/s through the mapper alone (encode+seal, open+decode), encrypted and plain, interleaved."""
    from eventsourcing.persistence import Mapper

    from ehr_core.application import RecordApplication, content_hash
    from ehr_core.compartment import patient_compartment
    from ehr_core.resources import json as fhir_json
    from ehr_core.streams import ResourceStream

    application = RecordApplication(settings)
    try:
        encrypted = application.mapper
        plain: Mapper[Any] = Mapper(application.construct_transcoder())
        events: list[Any] = []
        for r in resources:
            body = fhir_json.dumps(r).decode()
            stream = ResourceStream.start(r["resourceType"], r.get("id", "x"), body, content_hash(r),
                                          patient_compartment(r), {"institution": "IMSS"}, _now())  # fmt: skip
            events.extend(stream.collect_events())
        best: dict[str, float] = {}
        for _ in range(repeat):
            for name, mapper in (("plain", plain), ("encrypted", encrypted)):
                started = time.perf_counter()
                stored = [mapper.to_stored_event(e) for e in events]
                write = time.perf_counter() - started
                started = time.perf_counter()
                for item in stored:
                    mapper.to_domain_event(item)
                read = time.perf_counter() - started
                best[f"{name}_write_per_s"] = max(best.get(f"{name}_write_per_s", 0.0), len(events) / write)
                best[f"{name}_read_per_s"] = max(best.get(f"{name}_read_per_s", 0.0), len(events) / read)
        best["events"] = float(len(events))
        best["mean_state_bytes"] = sum(len(s.state) for s in stored) / len(stored)
        return best
    finally:
        application.close()


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _settings(backend: str, directory: Path, schema: str | None, url: str) -> Any:
    from ehr_core.settings import Settings

    dev = "disabled-for-development"
    if backend == "postgres":
        return Settings(database_url=url, postgres_schema=schema, postgres_pool_size=4, data_dir=directory, auth=dev)
    return Settings(data_dir=directory, auth=dev)


def run(backends: list[str], files: int, rounds: int, reads: int, url: str) -> dict[str, Any]:
    paths = sorted(CORPUS.glob("*.json"))[:files]
    results: dict[str, Any] = {"files": files, "rounds": rounds, "reads": reads, "backends": {}}
    # Unmeasured warm-up: the first import in a process builds the R4B model classes (seconds, once).
    with tempfile.TemporaryDirectory(prefix="bench-enc-warm-") as tmp:
        _one_run(_settings("sqlite", Path(tmp), None, url), paths[:1], 50, plain=False)
    with tempfile.TemporaryDirectory(prefix="bench-enc-mapper-") as tmp:
        import orjson

        bundle = [e["resource"] for p in paths for e in orjson.loads(p.read_bytes())["entry"]]
        figures = mapper_figures(_settings("sqlite", Path(tmp), None, url), bundle)
    results["mapper"] = figures | {
        "ratio_write": figures["encrypted_write_per_s"] / figures["plain_write_per_s"],
        "ratio_read": figures["encrypted_read_per_s"] / figures["plain_read_per_s"],
    }
    print("mapper alone: " + ", ".join(f"{k}={v:,.2f}" for k, v in results["mapper"].items()), flush=True)
    for backend in backends:
        problem = available(url) if backend == "postgres" else None
        if problem is not None:
            print(f"postgres at {url} not available ({problem}): skipped")
            continue
        runs: dict[str, list[dict[str, float]]] = {"plain": [], "encrypted": []}
        for round_ in range(rounds):
            order = ["plain", "encrypted"] if round_ % 2 == 0 else ["encrypted", "plain"]
            for kind in order:
                with tempfile.TemporaryDirectory(prefix="bench-enc-") as tmp:
                    schema_cm = fresh_schema(url, "bench_enc") if backend == "postgres" else nullcontext(None)
                    with schema_cm as schema:
                        settings = _settings(backend, Path(tmp), schema, url)
                        figures = _one_run(settings, paths, reads, plain=kind == "plain")
                runs[kind].append(figures)
                shown = ", ".join(f"{k}={v:,.0f}" for k, v in figures.items())
                print(f"{backend} round {round_ + 1} {kind:9}: {shown}", flush=True)
        medians = {kind: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for kind, rs in runs.items()}
        ratios = {
            key: medians["encrypted"][key] / medians["plain"][key]
            for key in ("import_per_s", "read_per_s", "load_per_s", "rebuild_events_per_s")
        }
        results["backends"][backend] = {"median": medians, "ratio_encrypted_over_plain": ratios, "runs": runs}
        print(f"{backend}: encrypted/plain throughput " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.encryption", description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--files", type=int, default=8, help="Synthea patient bundles to import")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--postgres-url", default=DEFAULT_URL)
    args = parser.parse_args(argv)
    results = run(args.backends.split(","), args.files, args.rounds, args.reads, args.postgres_url)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"encryption-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
