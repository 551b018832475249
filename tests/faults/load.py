"""Writers that keep a ledger of what the server answered, and the checks made on the record afterwards.

Each write carries a unique marker (a Patient identifier in :data:`MARKER_SYSTEM`), so after a fault the
stored record can be compared with the answers: every acknowledged marker stored exactly once, every
refused one (a 503 saying nothing was applied) stored zero times, and a transaction's markers all or none.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "MARKER_SYSTEM",
    "WriteLedger",
    "assert_record_matches_answers",
    "patient",
    "server_pid",
    "stored_markers",
    "write_loop",
]

MARKER_SYSTEM = "urn:ehr-core:test:marker"


@dataclass
class WriteLedger:
    """What the server answered, marker by marker (thread-safe)."""

    acknowledged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    #: Answered 503 "may have been applied" (the connection died mid-statement): stored at most once.
    uncertain: list[str] = field(default_factory=list)
    #: Markers whose request got no HTTP answer at all (connection cut): outcome unknown to the client.
    unanswered: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)
    #: (monotonic time of the answer, status or 0 when unanswered), to see when the service came back.
    timeline: list[tuple[float, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def counts(self) -> dict[int, int]:
        """The answers so far by status (a copy, safe while writers still record)."""
        with self._lock:
            return dict(self.statuses)

    def record(self, markers: list[str], response: httpx.Response | None, what: str) -> None:
        with self._lock:
            self.timeline.append((time.monotonic(), response.status_code if response is not None else 0))
            if response is None:
                self.unanswered.extend(markers)
                return
            self.statuses[response.status_code] += 1
            if response.status_code in (200, 201):
                self.acknowledged.extend(markers)
                self.ack_times.append(time.monotonic())
                return
            (self.uncertain if "may have been applied" in response.text else self.refused).extend(markers)
            if not _is_unavailable_outcome(response):
                self.problems.append(f"{what} -> {response.status_code}: {response.text[:300]}")


def _is_unavailable_outcome(response: httpx.Response) -> bool:
    """A 503 with an OperationOutcome body and ``Retry-After``: the one clean way to fail a write."""
    if response.status_code != 503 or "application/fhir+json" not in response.headers.get("content-type", ""):
        return False
    try:
        outcome = response.json()
    except ValueError:
        return False
    return outcome.get("resourceType") == "OperationOutcome" and bool(outcome.get("issue"))


def patient(marker: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MARKER_SYSTEM, "value": marker}],
        "name": [{"family": "Carga", "given": [marker]}],
    }


def write_loop(base: str, tag: str, stop: threading.Event, ledger: WriteLedger, pause: float = 0.0) -> None:
    """Create Patients, and every fourth time a transaction of three, until ``stop`` is set."""
    with httpx.Client(timeout=60) as http:
        i = 0
        while not stop.is_set():
            i += 1
            if i % 4 == 0:
                markers = [f"{tag}-{i}-{part}" for part in "abc"]
                entries = [{"resource": patient(m), "request": {"method": "POST", "url": "Patient"}} for m in markers]
                body: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
                url = base
            else:
                markers, body, url = [f"{tag}-{i}"], patient(f"{tag}-{i}"), f"{base}/Patient"
            try:
                response: httpx.Response | None = http.post(url, json=body)
            except httpx.TransportError:
                response = None
            ledger.record(markers, response, f"POST {url} {markers}")
            if pause:
                time.sleep(pause)


def stored_markers(base: str) -> Counter[str]:
    """How many stored Patients carry each marker, paging through every Patient (``next`` links)."""
    found: Counter[str] = Counter()
    url: str | None = f"{base}/Patient?_count=500"
    with httpx.Client(timeout=60) as http:
        while url:
            page = http.get(url)
            assert page.status_code == 200, page.text[:300]
            bundle = page.json()
            for entry in bundle.get("entry", []):
                for identifier in entry["resource"].get("identifier", []):
                    if identifier.get("system") == MARKER_SYSTEM:
                        found[identifier["value"]] += 1
            url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
    return found


def assert_record_matches_answers(
    ledger: WriteLedger, stored: Counter[str], others: set[str] | None = None, strict_status: bool = True
) -> None:
    """Acknowledged: stored exactly once. Refused ("nothing was applied"): never. Uncertain: at most once.

    ``strict_status``: every refusal was a 503 OperationOutcome (off where the caller checks statuses itself).
    """
    if strict_status:
        problems = "\n".join(ledger.problems[:5])
        assert not ledger.problems, f"refusals that were not 503 OperationOutcomes:\n{problems}"
    missing = [m for m in ledger.acknowledged if stored[m] != 1]
    assert not missing, f"acknowledged writes not stored exactly once: {[(m, stored[m]) for m in missing[:10]]}"
    applied = [m for m in ledger.refused if stored[m]]
    assert not applied, f"writes answered 503 ('nothing was applied') that were stored: {applied[:10]}"
    assert all(stored[m] <= 1 for m in ledger.unanswered + ledger.uncertain), "an uncertain write was stored twice"
    known = set(ledger.acknowledged) | set(ledger.refused) | set(ledger.unanswered) | set(ledger.uncertain)
    strangers = [m for m in stored if m not in known and m not in (others or set())]
    assert not strangers, f"stored writes nobody sent: {strangers[:10]}"


def server_pid(base_url: str) -> int:
    """The pid of the ``ehr serve`` process answering ``base_url`` (started by tests/support/server.py)."""
    port = base_url.split(":")[2].split("/")[0]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdecimal():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"fhir_api.cli" in argv and b"serve" in argv and port.encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no server process for {base_url}")
