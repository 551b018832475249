"""Soak: mixed traffic at a sustained rate from several client processes against a real server.

Creates, updates (with ``If-Match``), reads, searches and transactions, paced by each client
(tests/soak/traffic.py). Afterwards: zero errors; every acknowledged create is stored exactly once and every
acknowledged update is the current version; every kind of request ran; the server's resident memory (``VmRSS``
from /proc) at the end is within :data:`RSS_TOLERANCE` of what it was after the warm-up. The rate held and the
p95 latency are printed, never asserted: they depend on what else the machine is doing.

Bounded: ``EHR_SOAK_SECONDS`` (default 90) after a 30 s warm-up. ``EHR_SOAK_BACKEND=postgres`` runs it on
PostgreSQL (default SQLite, the embedded deployment, so the shared PostgreSQL is not loaded for minutes).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import pytest

from ehr_core.settings import Settings
from tests.faults.load import server_pid, stored_markers
from tests.soak.traffic import MIX, ClientReport, run_client
from tests.support.server import running_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLIENTS = 4
#: Requests per second asked of the server in all (``EHR_SOAK_RATE``, default 5): what it holds on the shared
#: 2-core development machine while other test suites run (alone it holds more; see the printed p95).
RATE = float(os.environ.get("EHR_SOAK_RATE", "5"))
WARM_UP_SECONDS = 30.0
SOAK_SECONDS = float(os.environ.get("EHR_SOAK_SECONDS", "90"))
#: Flat memory: resident memory may grow this much between the end of the warm-up and the end (SQLite page
#: caches filling up to ``cache_size``, allocator slack). Before the server capped glibc's malloc arenas
#: (fhir_api/allocator.py) it grew ~0.3 MiB/s here (+18 to +24%), mostly free memory kept in per-thread arenas.
RSS_TOLERANCE = 0.20


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _sample(pid: int, stop: threading.Event, samples: list[tuple[float, int]]) -> None:
    started = time.monotonic()
    while not stop.wait(2.0):
        samples.append((time.monotonic() - started, _rss_kib(pid)))


def _env(request: pytest.FixtureRequest) -> dict[str, str]:
    if os.environ.get("EHR_SOAK_BACKEND", "sqlite") != "postgres":
        return {}
    settings: Settings = request.getfixturevalue("postgres_settings")
    return {"EHR_DATABASE_URL": str(settings.database_url), "EHR_POSTGRES_SCHEMA": settings.postgres_schema}


def test_soak_mixed_traffic(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    total_seconds = WARM_UP_SECONDS + SOAK_SECONDS
    with running_server(tmp_path / "ehr-data", _env(request)) as (base, _log):
        pid = server_pid(base)
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(pid, stop, samples), daemon=True)
        sampler.start()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(CLIENTS, mp_context=context) as pool:
            futures = [pool.submit(run_client, base, f"s{n}", RATE / CLIENTS, total_seconds) for n in range(CLIENTS)]
            reports: list[ClientReport] = [future.result(timeout=total_seconds + 120) for future in futures]
        stop.set()
        sampler.join()

        errors = [error for report in reports for error in report.errors]
        assert not errors, f"{len(errors)} errors, first: {errors[:5]}"

        created = [marker for report in reports for marker in report.created]
        stored = stored_markers(base)
        not_once = [(m, stored[m]) for m in created if stored[m] != 1]
        assert not not_once, f"acknowledged creates not stored exactly once: {not_once[:10]}"
        with httpx.Client(base_url=base, timeout=30) as http:
            for report in reports:
                for rid, version in report.versions.items():
                    current = http.get(f"/Patient/{rid}").json()["meta"]["versionId"]
                    assert int(current) == version, f"Patient/{rid}: acknowledged v{version}, current v{current}"

    requests = sum(report.requests for report in reports)
    seconds = max(report.seconds for report in reports)
    kinds: Counter[str] = Counter()
    for report in reports:
        kinds.update(report.by_kind)
    latencies = sorted(latency for report in reports for latency in report.latencies)
    p95 = latencies[int(len(latencies) * 0.95)] * 1000
    warm = [rss for at, rss in samples if at >= WARM_UP_SECONDS]
    assert len(warm) >= 3, f"too few memory samples after the warm-up: {samples}"
    start_rss, end_rss, peak_rss = warm[0], warm[-1], max(warm)
    print(
        f"\nsoak: {requests} requests in {seconds:.0f} s from {CLIENTS} processes = "
        f"{requests / seconds:.1f} req/s held (asked {RATE:g}); {dict(kinds)}; p95 {p95:.0f} ms; 0 errors; "
        f"{len(created)} creates stored once; RSS after warm-up {start_rss // 1024} MiB -> end "
        f"{end_rss // 1024} MiB (peak {peak_rss // 1024} MiB, tolerance {RSS_TOLERANCE:.0%}); "
        f"samples (s, MiB): {[(round(at), rss // 1024) for at, rss in samples[::5]]}"
    )
    # The rate held is reported, not asserted: tests never assert on time (a CI machine running the rest of
    # the suite beside the soak holds less than a quiet one). bench/ measures throughput against baselines.
    missing = set(MIX) - set(kinds)
    assert not missing, f"the traffic never exercised {missing}: {dict(kinds)}"
    assert end_rss <= start_rss * (1 + RSS_TOLERANCE), (
        f"memory not flat: {start_rss} KiB after the warm-up -> {end_rss} KiB at the end, beyond {RSS_TOLERANCE:.0%}"
    )
