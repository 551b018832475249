"""``python -m bench``: run every figure and its baselines, print one table, write the JSON.

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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.baselines import baselines
from bench.http_figures import HttpRun, http_figures
from bench.options import Options, parse_options
from bench.payload import sample_stored_event
from bench.pg import available
from bench.report import pair_rows, render_table, write_json
from bench.stats import Measurement


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    began = time.time()
    topic, state, body_bytes = sample_stored_event()
    _say(f"stored event of one create: {len(state)} bytes of state ({body_bytes} bytes of Patient JSON)")
    runs: list[HttpRun] = []
    figures: list[Measurement] = []
    floors: list[Measurement] = []
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ehr-bench-") as directory:
        work_dir = Path(directory)
        for backend in _backends(options):
            _say(
                f"{backend}: HTTP creates and reads, clients {options.concurrency}, "
                f"{options.warmup:g}s warm-up + {options.seconds:g}s each"
            )
            try:
                run = http_figures(backend, options, work_dir)
                _say(f"{backend}: baselines (bare recorder{', raw psycopg' if backend == 'postgres' else ''})")
                floors.extend(baselines(run, options, work_dir, topic, state))
            except Exception as error:  # one broken backend must not hide the other's figures
                failures[backend] = f"{type(error).__name__}: {error}"
                _say(f"{backend}: FAILED, no figures: {failures[backend][:3000]}")
                continue
            runs.append(run)
            figures.extend(run.measurements)
            _say(f"{backend}: the server appended {_events_per_create(run)}")
            if run.profile:
                _say(f"{backend}: server profile in {run.profile}")
    if not figures:
        _say("nothing measured")
        return 1
    rows = pair_rows(figures, floors)
    caption = (
        f"ehr-core bench: {options.seconds:g}s per figure after {options.warmup:g}s warm-up; load client "
        f"{options.client}; auth {options.auth}; {os.cpu_count()} CPUs; "
        f"one create appends {len(state)} B of event state"
    )
    print(caption)
    print(render_table(rows))
    _warn_if_busy(figures + floors)
    payload = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(began)),
        "duration_s": time.time() - began,
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(options).items()},
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "git": _git(),
        "payload": {"patient_json_bytes": body_bytes, "event_topic": topic, "event_state_bytes": len(state)},
        "http_runs": [
            {
                "backend": run.backend,
                "stored_events": run.stored_events,
                "profile": run.profile,
                "measurements": [m.as_json() for m in run.measurements],
            }
            for run in runs
        ],
        "baselines": [m.as_json() for m in floors],
        "failures": failures,
    }
    target = write_json(options.results, payload, rows)
    _say(f"results in {target} ({time.time() - began:.0f}s)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
