"""``python -m bench.ledger``: how fast ``ehr verify`` checks the ledger, in events/s (target ≥ 50,000).

Builds a store of ``--events`` stored events — one real Patient create through the application (its
stored, encrypted bytes), then copies of those bytes under fresh stream ids appended straight to the event
table (building the store through the HTTP/validation path would take far longer than what is measured) —
seals the ledger (blocks of ``EHR_LEDGER_BLOCK_SIZE``, default 1,000) and times the full verification as
``ehr verify`` runs it: every leaf recomputed from the stored bytes, every Merkle root, chain link and
Ed25519 signature.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from eventsourcing.persistence import StoredEvent

from bench.pg import DEFAULT_URL, fresh_schema
from ehr_core.application import RecordApplication
from ehr_core.context import WriteContext
from ehr_core.ledger import LedgerKey
from ehr_core.settings import Settings
from projections.ledger import Ledger, raw_reader, verify
from projections.setup import open_view_database


def _patient(i: int) -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:ehr-core:bench", "value": f"BENCH{i:013d}"}],
        "name": [{"family": "Pérez", "given": ["Ana", f"N{i}"]}],
        "gender": "female",
        "birthDate": f"19{i % 90 + 10:02d}-0{i % 9 + 1}-1{i % 9}",
        "address": [{"city": "Toluca", "state": "MEX", "postalCode": f"5{i % 10000:04d}"}],
    }


def run(backend: str, events: int, postgres_url: str, rounds: int) -> None:
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ledger-")))
        if backend == "postgres":
            schema = stack.enter_context(fresh_schema(postgres_url, "bench_ledger"))
            settings = Settings(database_url=postgres_url, postgres_schema=schema, data_dir=work)
        else:
            settings = Settings(data_dir=work)
        application = RecordApplication(settings)
        stack.callback(application.close)
        views = open_view_database(settings)
        stack.callback(views.close)
        context = WriteContext(institution="IMSS", user="bench")
        began = time.perf_counter()
        application.create(_patient(0), context)
        sample = application.recorder.select_notifications(start=1, limit=1)[0]
        for start in range(1, events, 1000):
            application.recorder.insert_events(
                [
                    StoredEvent(uuid.uuid4(), 1, sample.topic, sample.state)
                    for _ in range(start, min(events, start + 1000))
                ]
            )
        written = time.perf_counter() - began
        key = LedgerKey.load_or_create(work / "ledger-key.pem")
        ledger = Ledger(application, views, key, "ledger", int(os.environ.get("EHR_LEDGER_BLOCK_SIZE", "1000")))
        ledger.create_tables()
        began = time.perf_counter()
        ledger.seal(partial=True)
        sealing = time.perf_counter() - began
        size = application.recorder.max_notification_id() or 0
        print(
            f"{backend}: {size:,} stored events ({len(sample.state)} bytes each) written in {written:.1f} s; "
            f"sealed in {sealing:.2f} s "
            f"({size / sealing:,.0f} events/s)"
        )
        rates = []
        for _ in range(rounds):
            began = time.perf_counter()
            report = verify(application, views, key.public_key, reader=raw_reader(application, settings))
            seconds = time.perf_counter() - began
            assert report.ok and report.events == size, report
            rates.append(report.events / seconds)
        best = max(rates)
        print(
            f"{backend}: ehr verify {report.events:,} events in {report.blocks} blocks: "
            f"{', '.join(f'{r:,.0f}' for r in rates)} events/s (best {best:,.0f}; target >= 50,000: "
            f"{'met' if best >= 50_000 else 'NOT met'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres-url", default=os.environ.get("EHR_BENCH_POSTGRES_URL", DEFAULT_URL))
    args = parser.parse_args()
    for backend in ("sqlite", "postgres") if args.backend == "both" else (args.backend,):
        run(backend, args.events, args.postgres_url, args.rounds)


if __name__ == "__main__":
    main()
