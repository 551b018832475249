"""The benchmark's one table: verdicts against the issue's targets, and the rendering (no timing asserted)."""

from __future__ import annotations

import math

from bench import targets
from bench.summary import Baseline, Line, Target, render, verdict


def _create(rate: float, p99: float, errors: int = 0) -> Line:
    return Line("postgres create (raw client)", rate, "/s", 32, 5.0, p99, errors, target=targets.CREATES)


def test_a_target_is_met_only_when_every_bound_holds() -> None:
    assert verdict(_create(1_200, 40)) == "yes"
    assert verdict(_create(1_200, 60)) == "NO"  # fast enough, but the tail is too slow
    assert verdict(_create(900, 40)) == "NO"
    assert verdict(_create(1_000, 50)) == "yes"  # the bounds are inclusive


def test_failed_requests_or_a_missing_figure_are_never_reported_as_met() -> None:
    assert verdict(_create(1_200, 40, errors=3)) == "NO"
    assert verdict(_create(1_200, math.nan)) == "?"
    assert verdict(Line("no target", 5.0, "/s")) == "-"


def test_at_most_targets_and_the_memory_flatness_ratio() -> None:
    assert verdict(Line("rss", 280, "MiB", target=targets.API_RSS)) == "yes"
    assert verdict(Line("rss", 320, "MiB", target=targets.API_RSS)) == "NO"
    flat = Line(
        "import rss", 110, "MiB", baselines=(Baseline("smaller input", 100),), target=targets.IMPORT_MEMORY_FLAT
    )
    grows = Line(
        "import rss", 260, "MiB", baselines=(Baseline("smaller input", 100),), target=targets.IMPORT_MEMORY_FLAT
    )
    unmeasured = Line("import rss", 110, "MiB", target=targets.IMPORT_MEMORY_FLAT)
    assert (verdict(flat), verdict(grows), verdict(unmeasured)) == ("yes", "NO", "?")


def test_target_text_names_every_bound() -> None:
    assert targets.CREATES.text("/s") == ">= 1,000 /s, p99 <= 50 ms"
    assert targets.SEARCH.text("ms") == "median <= 20 ms, p99 <= 100 ms (issue 4, at 1M)"
    assert Target(ratio_at_most=1.2).text("MiB") == "ratio <= 1.2"


def test_render_sets_each_baseline_on_its_own_row_with_the_ratio() -> None:
    line = Line(
        "postgres read (raw client)",
        2_000,
        "/s",
        32,
        4.0,
        12.0,
        baselines=(Baseline("psycopg SELECT by PK", 8_000, 2.0), Baseline("jsonb table SELECT by id", 10_000, 1.5)),
        target=targets.READS,
    )
    text = render([line, Line("rebuild", 25_000, "events/s", target=targets.REBUILD)])
    header, rule, first, second, third = text.splitlines()
    assert header.split()[:2] == ["figure", "c"] and set(rule) == {"-", " "}
    assert "psycopg SELECT by PK" in first and "0.25" in first and first.rstrip().endswith("NO")
    assert "jsonb table SELECT by id" in second and "0.20" in second and "postgres read" not in second
    assert third.startswith("rebuild") and "(none)" in third and third.rstrip().endswith("yes")
    # Columns line up: every row is as wide as the rule, at most.
    assert all(len(row) <= len(rule) for row in (header, first, second, third))
