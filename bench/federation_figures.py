"""Write throughput with one, two and three institution stores, as ratios.

Each deployment is started from nothing and stopped before the next: the single-store deployment that is not
federated (one PostgreSQL database: plain ``EHR_DATABASE_URL``), then federations of N = 1, 2, 3 institution
stores. A federation's stores are PostgreSQL clusters of their own (``initdb``/``pg_ctl`` on loopback ports,
tests/support/pg_cluster.py), its national views a fresh schema on the shared server; one API server per
store (``EHR_STORE``) and one ``ehr project`` worker following them all. Every process runs with
``EHR_PROJECTION=worker`` and ``EHR_POSTGRES_POOL_SIZE=2``.

The load is Observation creates (no subject: no master patient index work, so the figure is the federation's
write path: append to the store, national position under the one row lock, views), the same total number of
raw clients at every N, split evenly over the servers. A create answers only once the worker has projected
it (read-your-writes), so the rate includes projection. After the window, the worker's lag (store heads
minus its positions) is read at once, then how long it takes to reach zero.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Awaitable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
import psycopg
from psycopg import sql

from bench.loadgen import Load, Session, run_spread_load
from bench.options import Options
from bench.pg import conninfo, fresh_schema
from bench.server import running_server, running_worker
from bench.stats import Measurement

__all__ = ["STORES", "Deployment", "federation_figures"]

STORES = ("IMSS", "ISSSTE", "IMSS-Bienestar")
#: What each tracking row of the worker is called: ``resources`` alone, or ``resources@IMSS`` in a federation.
PROJECTIONS = ("resources", "identity")


@dataclass
class Deployment:
    """One measured deployment: ``stores`` = 0 for the single store that is not federated."""

    stores: int
    measurement: Measurement
    #: Events the worker had not applied when the load stopped, summed over the stores; per store in ``heads``.
    lag_events: int = 0
    catch_up_s: float = float("nan")
    heads: dict[str, dict[str, int]] = field(default_factory=dict)
    startup_s: float = 0.0

    @property
    def label(self) -> str:
        if self.stores == 0:
            return "single store, not federated"
        return f"federation, {self.stores} store{'s' if self.stores > 1 else ''}"


class Observations:
    """Serialised Observations, a distinct identifier each (thread-safe)."""

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def __call__(self, store: str) -> bytes:
        with self._lock:
            n = next(self._counter)
        return orjson.dumps(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": "Body weight"},
                "identifier": [{"system": f"urn:ehr-bench:federation:{store}", "value": str(n)}],
                "valueQuantity": {"value": 50 + n % 50, "unit": "kg", "system": "http://unitsofmeasure.org"},
                "effectiveDateTime": "2026-01-15T10:30:00-06:00",
            }
        )


def _load(store: str, observations: Observations) -> Load:
    """Observation creates at one institution's server, by one of its clinicians (authentication disabled)."""
    who = {
        "Content-Type": "application/fhir+json",
        "Accept": "application/fhir+json",
        "X-EHR-Institution": store,
        "X-EHR-Unit": "DFIMS000123",
        "X-EHR-User": f"bench-{store.lower()}-0001",
        "X-EHR-Role": "physician",
        "X-EHR-Purpose": "TREAT",
    }

    def send(session: Session) -> Awaitable[Any]:
        return session.post("/Observation", content=observations(store), headers=who | {"X-Request-ID": uuid4().hex})

    return Load("create Observation", send, 201)


def _positions(url: str, schema: str, stores: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per store (its conninfo): the head of its log and the worker's least position over its projections."""
    with psycopg.connect(conninfo(url)) as connection:
        query = sql.SQL("SELECT name, position FROM {}.projection_tracking").format(sql.Identifier(schema))
        rows = {str(name): int(position) for name, position in connection.execute(query).fetchall()}
    found: dict[str, dict[str, int]] = {}
    for store, info in stores.items():
        with psycopg.connect(info) as connection:
            query = sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}.ehr_events").format(
                sql.Identifier(schema)
            )
            head = connection.execute(query).fetchone()
        names = [name if store == "" else f"{name}@{store}" for name in PROJECTIONS]
        positions = [rows[name] for name in names if name in rows]
        assert head is not None
        found[store or "single"] = {"head": int(head[0]), "position": min(positions) if positions else -1}
    return found


def _lag(heads: dict[str, dict[str, int]]) -> int:
    return sum(max(0, each["head"] - each["position"]) for each in heads.values())


def _deployment(options: Options, work_dir: Path, stores: int, say: Any) -> Deployment:
    """Start one deployment, run the load, read the worker's lag, stop it; clusters go even on failure."""
    from tests.support.pg_cluster import PgCluster

    began = time.monotonic()
    clients = options.federation_clients
    names = STORES[: max(stores, 1)]
    if clients % len(names):
        raise ValueError(f"--federation-clients {clients} cannot be split evenly over {len(names)} servers")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tag = f"n{stores}" if stores else "single"
    data_dir = work_dir / f"federation-{tag}"  # one development master key for every process of the deployment
    with ExitStack() as stack:
        schema = stack.enter_context(fresh_schema(options.postgres_url, "bench_fed"))
        base = {
            "EHR_DATABASE_URL": options.postgres_url,
            "EHR_POSTGRES_SCHEMA": schema,
            "EHR_POSTGRES_POOL_SIZE": "2",
            "EHR_PROJECTION": "worker",
        }
        store_infos: dict[str, str] = {}
        if stores:
            urls = {}
            for name in names:
                cluster = stack.enter_context(PgCluster.started(f"bench-{name.lower()}"))
                # PgCluster turns fsync off for tests; the shared server (the national views, and the single
                # store) syncs, and an institution's store would: the same durability on both sides.
                cluster.sql("ALTER SYSTEM SET fsync = on")
                cluster.sql("SELECT pg_reload_conf()")
                urls[name] = cluster.url("ehr")
                store_infos[name] = cluster.conninfo("ehr")
            base["EHR_STORES"] = ",".join(f"{name}={url}" for name, url in urls.items())
        else:
            store_infos[""] = conninfo(options.postgres_url)
        servers = []
        for name in names:  # one after the other: the first creates the development master key
            env = base | ({"EHR_STORE": name} if stores else {})
            log = options.results / f"server-federation-{tag}-{name}-{stamp}.log"
            servers.append(stack.enter_context(running_server(data_dir, log, env)))
        worker_log = options.results / f"worker-federation-{tag}-{stamp}.log"
        pids = [server.pid for server in servers]
        pids.append(stack.enter_context(running_worker(data_dir, worker_log, base)))
        startup = time.monotonic() - began
        say(f"federation: {tag}: {len(servers)} server(s) and the worker up in {startup:.0f} s; load")
        observations = Observations()
        targets = [(server.base_url, _load(name, observations)) for server, name in zip(servers, names, strict=True)]
        each = clients // len(names)
        measurement = run_spread_load(targets, each, options.seconds, options.warmup, options.max_requests, pids)
        stopped = time.monotonic()
        heads = _positions(options.postgres_url, schema, store_infos)
        lag = _lag(heads)
        catch_up = 0.0 if lag == 0 else float("nan")
        while lag and time.monotonic() - stopped < 30:
            time.sleep(0.1)
            if _lag(_positions(options.postgres_url, schema, store_infos)) == 0:
                catch_up = time.monotonic() - stopped
                break
        measurement.name = f"federation {tag}"
        if not measurement.operations:
            raise RuntimeError(
                f"federation {tag}: no create succeeded; first answer: {measurement.notes['first_error']}"
            )
    return Deployment(stores, measurement, lag, catch_up, heads, startup)


def federation_figures(options: Options, work_dir: Path, say: Any, failures: dict[str, str]) -> list[Deployment]:
    """The single store (not federated), then federations of 1, 2 and 3 stores, one after the other; one that
    fails is put in ``failures`` (its clusters and schema are gone) and the others still run."""
    done: list[Deployment] = []
    for stores in (0, 1, 2, 3):
        try:
            deployment = _deployment(options, work_dir, stores, say)
        except Exception as error:  # the other deployments' figures still stand, without this baseline
            name = f"federation {stores or 'single'}"
            failures[name] = f"{type(error).__name__}: {error}"
            say(f"{name}: FAILED: {failures[name][:3000]}")
            continue
        m = deployment.measurement
        say(
            f"federation: {deployment.label}: {m.operations:,} creates in {m.seconds:.1f} s = {m.rate:,.0f}/s, "
            f"p50 {m.p50_ms:.1f} ms, p99 {m.p99_ms:.1f} ms, errors {m.errors} (first: {m.notes['first_error']}), "
            f"per server {m.notes['per_server']}; worker lag at the end {deployment.lag_events} events "
            f"{deployment.heads}, caught up in {deployment.catch_up_s:.1f} s"
        )
        done.append(deployment)
    return done
