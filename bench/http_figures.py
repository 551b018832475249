"""Creates and reads by id, then the search, consultation transactions and $everything (bench/workloads.py),
through a real server process, on one backend."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.audit_ratio import audit_windows, interleave, median_window
from bench.lines import AUDIT_OFF, AUDIT_ON
from bench.loadgen import Load, create_load, read_load, run_load
from bench.memory import RssSampler
from bench.options import Options
from bench.payload import TOKEN_CLAIMS, Credentials, PatientFactory
from bench.pg import conninfo, fresh_schema
from bench.recorder import open_recorder
from bench.server import issue_token, running_server, running_worker
from bench.stats import Measurement
from bench.workloads import clinical_figures
from bench.wrk import WrkLoad, write_bodies, wrk_available

__all__ = ["HttpRun", "http_figures"]


@dataclass
class HttpRun:
    backend: str
    measurements: list[Measurement] = field(default_factory=list)
    #: What the server actually stored: count and mean size of the event ``state`` bytes.
    stored_events: dict[str, Any] = field(default_factory=dict)
    server_log: str = ""
    profile: str | None = None
    #: RSS of the server process tree, MiB, sampled through the whole load: peak, and at the end.
    rss_peak_mb: float = float("nan")
    rss_end_mb: float = float("nan")
    rss_samples: list[float] = field(default_factory=list, repr=False)
    #: The largest single server process at each sample (differs from the above with --server-workers).
    rss_largest: list[float] = field(default_factory=list, repr=False)
    #: With ``--projection worker``: RSS of the ``ehr project`` process, MiB, sampled the same way.
    worker_rss_samples: list[float] = field(default_factory=list, repr=False)
    #: Why wrk did not run, if it did not.
    wrk_skipped: str | None = None
    #: Why the interleaved reads with and without the audit log were not measured, if they were not.
    audit_off_failed: str | None = None

    def find(self, name: str, concurrency: int) -> Measurement | None:
        for measurement in self.measurements:
            if measurement.name == name and measurement.concurrency == concurrency:
                return measurement
        return None


def _stored_events(backend: str, data_dir: Path, url: str, schema: str | None) -> dict[str, Any]:
    """What the server appended, by event topic: how many, and the mean size of their state."""
    query = "SELECT topic, count(*), avg(length(state)) FROM {} GROUP BY topic ORDER BY count(*) DESC"
    # The table's name is the library's business: ask a recorder configured like the server's.
    if backend == "sqlite":
        with open_recorder(data_dir) as recorder:
            table = recorder.events_table_name
        with sqlite3.connect(data_dir / "events.sqlite") as connection:
            rows = connection.execute(query.format(table)).fetchall()
    else:
        assert schema is not None
        with open_recorder(data_dir, url, schema) as recorder:
            table = recorder.events_table_name
        with psycopg.connect(conninfo(url)) as connection:
            name = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            rows = connection.execute(sql.SQL(query).format(name)).fetchall()
    return {
        "table": table,
        "by_topic": {topic: {"count": int(count), "mean_state_bytes": float(mean or 0)} for topic, count, mean in rows},
    }


def _name_profiles(profile: Path, windows: list[str]) -> None:
    """The sampler's segments, renamed after their windows: segment 2k+1 is window k (see sampler.py)."""
    for index, window in enumerate(windows):
        segment = profile.with_name(f"{profile.name}.seg{2 * index + 1}")
        if segment.exists():
            segment.rename(profile.with_name(f"{window}.txt"))
    for leftover in profile.parent.glob(f"{profile.name}.seg*"):
        leftover.unlink()


def _wrk_load(
    run: HttpRun, options: Options, directory: Path, base_url: str, credentials: Credentials
) -> WrkLoad | None:
    """wrk with its bodies file written, or None (and why, in ``run.wrk_skipped``)."""
    path = wrk_available()
    if not options.wrk:
        run.wrk_skipped = "--no-wrk"
    elif path is None:
        run.wrk_skipped = "wrk is not installed (make bench installs it: apt-get install wrk)"
    elif credentials.token is None:
        run.wrk_skipped = "--auth disabled: the wrk script sends a bearer token"
    if run.wrk_skipped is not None or path is None or credentials.token is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    # Enough distinct persons for every create run even at 3,000/s.
    wanted = int(3_000 * (options.seconds + 1) * len(options.concurrency))
    write_bodies(directory / "patients.ndjson", wanted)
    return WrkLoad(path, base_url, credentials.token, directory / "patients.ndjson", directory / "ids.txt")


def _audit_ratio_windows(
    run: HttpRun,
    backend: str,
    options: Options,
    data_dir: Path,
    env: dict[str, str],
    credentials: Credentials,
    created: list[str],
    audited: tuple[str, list[int]],
    stamp: str,
) -> None:
    """The target's "reads with the audit log >= 0.8x reads without it": a second server on the same store
    with EHR_AUDIT_ENABLED=false, started beside the audited one (``audited``: its base URL and pids), and
    interleaved windows of the same reads at the largest concurrency (bench/audit_ratio.py). It opens a store
    that already holds the whole run: its start takes longer."""
    log = options.results / f"server-{backend}-{stamp}-audit-off.log"
    plain_env = env | {"EHR_AUDIT_ENABLED": "false"}
    concurrency = max(options.concurrency)
    with running_server(data_dir, log, plain_env, timeout=300.0, headers=credentials.read()) as plain:

        def window(base_url: str, pids: list[int], name: str) -> Callable[[], Measurement]:
            def measure() -> Measurement:
                reads = read_load(created, credentials)
                reads.name = name
                measurement = _window(options, backend, base_url, reads, concurrency, pids)
                if measurement.errors:
                    raise RuntimeError(f"{measurement.errors} reads failed ({name})")
                return measurement

            return measure

        on, off = interleave(
            window(audited[0], audited[1], AUDIT_ON),
            window(plain.base_url, [plain.pid], AUDIT_OFF),
            audit_windows(options.audit_windows),
        )
    run.measurements.append(median_window(on, f"http {AUDIT_ON}"))
    run.measurements.append(median_window(off, f"http {AUDIT_OFF}"))


def _window(
    options: Options,
    backend: str,
    base_url: str,
    load: Load,
    concurrency: int,
    pids: list[int],
    mark: Callable[[], None] | None = None,
) -> Measurement:
    """One measured window of ``load`` at ``concurrency`` clients, with the run's options."""
    measurement = run_load(
        base_url,
        load,
        concurrency,
        options.seconds,
        options.warmup,
        options.max_requests,
        pids,
        with_db=backend == "postgres",
        client=options.client,
        mark=mark,
    )
    measurement.backend = backend
    return measurement


def http_figures(backend: str, options: Options, work_dir: Path) -> HttpRun:
    """Start a server on ``backend``, run creates then reads at every concurrency, stop it."""
    run = HttpRun(backend)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data_dir = work_dir / f"http-{backend}"
    log = options.results / f"server-{backend}-{stamp}.log"  # kept: the first place to look when a run fails
    profile: Path | None = None
    windows: list[str] = []
    with ExitStack() as stack:
        env: dict[str, str] = {}
        schema = None
        if backend == "postgres":
            schema = stack.enter_context(fresh_schema(options.postgres_url, "bench_http"))
            env = {"EHR_DATABASE_URL": options.postgres_url, "EHR_POSTGRES_SCHEMA": schema}
        if options.auth == "token":
            credentials = Credentials(issue_token(data_dir, TOKEN_CLAIMS))
            env["EHR_AUTH"] = "required"  # running_server turns authentication off unless told otherwise
        else:
            credentials = Credentials(None)
            env["EHR_AUTH"] = "disabled-for-development"
        wrapper = None
        if options.profile:
            profile = options.results / f"profile-{backend}-{stamp}" / "whole-run.txt"
            wrapper = ["-m", "bench.sampler", "--out", str(profile), "--"]
            run.profile = str(profile.parent)
        if options.projection != "auto":
            env["EHR_PROJECTION"] = options.projection
        if options.pool_size is not None:
            env["EHR_POSTGRES_POOL_SIZE"] = str(options.pool_size)
        serving = stack.enter_context(ExitStack())  # the server and its samplers, closed before the audit-off run
        server = serving.enter_context(
            running_server(data_dir, log, env, wrapper, headers=credentials.read(), workers=options.server_workers)
        )
        run.server_log = str(log)
        rss = RssSampler(server.pid).start()
        serving.callback(rss.stop)  # also when a figure fails: the sampler must not outlive the server
        worker_rss: RssSampler | None = None
        pids = [server.pid]  # whose CPU is the server's in the cpu columns
        if options.projection == "worker":
            worker_log = options.results / f"worker-{backend}-{stamp}.log"
            pids.append(serving.enter_context(running_worker(data_dir, worker_log, env)))
            worker_rss = RssSampler(pids[-1]).start()
            serving.callback(worker_rss.stop)
        wrk = _wrk_load(run, options, work_dir / f"wrk-{backend}", server.base_url, credentials)

        def mark() -> None:
            os.kill(server.pid, signal.SIGUSR1)

        def measure(load: Load, concurrency: int) -> Measurement:
            windows.append(f"{load.name}-c{concurrency}")
            measurement = _window(
                options, backend, server.base_url, load, concurrency, pids, mark if profile is not None else None
            )
            run.measurements.append(measurement)
            return measurement

        def measure_wrk(mode: str, concurrency: int) -> None:
            if wrk is None:
                return
            measurement = wrk.run(mode, concurrency, options.seconds, pids, with_db=backend == "postgres")
            measurement.backend = backend
            run.measurements.append(measurement)

        created: list[str] = []
        patients = PatientFactory()
        for concurrency in options.concurrency:
            load = create_load(patients, credentials)
            measure(load, concurrency)
            created.extend(load.created)
            if not load.created:
                raise RuntimeError(f"{backend}: no create succeeded; first answer: {load.first_error}")
            measure_wrk("create", concurrency)  # right after, at nearly the same store size
        if wrk is not None:
            wrk.ids.write_text("".join(f"{resource_id}\n" for resource_id in created))
        for concurrency in options.concurrency:
            measure(read_load(created, credentials), concurrency).notes["distinct_ids"] = len(created)
            measure_wrk("read", concurrency)
        # Search, consultation transactions and $everything at the largest concurrency (the targets' 32).
        clinical_figures(created, credentials, max(options.concurrency), measure)
        try:  # both servers running: the audited one is this run's, kept up for it
            _audit_ratio_windows(
                run, backend, options, data_dir, env, credentials, created, (server.base_url, pids), stamp
            )
        except Exception as error:  # the figures above stand without it
            run.audit_off_failed = f"{type(error).__name__}: {error}"
        rss.stop()
        run.rss_peak_mb, run.rss_end_mb, run.rss_samples = rss.peak_mb, rss.last_mb, rss.samples
        run.rss_largest = rss.largest
        if worker_rss is not None:
            worker_rss.stop()
            run.worker_rss_samples = worker_rss.samples
        serving.close()
        run.stored_events = _stored_events(backend, data_dir, options.postgres_url, schema)
    if profile is not None:
        _name_profiles(profile, windows)
    return run
