"""``$everything`` latency for one person with 1,000 resources across three institutions.

    .venv/bin/python -m bench.everything [--postgres-url URL] [--requests N] [--resources N]

On a fresh PostgreSQL schema (dropped afterwards): three Patient records of one person (IMSS, ISSSTE,
IMSS-Bienestar, same CURP, so the master patient index links them), 1,000 resources in their compartments
written by the three institutions' units, loaded through the application. Then ``GET
/fhir/Patient/{id}/$everything?_count=1000`` (the whole unified record in one page) and the default first
page (``_count=100``) through the FastAPI app in process (routing, audit middleware, JSON), N times each;
prints median and p99. A benchmark, not a test: nothing asserts on time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from bench.pg import DEFAULT_URL, available, fresh_schema

INSTITUTIONS = [("IMSS", "DFIMS000020"), ("ISSSTE", "DFIST000312"), ("IMSS-BIENESTAR", "OCIMB000123")]
CURP = "BAUM690216HMSLRG18"


def _load(services: object, resources: int) -> str:
    from ehr_core.context import WriteContext
    from fhir_api.services import Services

    assert isinstance(services, Services)
    application = services.application
    patients = []
    for n, (institution, unit) in enumerate(INSTITUTIONS):
        pid = f"bench-{n}"
        patient = {
            "resourceType": "Patient",
            "id": pid,
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.629", "value": CURP}],
            "name": [{"family": "Bautista Uribe", "given": ["Miguel"]}],
            "gender": "male",
            "birthDate": "1969-02-16",
        }
        application.update("Patient", pid, patient, WriteContext(institution=institution, unit=unit))
        patients.append(pid)
    batch = []
    for i in range(resources - len(patients)):
        n = i % 3
        institution, unit = INSTITUTIONS[n]
        subject = {"reference": f"Patient/{patients[n]}"}
        resource: dict[str, object]
        if i % 5 == 0:
            resource = {
                "resourceType": "Encounter",
                "id": f"e{i}",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": subject,
            }
        elif i % 5 == 1:
            resource = {
                "resourceType": "Condition",
                "id": f"c{i}",
                "subject": subject,
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"}]},
            }
        else:
            resource = {
                "resourceType": "Observation",
                "id": f"o{i}",
                "status": "final",
                "subject": subject,
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "effectiveDateTime": "2024-03-01T10:00:00-06:00",
                "valueQuantity": {
                    "value": 120 + i % 30,
                    "unit": "mm[Hg]",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            }
        context = WriteContext(institution=institution, unit=unit)
        batch.append(application.prepare_update(str(resource["resourceType"]), f"{resource['id']}", resource, context))
        if len(batch) == 100:
            application.commit(batch)
            batch = []
    if batch:
        application.commit(batch)
    services.projector.catch_up()
    assert services.identity is not None
    services.identity.catch_up()
    with services.views.write() as tx:  # planner statistics, as autovacuum would gather them
        tx.execute("ANALYZE")
    return patients[0]


def _time(client: object, url: str, requests: int, expect: int) -> list[float]:
    from fastapi.testclient import TestClient

    assert isinstance(client, TestClient)
    for _ in range(5):  # warm-up
        client.get(url)
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    assert len(response.json().get("entry", [])) == expect, len(response.json().get("entry", []))
    return times


def _report(name: str, times: list[float]) -> None:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"{name:<44} n={len(times):<5} median {statistics.median(times):7.1f} ms   p99 {p99:7.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.everything", description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", default=os.environ.get("EHR_BENCH_POSTGRES_URL", DEFAULT_URL))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--resources", type=int, default=1000)
    args = parser.parse_args(argv)
    problem = available(args.postgres_url)
    if problem is not None:
        print(f"PostgreSQL at {args.postgres_url} is not answering: {problem}", file=sys.stderr)
        return 1
    from fastapi.testclient import TestClient

    from ehr_core.settings import Settings
    from fhir_api.app import create_app
    from fhir_api.services import Services

    with fresh_schema(args.postgres_url, "bench_everything") as schema:
        settings = Settings(database_url=args.postgres_url, postgres_schema=schema, auth="disabled-for-development")
        services = Services.open(settings, follow=False)
        try:
            started = time.perf_counter()
            patient = _load(services, args.resources)
            print(
                f"loaded {args.resources} resources for 3 linked records in {time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )
            with TestClient(create_app(services=services)) as client:
                base = f"/fhir/Patient/{patient}/$everything"
                _report(
                    "$everything ?_count=1000 (whole record)",
                    _time(client, f"{base}?_count=1000", args.requests, args.resources),
                )
                _report("$everything first page (_count=100)", _time(client, base, args.requests, 100))
            # The operation alone (query, attribution, Bundle), without HTTP and the audit middleware.
            from fhir_api.operations.everything import everything

            times = []
            for _ in range(args.requests):
                started = time.perf_counter()
                everything(services, "http://bench/fhir", patient, None, None, 1000, 0)
                times.append((time.perf_counter() - started) * 1000)
            _report("operation only, no HTTP (_count=1000)", times)
        finally:
            services.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
