"""``ehr demo --no-serve`` loads a small population and the index links people registered twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_api.cli.demo import load


def test_demo_load_small_population(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("EHR_DATABASE_URL", raising=False)
    counts = load(people=25, seed=11, quiet=True)
    assert counts["patients"] > counts["persons"] > 0  # some people registered at two institutions, linked
    assert counts["resources"] == counts["stored"]
    again = load(people=25, seed=11, quiet=True)  # deterministic: the same ids and content store nothing new
    assert again["stored"] == 0
    assert again["persons"] == counts["persons"]
