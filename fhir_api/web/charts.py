"""Vital-sign trends drawn as inline SVG on the server: no script, no chart library, nothing to download.

Each point keeps a ``<title>`` (date, value, institution) that the browser shows on hover.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

__all__ = ["Chart", "chart"]

WIDTH, HEIGHT = 560, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 26


@dataclass
class Point:
    x: float
    y: float
    label: str
    colour: str


@dataclass
class Line:
    name: str
    colour: str
    path: str
    points: list[Point]


@dataclass
class Chart:
    key: str
    width: int = WIDTH
    height: int = HEIGHT
    lines: list[Line] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    unit: str = ""

    @property
    def empty(self) -> bool:
        return not any(line.points for line in self.lines)


def _day(text: str) -> int | None:
    try:
        return date.fromisoformat(text[:10]).toordinal()
    except ValueError:
        return None


def _nice_step(span: float) -> float:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500):
        if span / step <= 6:
            return float(step)
    return 1000.0


def chart(
    key: str, unit: str, series: list[tuple[str, str, list[tuple[str, float, str]]]], colours: dict[str, str]
) -> Chart:
    """``series``: (name, line colour, [(when, value, institution)]); points take their institution's colour."""
    result = Chart(key, unit=unit)
    days = [d for _, _, points in series for when, _, _ in points if (d := _day(when)) is not None]
    values = [v for _, _, points in series for _, v, _ in points]
    if not days:
        return result
    first, last = min(days), max(days)
    if last == first:
        first, last = first - 15, last + 15
    low, high = min(values), max(values)
    step = _nice_step(max(high - low, 1.0))
    low, high = step * (low // step), step * (high // step + 1)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(day: int) -> float:
        return round(LEFT + (day - first) / (last - first) * inner_w, 1)

    def y_of(value: float) -> float:
        return round(TOP + (high - value) / (high - low) * inner_h, 1)

    tick = low
    while tick <= high + 1e-9:
        result.y_ticks.append((y_of(tick), f"{tick:g}"))
        tick += step
    first_year, last_year = date.fromordinal(first).year, date.fromordinal(last).year
    years = list(range(first_year + 1, last_year + 1))
    stride = max(1, len(years) // 6)
    for year in years[::stride]:
        result.x_ticks.append((x_of(date(year, 1, 1).toordinal()), str(year)))
    for name, colour, points in series:
        placed = [
            Point(
                x_of(day),
                y_of(value),
                f"{when[:10]}: {value:g} {unit} ({institution})",
                colours.get(institution, colour),
            )
            for when, value, institution in points
            if (day := _day(when)) is not None
        ]
        path = " ".join(f"{'M' if i == 0 else 'L'}{p.x},{p.y}" for i, p in enumerate(placed))
        result.lines.append(Line(name, colour, path, placed))
    return result
