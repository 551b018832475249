"""The benchmark's peer mode (``python -m bench --peer URL --peer-token TOKEN``) against a second ehr-core
server process, which is a FHIR R4 server like any other: the plumbing, not the figures (nothing here is
about time). The peer is seeded through its own FHIR API, every workload runs against it with a bearer
token and none fails, the writes are really there, and the table sets the peer beside ehr-core."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bench.lines import http_lines
from bench.options import parse_options
from bench.payload import TOKEN_CLAIMS
from bench.peer import peer_figures
from bench.server import issue_token
from bench.summary import render
from tests.support.server import running_server

pytestmark = [pytest.mark.e2e]

SEEDED = 12
LOADS = ["create", "read", "search", "transaction", "everything"]


def test_peer_mode_runs_every_workload_against_another_fhir_server(tmp_path: Path) -> None:
    data = tmp_path / "peer-data"
    token = issue_token(data, TOKEN_CLAIMS)
    with running_server(data, {"EHR_AUTH": "required"}) as (base, _):
        assert httpx.get(f"{base}/Patient", timeout=30).status_code == 401  # the token is what lets the load in
        argv = ["--peer", base, "--peer-token", token, "--quick", "--concurrency", "2"]
        options = parse_options([*argv, "--seconds", "0.5", "--warmup", "0.1", "--max-requests", "20"])
        assert options.sections == ("http",)  # peer mode alone compares the HTTP figures
        run = peer_figures(options, seeded=SEEDED)
        assert len(run.seeded) == len(set(run.seeded)) == SEEDED
        assert [m.name.removeprefix("http ") for m in run.measurements] == LOADS
        problems = {m.name: m.notes.get("first_error") for m in run.measurements if m.errors or not m.operations}
        assert problems == {}
        # The first seeded Patient got the first consultation: its $everything holds what the Bundle wrote.
        everything = httpx.get(
            f"{base}/Patient/{run.seeded[0]}/$everything",
            headers={"Authorization": f"Bearer {token}"},
            params={"_count": 1000},
            timeout=60,
        )
        assert everything.status_code == 200, everything.text[:500]
        kinds = [entry["resource"]["resourceType"] for entry in everything.json()["entry"]]
        for kind, least in (("Encounter", 1), ("Condition", 3), ("Observation", 6), ("MedicationRequest", 5)):
            assert kinds.count(kind) >= least, kinds
    # ehr-core's figures (here the peer's own, relabelled) each get the peer's beside them, as a ratio.
    lines = http_lines("postgres", run.measurements, [], run.measurements)
    assert [line.baselines[0].name for line in lines] == [f"peer {load}, same c" for load in LOADS]
    assert all(line.ratio(line.baselines[0]) == 1.0 for line in lines)
    assert "peer transaction, same c" in render(lines)
