"""``python -m bench.validation``: what validation costs per resource, before and after the invariants.

"old": what a write checked before error-level invariants and Coding/CodeableConcept bindings (the R4B
models, the characters, the required ``code`` bindings); "new": :func:`ehr_core.resources.validation.validate`
as it is (the same plus required Coding/CodeableConcept bindings and the invariants, fhirpathpy). Three
inputs: an Observation and a Patient (a Synthea patient's own), and every resource of one Synthea
transaction Bundle. Each is validated ``--rounds`` times after a warm-up (expressions compiled once, on
first use); the table gives the median time per resource and the ratio new/old. A benchmark: nothing is
asserted. Reads the corpus from ``$EHR_CORPUS`` (default ``../shared/corpus``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ehr_core.resources import validation
from ehr_core.resources.bindings import required_code_issues

_REPO = Path(__file__).resolve().parents[1]


def _corpus() -> Path:
    return Path(os.environ.get("EHR_CORPUS", _REPO.parent / "shared" / "corpus"))


def _synthea_bundle() -> dict[str, Any]:
    files = sorted((_corpus() / "synthea").glob("*/*.json"))
    if not files:
        raise SystemExit(f"no Synthea bundles under {_corpus() / 'synthea'} (set EHR_CORPUS)")
    bundle: dict[str, Any] = json.loads(files[0].read_bytes())
    return bundle


def _old(resource: dict[str, Any]) -> str:
    """validate() with the conformance checks of before: required ``code`` bindings only."""
    saved = validation.conformance_issues
    validation.conformance_issues = required_code_issues  # type: ignore[assignment]
    try:
        return validation.validate(resource)
    finally:
        validation.conformance_issues = saved  # type: ignore[assignment]


def _per_resource(check: Callable[[dict[str, Any]], str], resources: list[dict[str, Any]], rounds: int) -> float:
    """Median over ``rounds`` of the seconds per resource to validate all of ``resources``."""
    for resource in resources:
        check(resource)  # warm-up: model classes built, expressions parsed
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for resource in resources:
            check(resource)
        times.append((time.perf_counter() - started) / len(resources))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.validation", description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    arguments = parser.parse_args(argv)
    bundle = _synthea_bundle()
    resources = [entry["resource"] for entry in bundle.get("entry", []) if "resource" in entry]
    inputs = {
        "Observation": [next(r for r in resources if r["resourceType"] == "Observation")],
        "Patient": [next(r for r in resources if r["resourceType"] == "Patient")],
        f"Synthea transaction ({len(resources)} resources)": resources,
    }
    print(f"{'input':<42} {'old µs/res':>11} {'new µs/res':>11} {'new/old':>8}")
    for name, items in inputs.items():
        rounds = arguments.rounds if len(items) < 10 else max(3, arguments.rounds // 5)
        old = _per_resource(_old, items, rounds)
        new = _per_resource(validation.validate, items, rounds)
        print(f"{name:<42} {old * 1e6:>11.0f} {new * 1e6:>11.0f} {new / old:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
