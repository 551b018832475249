"""Fuzzing fixtures: one real server process per backend and module (starting one per example would
cost more than the fuzzing itself)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.target import FuzzTarget, fuzz_target


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    with fuzz_target(request.param, tmp_path_factory.mktemp(f"fuzz-{request.param}"), url) as running:
        yield running
    counts = ", ".join(f"{status}: {n}" for status, n in sorted(running.statuses.items()))
    print(f"\n{request.module.__name__} on {request.param}: answers by status {{{counts}}}")


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")
