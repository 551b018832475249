"""From measurements to the table's lines: which baseline goes beside which figure, and which target applies."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from bench import targets
from bench.stats import Measurement, other_percent
from bench.summary import Baseline, Line
from bench.workloads import CONSULTATION_RESOURCES

__all__ = [
    "everything_lines",
    "federation_lines",
    "http_lines",
    "import_lines",
    "memory_lines",
    "rebuild_lines",
    "search_lines",
]

# Beside each HTTP figure (raw client and wrk alike): (baseline name, same concurrency?).
HTTP_BASELINES = {
    "create": (
        ("recorder insert", True),
        ("psycopg INSERT/tx", True),
        ("jsonb table INSERT", True),
        ("psycopg COPY", False),
    ),
    "read": (
        ("recorder select latest", True),
        ("psycopg SELECT by PK", True),
        ("jsonb table SELECT by id", True),
    ),
}


def _p(measurement: Measurement, which: str) -> float:
    """p50/p99 in ms: from the latencies, or from the load tool's own report (wrk gives percentiles only)."""
    if measurement.latencies:
        return measurement.p50_ms if which == "p50" else measurement.p99_ms
    value = measurement.notes.get(f"{which}_ms")
    return float(value) if value is not None else math.nan


def _baseline(measurement: Measurement, name: str | None = None) -> Baseline:
    label = name or (
        measurement.name if measurement.concurrency == 1 else f"{measurement.name} c{measurement.concurrency}"
    )
    return Baseline(label, measurement.rate, _p(measurement, "p99"))


#: Reads by id again at the largest concurrency, in windows interleaved on the same store (bench/audit_ratio.py):
#: by the run's server (audit log on) and by a second server with the audit log turned off; each the median window.
AUDIT_ON = "read, audit log on"
AUDIT_OFF = "read, audit log off"
#: The workloads run at the largest concurrency only, after creates and reads (bench/workloads.py).
WORKLOADS = (
    ("search", "/s", targets.SEARCH_HTTP),
    ("transaction", "res/s", targets.TRANSACTION),
    ("everything", "/s", None),
)


def _peer(peer: list[Measurement], load: str, concurrency: int) -> list[Baseline]:
    """The peer's figure of the same load at the same concurrency, if it was measured (``--peer``)."""
    scale = _scale(load)
    return [
        Baseline(f"peer {load}, same c", m.rate * scale, _p(m, "p99"))
        for m in peer
        if m.name == f"http {load}" and m.concurrency == concurrency
    ]


def _spread(on: Measurement, off: Measurement) -> str:
    """ ", median of N interleaved windows, on LOW-HIGH, off LOW-HIGH /s" when both are interleaved medians."""
    if "windows" not in on.notes or "windows" not in off.notes:
        return ""
    return (
        f", median of {on.notes['windows']} interleaved windows, on {on.notes['min_rate']:,.0f}-"
        f"{on.notes['max_rate']:,.0f}, off {off.notes['min_rate']:,.0f}-{off.notes['max_rate']:,.0f} /s"
    )


def _scale(load: str) -> int:
    """Transactions are counted in resources stored (15 a Bundle), the rest in requests."""
    return CONSULTATION_RESOURCES if load == "transaction" else 1


def http_lines(
    backend: str, figures: list[Measurement], floors: list[Measurement], peer: list[Measurement] | None = None
) -> list[Line]:
    """Raw-client and wrk lines per load and concurrency; wrk's baseline is the raw client's figure. With
    ``peer`` (another FHIR server's figures, ``--peer``), the peer's same load comes first beside each."""
    peer = peer or []
    lines: list[Line] = []
    for load, target in (("create", targets.CREATES), ("read", targets.READS)):
        for raw in (m for m in figures if m.name == f"http {load}"):
            c = raw.concurrency
            chosen = [
                base
                for name, same in HTTP_BASELINES[load]
                for base in floors
                if base.name == name and base.backend == backend and (not same or base.concurrency == c)
            ]
            aim = target if c == targets.TARGET_CONCURRENCY else None
            beside = _peer(peer, load, c) + [_baseline(b, b.name) for b in chosen]
            lines.append(_line(f"{backend} {load} (raw client)", raw, beside, aim))
            for wrk in (m for m in figures if m.name == f"wrk {load}" and m.concurrency == c):
                # Beside the raw client only: the two load generators check each other; the floors are above.
                beside = [Baseline("raw client, same c", raw.rate, raw.p99_ms)]
                lines.append(_line(f"{backend} {load} (wrk)", wrk, beside, aim))
    for off in (m for m in figures if m.name == f"http {AUDIT_OFF}"):
        # The interleaved windows' median when measured; else (an older result) the read figure above.
        same_c = [m for m in figures if m.concurrency == off.concurrency]
        on = next((m for m in same_c if m.name == f"http {AUDIT_ON}"), None)
        on = on or next((m for m in same_c if m.name == "http read"), None)
        if on is not None:
            beside = [Baseline(f"{AUDIT_OFF}, same c", off.rate, _p(off, "p99"))]
            figure = f"{backend} read with the audit log (raw client{_spread(on, off)})"
            lines.append(_line(figure, on, beside, targets.AUDITED_READS))
    for load, unit, target in WORKLOADS:
        for raw in (m for m in figures if m.name == f"http {load}"):
            c = raw.concurrency
            aim = target if c == targets.TARGET_CONCURRENCY else None
            line = _line(f"{backend} {load} (raw client)", raw, _peer(peer, load, c), aim)
            lines.append(replace(line, value=raw.rate * _scale(load), unit=unit))
    return lines


def _line(figure: str, measurement: Measurement, baselines: list[Baseline], target: Any) -> Line:
    return Line(
        figure=figure,
        value=measurement.rate,
        unit="/s",
        concurrency=measurement.concurrency,
        p50_ms=_p(measurement, "p50"),
        p99_ms=_p(measurement, "p99"),
        errors=measurement.errors,
        other_cpu=other_percent(measurement.cpu, measurement.seconds),
        baselines=tuple(baselines),
        target=target,
    )


def memory_lines(
    backend: str,
    samples: list[float],
    largest: list[float],
    worker_samples: list[float] | None = None,
    several: bool = False,
) -> list[Line]:
    """Peak and end RSS of the API server under the HTTP load, beside its RSS right after it started.

    With several server processes the target applies to each (the largest is shown) and the sum over
    all of them is shown too, without a target; a projection worker's RSS is shown without one as well.
    """
    groups: list[tuple[str, list[float], Any]] = [
        ("API server, largest process", largest, targets.API_RSS)
        if several
        else ("API server", samples, targets.API_RSS)
    ]
    if several:
        groups.append(("API server, all processes", samples, None))
    groups.append(("projection worker", worker_samples or [], None))
    lines: list[Line] = []
    for who, found, target in groups:
        if not found:
            continue
        idle = Baseline("RSS just started", found[0])
        lines += [
            Line(f"{backend} {who} RSS, peak under load", max(found), "MiB", baselines=(idle,), target=target),
            Line(f"{backend} {who} RSS, end of load", found[-1], "MiB", baselines=(idle,), target=target),
        ]
    return lines


def import_lines(large: Any, small: Any, copy_rows_per_s: float) -> list[Line]:
    """``large``/``small`` are :class:`bench.import_figures.ImportRun`."""
    copy = Baseline("raw COPY of the same bytes", copy_rows_per_s)
    return [
        Line(
            f"import {large.resources:,} res (ehr import, projected)",
            large.rate,
            "res/s",
            other_cpu=large.other_cpu,
            baselines=(copy,),
            target=targets.IMPORT,
        ),
        Line(
            f"import {small.resources:,} res (ehr import, projected)",
            small.rate,
            "res/s",
            other_cpu=small.other_cpu,
            baselines=(copy,),
        ),
        Line(
            f"import peak RSS, {large.resources:,} res (+ projector)",
            large.rss_peak_mb,
            "MiB",
            baselines=(Baseline(f"import peak RSS, {small.resources:,} res", small.rss_peak_mb),),
            target=targets.IMPORT_MEMORY_FLAT,
        ),
    ]


def rebuild_lines(run: Any) -> list[Line]:
    """``run`` is :class:`bench.rebuild_figures.RebuildRun`."""
    floor = Baseline("read + decode the log, no writes", run.read_rate)
    return [
        Line(
            f"rebuild all projections (ehr rebuild), {run.events:,} events",
            run.rate,
            "events/s",
            other_cpu=run.other_cpu,
            baselines=(floor,),
            target=targets.REBUILD,
        )
    ]


def everything_lines(latencies: list[Any], other_cpu: float = math.nan) -> list[Line]:
    """``latencies`` from :func:`bench.read_figures.measure_everything`: the figure, then its baselines."""
    figure, *rest = latencies
    return [
        Line(
            figure.name,
            figure.median_ms,
            "ms",
            p99_ms=figure.p99_ms,
            other_cpu=other_cpu,
            baselines=tuple(Baseline(b.name, b.median_ms, b.p99_ms) for b in rest),
            target=targets.EVERYTHING,
        )
    ]


def search_lines(resources: int, figures: list[dict[str, Any]], other_cpu: float = math.nan) -> list[Line]:
    """One line per query of :func:`bench.search.queries`, HTTP in process beside the search alone."""
    return [
        Line(
            f"search {f['query']} @{resources // 1000}k",
            f["http_median_ms"],
            "ms",
            p99_ms=f["http_p99_ms"],
            other_cpu=other_cpu,
            baselines=(Baseline("search_bundle alone (no HTTP)", f["search_median_ms"], f["search_p99_ms"]),),
            target=targets.SEARCH,
        )
        for f in figures
    ]


def federation_lines(deployments: list[Any]) -> list[Line]:
    """No target: the federation of 1 store beside the single store that is not federated (the cost of
    federating), 2 and 3 stores beside 1 (the scaling); then the worker's lag when each load stopped.

    ``deployments`` are :class:`bench.federation_figures.Deployment` (``stores`` 0 = not federated)."""
    by_stores = {d.stores: d for d in deployments}
    lines: list[Line] = []
    for deployment in deployments:
        m = deployment.measurement
        servers = max(deployment.stores, 1)
        beside = by_stores.get(0 if deployment.stores <= 1 else 1)
        baselines = []
        if deployment.stores and beside is not None:
            b = beside.measurement
            baselines.append(Baseline(beside.label, b.rate, b.p99_ms))
        split = f"{m.concurrency // servers} clients x {servers} servers" if servers > 1 else f"{m.concurrency} clients"
        figure = f"{deployment.label}: Observation creates ({split})"
        lines.append(_line(figure, m, baselines, None))
    for deployment in deployments:
        lines.append(Line(f"{deployment.label}: worker lag when the load stopped", deployment.lag_events, "events"))
    return lines
