"""The benchmark's one table: verdicts against the issue's targets, and the rendering (no timing asserted)."""

from __future__ import annotations

import math

from bench import targets
from bench.federation_figures import Deployment
from bench.lines import federation_lines, http_lines, memory_lines
from bench.stats import Measurement
from bench.summary import Baseline, Line, Target, render, verdict


def _create(rate: float, p99: float, errors: int = 0) -> Line:
    return Line("postgres create (raw client)", rate, "/s", 32, 5.0, p99, errors, target=targets.CREATES)


def test_a_target_is_met_only_when_every_bound_holds() -> None:
    assert verdict(_create(600, 40)) == "yes"
    assert verdict(_create(600, 120)) == "NO"  # fast enough, but the tail is too slow
    assert verdict(_create(400, 40)) == "NO"
    assert verdict(_create(460, 100)) == "yes"  # the bounds are inclusive


def test_failed_requests_or_a_missing_figure_are_never_reported_as_met() -> None:
    assert verdict(_create(600, 40, errors=3)) == "NO"
    assert verdict(_create(600, math.nan)) == "?"
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
    assert targets.CREATES.text("/s") == ">= 460 /s, p99 <= 100 ms"
    assert targets.SEARCH.text("ms") == "median <= 20 ms, p99 <= 100 ms (at 1M)"
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


def _measured(name: str, concurrency: int, operations: int = 100) -> Measurement:
    return Measurement(name, "postgres", concurrency, operations, 1.0, latencies=[0.002] * operations)


def test_http_figures_are_set_beside_the_floors_of_their_own_concurrency_and_wrk_beside_the_raw_client() -> None:
    figures = [_measured("http create", 8), _measured("http create", 32), _measured("wrk create", 32, 90)]
    floors = [
        _measured("recorder insert", 8),
        _measured("recorder insert", 32, 400),
        _measured("psycopg INSERT/tx", 32),
        _measured("jsonb table INSERT", 32),
        _measured("psycopg COPY", 1),
        _measured("recorder select latest", 32),  # a read floor: never beside a create
    ]
    at8, at32, wrk = http_lines("postgres", figures, floors)
    assert [b.name for b in at32.baselines] == [
        "recorder insert",
        "psycopg INSERT/tx",
        "jsonb table INSERT",
        "psycopg COPY",
    ]
    assert at32.ratio(at32.baselines[0]) == 0.25 and at32.target is targets.CREATES
    assert at8.target is None and [b.value for b in at8.baselines][:1] == [100]
    assert wrk.figure == "postgres create (wrk)" and [b.name for b in wrk.baselines] == ["raw client, same c"]
    assert wrk.ratio(wrk.baselines[0]) == 0.9 and wrk.target is targets.CREATES


def test_with_several_server_processes_the_rss_target_applies_to_each_and_the_sum_is_shown_beside() -> None:
    one = memory_lines("postgres", [170, 190, 185], [170, 190, 185])
    assert [(line.figure, line.value, line.target) for line in one] == [
        ("postgres API server RSS, peak under load", 190, targets.API_RSS),
        ("postgres API server RSS, end of load", 185, targets.API_RSS),
    ]
    several = memory_lines("postgres", [300, 390], [160, 200], [88, 93], several=True)
    assert [(line.figure, line.value, verdict(line)) for line in several] == [
        ("postgres API server, largest process RSS, peak under load", 200, "yes"),
        ("postgres API server, largest process RSS, end of load", 200, "yes"),
        ("postgres API server, all processes RSS, peak under load", 390, "-"),
        ("postgres API server, all processes RSS, end of load", 390, "-"),
        ("postgres projection worker RSS, peak under load", 93, "-"),
        ("postgres projection worker RSS, end of load", 93, "-"),
    ]
    assert several[0].ratio(several[0].baselines[0]) == 1.25  # against the RSS just started


def test_one_store_federated_is_set_beside_the_single_store_and_more_stores_beside_one() -> None:
    single, one, two, three = (
        Deployment(stores, _measured(f"federation {stores}", 24, operations), lag_events=lag)
        for stores, operations, lag in ((0, 200, 0), (1, 100, 3), (2, 150, 0), (3, 250, 0))
    )
    rows = federation_lines([single, one, two, three])
    figures, lags = rows[:4], rows[4:]
    assert [[b.name for b in line.baselines] for line in figures] == [
        [],
        ["single store, not federated"],
        ["federation, 1 store"],
        ["federation, 1 store"],
    ]
    assert [line.ratio(line.baselines[0]) for line in figures[1:]] == [0.5, 1.5, 2.5]
    assert figures[3].figure == "federation, 3 stores: Observation creates (8 clients x 3 servers)"
    assert figures[1].figure == "federation, 1 store: Observation creates (24 clients)"
    assert {verdict(line) for line in rows} == {"-"}  # the federation figures state no target
    assert [(line.value, line.unit) for line in lags] == [(0, "events"), (3, "events"), (0, "events"), (0, "events")]


def test_without_the_one_store_federation_the_others_are_shown_without_a_baseline() -> None:
    single, two = (Deployment(stores, _measured("federation", 24)) for stores in (0, 2))
    assert [line.baselines for line in federation_lines([single, two])[:2]] == [(), ()]


def test_the_peer_goes_first_beside_each_http_figure_and_transactions_count_resources() -> None:
    figures = [_measured(f"http {load}", 32) for load in ("read", "search", "transaction", "everything")]
    peer = [_measured(f"http {load}", 32, 50) for load in ("read", "search", "transaction", "everything")]
    floors = [_measured("recorder select latest", 32)]
    read, search, transaction, everything = http_lines("postgres", figures, floors, peer)
    assert [b.name for b in read.baselines] == ["peer read, same c", "recorder select latest"]
    assert read.ratio(read.baselines[0]) == 2.0 and read.target is targets.READS
    assert (search.figure, search.target, search.ratio(search.baselines[0])) == (
        "postgres search (raw client)",
        targets.SEARCH_HTTP,
        2.0,
    )
    # 100 Bundles a second of 15 resources each: 1,500 resources a second, the target's bound.
    assert (transaction.value, transaction.unit, verdict(transaction)) == (1_500, "res/s", "yes")
    assert transaction.baselines[0].value == 750 and transaction.ratio(transaction.baselines[0]) == 2.0
    assert everything.target is None and verdict(everything) == "-"
    # Without a peer the same figures stand alone, and the peer's absence hides none.
    alone = http_lines("postgres", figures, floors)
    assert [len(line.baselines) for line in alone] == [1, 0, 0, 0]


def test_reads_with_the_audit_log_are_set_beside_the_same_reads_without_it() -> None:
    figures = [_measured("http read", 8), _measured("http read", 32, 70), _measured("http read, audit log off", 32)]
    lines = http_lines("postgres", figures, [])
    audited = next(line for line in lines if line.figure == "postgres read with the audit log (raw client)")
    assert audited.concurrency == 32 and [b.name for b in audited.baselines] == ["read, audit log off, same c"]
    assert audited.ratio(audited.baselines[0]) == 0.7 and verdict(audited) == "NO"
    assert targets.AUDITED_READS.text("/s") == "ratio >= 0.8"
    reached = Line("reads", 80, "/s", baselines=(Baseline("off", 100),), target=targets.AUDITED_READS)
    assert verdict(reached) == "yes"
