"""``python -m bench``: every figure the project promises, each beside its baselines from the same run,
with the issue's target and whether it is met, in one table; the JSON of the whole run in bench/results/.

Sections, in order: http (creates and reads through a real server, raw client and wrk, the server's RSS),
import (Synthea at two sizes, its RSS), rebuild (over the larger import's log), everything, search,
federation (write throughput with one, two and three institution stores).
A section that fails is reported on stderr and in the JSON, and the others still run (exit status 1).
Progress goes to stderr; stdout is the table alone.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import lines as table_lines
from bench.baselines import baselines
from bench.http_figures import HttpRun, http_figures
from bench.options import Options, parse_options
from bench.payload import sample_stored_event
from bench.pg import available, fresh_schema
from bench.report import write_json
from bench.stats import Measurement, Noise
from bench.summary import Line, render, verdict


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _fail(result: dict[str, Any], name: str, error: Exception) -> None:
    """Say which part failed and why (the traceback goes to the JSON); the others still run."""
    result["failures"][name] = f"{type(error).__name__}: {error}"
    result.setdefault("tracebacks", {})[name] = traceback.format_exc()
    _say(f"{name}: FAILED: {result['failures'][name][:3000]}")


def _git() -> dict[str, Any]:
    """Which code was measured: the commit, and a fingerprint of uncommitted changes (read-only git calls)."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parents[1])
        return result.stdout

    status = git("status", "--porcelain").splitlines()
    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "changed_files": [line for line in status if not line.startswith("??")],
        "untracked": [line[3:] for line in status if line.startswith("??")],
        "diff_sha256": hashlib.sha256(git("diff", "HEAD").encode()).hexdigest(),
    }


def _backends(options: Options) -> list[str]:
    chosen = []
    for backend in options.backends:
        if backend == "postgres":
            problem = available(options.postgres_url)
            if problem is not None:
                _say(f"skipping postgres: {options.postgres_url} does not answer ({problem})")
                continue
        chosen.append(backend)
    return chosen


def _events_per_create(run: HttpRun) -> str:
    by_topic: dict[str, dict[str, float]] = run.stored_events.get("by_topic", {})
    creates = sum(v["count"] for topic, v in by_topic.items() if topic.endswith("ResourceStream.Started"))
    if not creates:
        return "no resource events?"
    parts = ", ".join(
        f"{v['count'] / creates:.2f} x {topic.rsplit(':', 1)[-1]} ({v['mean_state_bytes']:.0f} B)"
        for topic, v in by_topic.items()
    )
    return f"{sum(v['count'] for v in by_topic.values()) / creates:.2f} events per create: {parts}"


def _warn_if_busy(measurements: list[Measurement], threshold: float = 0.25) -> None:
    """Say so when other processes used the CPUs during the windows: figures are then noisy."""
    # Windows under a second are too short for /proc's 10 ms ticks to say anything.
    busy = [m for m in measurements if m.seconds >= 1.0 and m.cpu.get("other", 0.0) / m.seconds > threshold]
    if busy:
        worst = max(m.cpu["other"] / m.seconds for m in busy) * 100
        _say(
            f"{len(busy)} of {len(measurements)} windows ran while other processes used CPU "
            f"(up to {worst:.0f}% of a core, column 'oth'): figures are noisy; rerun on a quiet machine"
        )


def _http(options: Options, work_dir: Path, result: dict[str, Any]) -> list[Line]:
    topic, state, body_bytes = sample_stored_event()
    _say(f"stored event of one create: {len(state)} bytes of state ({body_bytes} bytes of Patient JSON)")
    result["payload"] = {"patient_json_bytes": body_bytes, "event_topic": topic, "event_state_bytes": len(state)}
    lines: list[Line] = []
    measured: list[Measurement] = []
    peer: list[Measurement] = []
    if options.peer is not None:
        peer = _peer(options, result)
    for backend in _backends(options):
        _say(
            f"{backend}: HTTP creates and reads, clients {options.concurrency}, "
            f"{options.warmup:g}s warm-up + {options.seconds:g}s each (raw client), "
            f"then {options.seconds:g}s of wrk if it is there"
        )
        try:
            run = http_figures(backend, options, work_dir)
            if run.wrk_skipped:
                _say(f"{backend}: wrk not run: {run.wrk_skipped}; the raw client's figures stand alone")
            if run.audit_off_failed:
                result["failures"][f"http {backend} reads without the audit log"] = run.audit_off_failed
                _say(
                    f"{backend}: reads without the audit log FAILED, shown without them: {run.audit_off_failed[:1000]}"
                )
            _say(f"{backend}: baselines (bare recorder{', raw psycopg, jsonb table' if backend == 'postgres' else ''})")
            missing: dict[str, str] = {}
            floors = baselines(run, options, work_dir, topic, state, missing)
            for name, problem in missing.items():
                result["failures"][name] = problem
                _say(f"{name}: FAILED, shown without it: {problem[:1000]}")
        except Exception as error:  # one broken backend must not hide the other's figures
            _fail(result, f"http {backend}", error)
            continue
        _say(f"{backend}: the server appended {_events_per_create(run)}")
        if run.profile:
            _say(f"{backend}: server profile in {run.profile}")
        measured += run.measurements + floors
        lines += table_lines.http_lines(backend, run.measurements, floors, peer)
        several = options.server_workers > 1
        lines += table_lines.memory_lines(backend, run.rss_samples, run.rss_largest, run.worker_rss_samples, several)
        result["http_runs"].append(
            {
                "backend": run.backend,
                "stored_events": run.stored_events,
                "profile": run.profile,
                "wrk_skipped": run.wrk_skipped,
                "rss_mb": {"peak": run.rss_peak_mb, "end": run.rss_end_mb, "samples": run.rss_samples},
                "largest_process_rss_mb_samples": run.rss_largest,
                "worker_rss_mb_samples": run.worker_rss_samples,
                "measurements": [m.as_json() for m in run.measurements],
                "baselines": [m.as_json() for m in floors],
            }
        )
    _warn_if_busy(measured)
    return lines


def _peer(options: Options, result: dict[str, Any]) -> list[Measurement]:
    """The same HTTP workloads against the peer (``--peer``), before ehr-core's server starts."""
    from bench.peer import peer_figures

    _say(f"peer {options.peer}: seeding through its FHIR API, then the same workloads, clients {options.concurrency}")
    try:
        run = peer_figures(options, _say)
    except Exception as error:  # ehr-core's figures still stand, without the peer beside them
        _fail(result, "peer", error)
        return []
    result["peer"] = {
        "base_url": run.base_url,
        "seeded": len(run.seeded),
        "measurements": [m.as_json() for m in run.measurements],
    }
    for m in run.measurements:
        _say(f"peer: {m.name} c{m.concurrency}: {m.rate:,.0f}/s, p99 {m.p99_ms:.1f} ms, {m.errors} errors")
    return run.measurements


def _import_and_rebuild(options: Options, work_dir: Path, result: dict[str, Any]) -> list[Line]:
    from bench.import_figures import copy_rate, corpus_sizes, measure_import
    from bench.import_throughput import _settings
    from bench.rebuild_figures import measure_rebuild

    url = options.postgres_url
    lines: list[Line] = []
    smaller, larger = corpus_sizes(options.quick)
    with fresh_schema(url, "bench_import") as small_schema, fresh_schema(url, "bench_import") as large_schema:
        large_dir = work_dir / "import-large"
        if "import" in options.sections:
            _say(f"import: {len(smaller)} files in a child process, its RSS sampled")
            small = measure_import(smaller, work_dir / "import-small", small_schema, url)
            _say(
                f"import: {small.resources:,} resources in {small.seconds:.1f} s, peak RSS {small.rss_peak_mb:.0f} MiB"
            )
        _say(f"import: {len(larger)} files in a child process, its RSS sampled")
        large = measure_import(larger, large_dir, large_schema, url)
        _say(f"import: {large.resources:,} resources in {large.seconds:.1f} s, peak RSS {large.rss_peak_mb:.0f} MiB")
        if "import" in options.sections:
            rows, rate = copy_rate(larger, url)
            _say(f"import: raw COPY of the same {rows:,} resources' bytes: {rate:,.0f} rows/s")
            lines += table_lines.import_lines(large, small, rate)
            result["import"] = {"small": asdict(small), "large": asdict(large), "copy_rows_per_s": rate}
        if "rebuild" in options.sections:
            _say("rebuild: every projection from zero over the larger import's log")
            try:
                rebuild = measure_rebuild(_settings("postgres", large_dir, large_schema, url))
            except Exception as error:  # the import's figures stand without it
                _fail(result, "rebuild", error)
                return lines
            each = ", ".join(f"{name} {events:,} in {seconds:.1f} s" for name, events, seconds in rebuild.projectors)
            _say(f"rebuild: {rebuild.events:,} events in the logs, all rebuilt in {rebuild.seconds:.1f} s ({each})")
            lines += table_lines.rebuild_lines(rebuild)
            result["rebuild"] = asdict(rebuild)
    return lines


def _everything(options: Options, result: dict[str, Any]) -> list[Line]:
    from bench.read_figures import measure_everything

    _say(f"$everything: 1,000 resources across three institutions, {options.requests} requests each")
    with Noise.watch() as noise:
        latencies = measure_everything(options.postgres_url, options.requests)
    result["everything"] = {"latencies": [asdict(latency) for latency in latencies], "other_cpu_pct": noise.percent}
    return table_lines.everything_lines(latencies, noise.percent)


def _search(options: Options, result: dict[str, Any]) -> list[Line]:
    from bench.read_figures import measure_search

    _say(f"search: {options.search_resources:,} generated resources, {options.requests} queries per figure")
    with Noise.watch() as noise:
        timings, figures = measure_search(options.postgres_url, options.search_resources, options.requests)
    result["search"] = {
        "resources": options.search_resources,
        "load": timings,
        "figures": figures,
        "other_cpu_pct": noise.percent,
    }
    return table_lines.search_lines(options.search_resources, figures, noise.percent)


def _federation(options: Options, work_dir: Path, result: dict[str, Any]) -> list[Line]:
    from bench.federation_figures import federation_figures

    _say(
        f"federation: Observation creates, {options.federation_clients} raw clients in all, "
        f"{options.warmup:g}s warm-up + {options.seconds:g}s; the single store, then 1, 2, 3 institution stores"
    )
    deployments = federation_figures(options, work_dir, _say, result["failures"])
    _warn_if_busy([d.measurement for d in deployments])
    result["federation"] = [
        {
            "stores": d.stores,
            "label": d.label,
            "startup_s": d.startup_s,
            "lag_events": d.lag_events,
            "catch_up_s": d.catch_up_s,
            "heads": d.heads,
            "measurement": d.measurement.as_json(),
        }
        for d in deployments
    ]
    return table_lines.federation_lines(deployments)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    began = time.time()
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(began)),
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(options).items()},
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "git": _git(),
        "http_runs": [],
        "failures": {},
    }
    lines: list[Line] = []
    postgres_problem = available(options.postgres_url)
    with tempfile.TemporaryDirectory(prefix="ehr-bench-") as directory:
        work_dir = Path(directory)
        sections: list[tuple[str, Callable[[], list[Line]]]] = [
            ("http", lambda: _http(options, work_dir, result)),
            ("import", lambda: _import_and_rebuild(options, work_dir, result)),
            ("everything", lambda: _everything(options, result)),
            ("search", lambda: _search(options, result)),
            ("federation", lambda: _federation(options, work_dir, result)),
        ]
        for name, section in sections:
            wanted = name in options.sections or (name == "import" and "rebuild" in options.sections)
            if not wanted:
                continue
            if name != "http" and postgres_problem is not None:
                result["failures"][name] = f"PostgreSQL at {options.postgres_url} does not answer: {postgres_problem}"
                _say(f"{name}: skipped: {result['failures'][name]}")
                continue
            tick = time.time()
            try:
                lines += section()
            except Exception as error:  # one failed section must not hide the others' figures
                _fail(result, name, error)
            _say(f"{name}: done in {time.time() - tick:.0f} s")
    if not lines:
        _say("nothing measured")
    print(
        f"ehr-core bench, {time.strftime('%Y-%m-%d %H:%M')}: {os.cpu_count()} CPUs; HTTP {options.seconds:g} s per "
        f"figure after {options.warmup:g} s warm-up, auth {options.auth}, {options.server_workers} server "
        f"process(es), projection {options.projection}"
        f"{' (federation: auth disabled, projection worker, pool 2)' if 'federation' in options.sections else ''}; "
        f"ratio = figure / baseline; "
        f"oth% = other processes' CPU during the window (noise)"
    )
    print(render(lines))
    result["duration_s"] = time.time() - began
    result["table"] = [
        {
            "figure": line.figure,
            "concurrency": line.concurrency,
            "value": line.value,
            "unit": line.unit,
            "p50_ms": line.p50_ms,
            "p99_ms": line.p99_ms,
            "errors": line.errors,
            "baselines": [
                {"name": b.name, "value": b.value, "p99_ms": b.p99_ms, "ratio": line.ratio(b)} for b in line.baselines
            ],
            "target": line.target.text(line.unit) if line.target else None,
            "met": verdict(line),
        }
        for line in lines
    ]
    target = write_json(options.results, result)
    _say(f"results in {target} ({time.time() - began:.0f}s)")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
