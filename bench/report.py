"""The one table (each figure beside its baselines, and the ratio) and the JSON of the whole run."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import Measurement

__all__ = ["Row", "pair_rows", "render_table", "write_json"]

# Which baselines each HTTP figure is set beside: (http name, baseline name, same concurrency?).
PAIRS = (
    ("http create", "recorder insert", True),
    ("http create", "psycopg INSERT/tx", True),
    ("http create", "psycopg COPY", False),
    ("http read", "recorder select latest", True),
    ("http read", "psycopg SELECT by PK", True),
)


@dataclass(frozen=True)
class Row:
    figure: Measurement
    baseline: Measurement | None

    @property
    def ratio(self) -> float:
        if self.baseline is None or not self.baseline.rate:
            return math.nan
        return self.figure.rate / self.baseline.rate


def pair_rows(figures: list[Measurement], baselines: list[Measurement]) -> list[Row]:
    rows: list[Row] = []
    for figure in figures:
        matched = False
        for http_name, base_name, same_concurrency in PAIRS:
            if figure.name != http_name:
                continue
            for base in baselines:
                if base.name != base_name or base.backend != figure.backend:
                    continue
                if same_concurrency and base.concurrency != figure.concurrency:
                    continue
                rows.append(Row(figure, base))
                matched = True
        if not matched:
            rows.append(Row(figure, None))
    return rows


def _num(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _cpu(measurement: Measurement) -> str:
    """CPU used during the window, as % of one core: server / load client / postgres / everything else."""
    seconds = measurement.seconds or math.nan
    parts = [measurement.cpu.get(key, math.nan) / seconds * 100 for key in ("server", "client", "db", "other")]
    return "/".join("-" if math.isnan(part) else f"{part:.0f}" for part in parts)


HEADER = (
    "backend",
    "figure",
    "c",
    "ops/s",
    "p50 ms",
    "p99 ms",
    "err",
    "cpu% srv/cli/db/oth",
    "baseline (same run)",
    "c",
    "ops/s",
    "p99 ms",
    "ratio",
)
RIGHT = {2, 3, 4, 5, 6, 9, 10, 11, 12}


def render_table(rows: list[Row]) -> str:
    lines: list[tuple[str, ...]] = []
    previous: Measurement | None = None
    for row in rows:
        figure, base = row.figure, row.baseline
        if figure is previous:
            left: tuple[str, ...] = ("", "", "", "", "", "", "", "")
        else:
            left = (
                figure.backend,
                figure.name,
                str(figure.concurrency),
                _num(figure.rate),
                _num(figure.p50_ms, 2),
                _num(figure.p99_ms, 2),
                str(figure.errors),
                _cpu(figure),
            )
        previous = figure
        if base is None:
            right: tuple[str, ...] = ("(none)", "", "", "", "")
        else:
            right = (base.name, str(base.concurrency), _num(base.rate), _num(base.p99_ms, 2), _num(row.ratio, 3))
        lines.append(left + right)
    widths = [max(len(HEADER[i]), *(len(line[i]) for line in lines)) for i in range(len(HEADER))]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in RIGHT else cell.ljust(widths[i]) for i, cell in enumerate(cells))

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([fmt(HEADER), rule, *(fmt(line) for line in lines)])


def write_json(path: Path, payload: dict[str, Any], rows: list[Row]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    target = path / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    payload = dict(payload)
    payload["rows"] = [
        {
            "backend": row.figure.backend,
            "figure": row.figure.name,
            "concurrency": row.figure.concurrency,
            "rate_per_s": row.figure.rate,
            "baseline": row.baseline.name if row.baseline else None,
            "baseline_concurrency": row.baseline.concurrency if row.baseline else None,
            "baseline_rate_per_s": row.baseline.rate if row.baseline else None,
            "ratio": row.ratio,
        }
        for row in rows
    ]

    def clean(value: Any) -> Any:  # NaN is not JSON
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    target.write_text(json.dumps(clean(payload), indent=2, default=str) + "\n")
    return target
