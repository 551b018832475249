"""One soak client process: mixed FHIR traffic at a fixed pace, and a ledger of what was acknowledged.

Runs in its own process (``multiprocessing`` spawn), so the clients' own CPU and GIL do not cap the rate the
server is asked to hold. The mix, per cycle of ten requests: 3 creates, 2 updates, 2 reads, 2 searches,
1 transaction of two Patients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.faults.load import MARKER_SYSTEM, patient

__all__ = ["ClientReport", "run_client"]

MIX = ["create", "update", "read", "create", "search", "transaction", "create", "update", "read", "search"]


@dataclass
class ClientReport:
    tag: str
    requests: int = 0
    seconds: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: markers of acknowledged creates (single and in transactions)
    created: list[str] = field(default_factory=list)
    #: Patient id -> version of its last acknowledged update
    versions: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)


def _check(response: httpx.Response, ok: tuple[int, ...], what: str, report: ClientReport) -> bool:
    if response.status_code in ok:
        return True
    report.errors.append(f"{what} -> {response.status_code} {response.text[:200]}")
    return False


def _step(http: httpx.Client, kind: str, n: int, report: ClientReport, mine: list[str]) -> None:
    tag = report.tag
    if kind == "create" or (kind in ("update", "read") and not mine):
        marker = f"{tag}-{n}"
        response = http.post("/Patient", json=patient(marker))
        if _check(response, (201,), f"create {marker}", report):
            report.created.append(marker)
            mine.append(response.json()["id"])
    elif kind == "update":
        rid = mine[n % len(mine)]
        current = http.get(f"/Patient/{rid}")
        if not _check(current, (200,), f"read before update {rid}", report):
            return
        body: dict[str, Any] = current.json()
        body["active"] = not body.get("active", False)
        version = body["meta"]["versionId"]
        response = http.put(f"/Patient/{rid}", json=body, headers={"If-Match": f'W/"{version}"'})
        if _check(response, (200,), f"update {rid}", report):
            report.versions[rid] = int(response.json()["meta"]["versionId"])
    elif kind == "read":
        _check(http.get(f"/Patient/{mine[n % len(mine)]}"), (200,), "read", report)
    elif kind == "search":
        marker = report.created[n % len(report.created)] if report.created else f"{tag}-none"
        response = http.get("/Patient", params={"identifier": f"{MARKER_SYSTEM}|{marker}"})
        if _check(response, (200,), f"search {marker}", report) and report.created:
            found = response.json().get("total", len(response.json().get("entry", [])))
            if found != 1:
                report.errors.append(f"search {marker} found {found}, expected 1")
    else:
        markers = [f"{tag}-{n}-a", f"{tag}-{n}-b"]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": patient(m), "request": {"method": "POST", "url": "Patient"}} for m in markers],
        }
        if _check(http.post("", json=bundle), (200,), f"transaction {markers}", report):
            report.created.extend(markers)


def run_client(base_url: str, tag: str, rate: float, seconds: float) -> ClientReport:
    """Send ``rate`` requests per second (mixed) for ``seconds``; never faster, and say how fast it really was."""
    report = ClientReport(tag)
    mine: list[str] = []
    started = time.monotonic()
    due = started
    with httpx.Client(base_url=base_url, timeout=30) as http:
        n = 0
        while time.monotonic() - started < seconds:
            kind = MIX[n % len(MIX)]
            sent = time.monotonic()
            try:
                _step(http, kind, n, report, mine)
            except httpx.TransportError as error:
                report.errors.append(f"{kind}: {type(error).__name__} {error}")
            report.latencies.append(time.monotonic() - sent)
            report.by_kind[kind] = report.by_kind.get(kind, 0) + 1
            report.requests += 1
            n += 1
            due += 1.0 / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    report.seconds = time.monotonic() - started
    return report
