"""A server killed (SIGKILL) in the middle of a large transaction: after a restart, the whole Bundle
is there or none of it is, on PostgreSQL. The Bundle's last entry is a GET: R4 §3.1.0.11.2 evaluates it
inside the same atomic unit (after the writes, seeing them), so a kill while it is answered must leave
all or nothing too, and a transaction whose GET fails must leave nothing, killed or not."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ehr_core.settings import Settings
from tests.support.server import start_server

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ENTRIES = 1500


def _bundle(tag: str, last_get: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000000",
            "resource": {"resourceType": "Patient", "name": [{"family": tag}]},
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for i in range(ENTRIES - 1):
        entries.append(
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": f"{tag} {i}"},
                    "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"},
                    "valueQuantity": {"value": 70.5, "unit": "kg"},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    # Processed last whatever its place (R4 §3.1.0.11.2): a search seeing the Bundle's own Observations,
    # or a read of a resource that does not exist, which fails the whole transaction.
    url = f"Observation?code:text={tag}&_count=5" if last_get == "search" else f"Patient/{tag}-missing"
    entries.append({"request": {"method": "GET", "url": url}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _stored(base: str) -> int:
    history = httpx.get(f"{base}/_history", params={"_count": "0"}, timeout=30).json()
    return int(history["total"])


@pytest.mark.parametrize("last_get", ["search", "missing"])
def test_sigkill_during_a_transaction_leaves_all_or_nothing(
    postgres_settings: Settings, tmp_path: Path, last_get: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env |= {
        "EHR_DATABASE_URL": str(postgres_settings.database_url),
        "EHR_POSTGRES_SCHEMA": postgres_settings.postgres_schema,
        "EHR_DATA_DIR": str(tmp_path / "data"),
        "EHR_AUTH": "disabled-for-development",  # This test sends no bearer tokens
    }
    outcomes = []
    expected_total = 0
    # Kill at several points of the request: while the body is read, while entries are validated,
    # while the append runs, while the GET entry is answered; the store must end with all of each Bundle or
    # none of it. The last attempt (None) waits for the answer before the kill: the answer must match the store.
    delays: tuple[float | None, ...] = (
        (0.05, 0.3, 0.6, 1.0, 1.5, 2.5, 4.0, None) if last_get == "search" else (1.0, None)
    )
    for attempt, delay in enumerate(delays):
        process, base = start_server(env, tmp_path)
        try:
            before = _stored(base)
            assert before == expected_total
            tag = f"crash{attempt}"
            body = _bundle(tag, last_get)

            answers: list[httpx.Response] = []

            def send(payload: dict[str, Any] = body, url: str = base, into: list[httpx.Response] = answers) -> None:
                with contextlib.suppress(httpx.TransportError):  # the server dies under the request: expected
                    into.append(httpx.post(url, json=payload, timeout=60))

            sender = threading.Thread(target=send)
            sender.start()
            if delay is None:
                sender.join()
                assert answers, "the transaction was not answered"
            else:
                time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait()
            sender.join()
        finally:
            if process.poll() is None:  # a check above failed: never leave the server (and its worker) behind
                process.kill()
                process.wait()
        process, base = start_server(env, tmp_path)
        try:
            added = _stored(base) - before
            assert added in (0, ENTRIES), f"attempt {attempt}: {added} of {ENTRIES} entries stored"
            if last_get == "missing":  # its GET entry fails: the transaction never stores anything
                assert added == 0, f"attempt {attempt}: a transaction whose GET failed stored {added} entries"
            outcomes.append(added)
            if answers:  # answered before the kill: the answer says what the store holds
                answer = answers[0]
                if last_get == "missing":
                    assert answer.status_code == 404, answer.text[:500]
                else:
                    assert answer.status_code == 200 and added == ENTRIES, answer.text[:500]
                    searchset = answer.json()["entry"][-1]["resource"]
                    assert searchset["total"] == ENTRIES - 1  # the GET saw the transaction's own writes
            expected_total += added
        finally:
            process.terminate()
            process.wait()
    print(f"entries stored per killed transaction ({last_get}): {outcomes}")
    # The delays straddle the request: at least one kill must land before the commit.
    assert 0 in outcomes, outcomes
    if last_get == "search":  # the attempt that waited for its answer stored the whole Bundle
        assert outcomes[-1] == ENTRIES, outcomes
