"""``python -m bench.validation``: what validation costs per resource, before and after the invariants.

"old": what a write checked before error-level invariants and Coding/CodeableConcept bindings: the R4B
models, the characters found by walking every key and value (as that check was written then, kept as
``find_bad_character``), the required ``code`` bindings. "new": :func:`ehr_core.resources.validation.validate`
as it is (the same checks, the characters judged from the orjson text first, plus required
Coding/CodeableConcept bindings and the invariants: fhirpathpy, or its Python translation where there is
one). "models": the R4B model alone, for scale. Three inputs: an Observation and a Patient (a Synthea
patient's own), and every resource of one Synthea transaction Bundle. After a warm-up (expressions compiled
once, on first use), old, new and models take turns on each resource, ``--rounds`` tries each (half of
them for the transaction's resources), so that a shared machine's load weighs on all three alike; a
resource's time is its fastest try (the least disturbed by other processes, as :mod:`timeit` advises). The
table gives the mean time per resource and the ratio new/old. A benchmark: nothing is asserted. Reads the
corpus from ``$EHR_CORPUS`` (default ``../shared/corpus``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from ehr_core.errors import Issue
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


def _characters_before(resource: dict[str, Any], resource_type: str) -> None:
    validation.find_bad_character(resource, resource_type)


def _codes_before(resource: dict[str, Any], resource_type: str, text: bytes | None = None) -> list[Issue]:
    return required_code_issues(resource, resource_type)


def _old(resource: dict[str, Any]) -> str:
    """validate() with the checks of before: every key and value walked for characters, required ``code``
    bindings only."""
    saved = validation.conformance_issues, validation._check_characters
    validation.conformance_issues = _codes_before
    validation._check_characters = _characters_before  # type: ignore[assignment]
    try:
        return validation.validate(resource)
    finally:
        validation.conformance_issues, validation._check_characters = saved


def _models(resource: dict[str, Any]) -> str:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return str(resource["resourceType"])


def _per_resource(
    checks: list[Callable[[dict[str, Any]], str]], resources: list[dict[str, Any]], rounds: int
) -> list[float]:
    """For each check, the mean over ``resources`` of the seconds to validate one, each resource's time
    being its fastest of ``rounds`` tries; the checks take turns on each resource, try after try."""
    for check in checks:
        for resource in resources:
            check(resource)  # warm-up: model classes built, expressions parsed
    totals = [0.0 for _ in checks]
    for resource in resources:
        best = [float("inf") for _ in checks]
        for _ in range(rounds):
            for index, check in enumerate(checks):
                started = time.perf_counter()
                check(resource)
                best[index] = min(best[index], time.perf_counter() - started)
        totals = [total + least for total, least in zip(totals, best, strict=True)]
    return [total / len(resources) for total in totals]


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
    print(f"{'input':<42} {'old µs/res':>11} {'new µs/res':>11} {'new/old':>8} {'models µs/res':>14}")
    for name, items in inputs.items():
        rounds = arguments.rounds if len(items) < 10 else max(3, arguments.rounds // 2)
        old, new, models = _per_resource([_old, validation.validate, _models], items, rounds)
        print(f"{name:<42} {old * 1e6:>11.0f} {new * 1e6:>11.0f} {new / old:>8.2f} {models * 1e6:>14.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
