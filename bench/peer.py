"""Peer mode: the same workloads, by the same load generator, against another FHIR R4 server on this machine.

``python -m bench --peer URL [--peer-token TOKEN]`` first loads the peer through its own FHIR API (nothing
of the peer's own tooling, so any R4 server will do): :data:`SEEDED` distinct synthetic Patients by
``POST [base]/Patient``, 8 clients at a time. Then, as for ehr-core: creates and reads by id at each
``--concurrency``, and at the largest one the search ``Patient?family=X&_count=20``, consultation
transactions (15 resources each, written to the Patients created so far) and ``$everything`` of the
Patients that got one. Every request carries ``Authorization: Bearer TOKEN`` when a token is given.
ehr-core's figures are then shown with the peer's beside them: ratio = ehr-core ÷ peer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.loadgen import Load, create_load, read_load, run_load
from bench.options import Options
from bench.payload import Credentials, PatientFactory
from bench.stats import Measurement
from bench.workloads import clinical_figures

__all__ = ["SEEDED", "PeerRun", "peer_figures"]

#: Patients loaded into the peer before anything is measured (the comparison's published figures used 400).
SEEDED = 400
#: The peer's synthetic persons start here: far from ehr-core's (0 up) and wrk's (150,000 up).
FIRST_PERSON = 100_000


@dataclass
class PeerRun:
    base_url: str
    seeded: list[str] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)


def peer_figures(options: Options, say: Callable[[str], None] = lambda _: None, seeded: int = SEEDED) -> PeerRun:
    """Seed the peer at ``options.peer`` with ``seeded`` Patients, then measure every workload against it."""
    assert options.peer is not None
    run = PeerRun(options.peer)
    credentials = Credentials(options.peer_token)
    patients = PatientFactory(FIRST_PERSON)

    def measure(load: Load, concurrency: int) -> Measurement:
        measurement = run_load(
            run.base_url,
            load,
            concurrency,
            options.seconds,
            options.warmup,
            options.max_requests,
            with_db=False,
            client=options.client,
        )
        measurement.backend = "peer"
        run.measurements.append(measurement)
        if load.first_error is not None:
            say(f"peer: {load.name} at {concurrency} clients: {measurement.errors} errors, first: {load.first_error}")
        return measurement

    seeding = create_load(patients, credentials)
    run_load(run.base_url, seeding, 8, 600.0, 0.0, seeded, with_db=False, client=options.client)
    if len(seeding.created) < seeded:
        raise RuntimeError(f"the peer stored {len(seeding.created)} of {seeded} Patients: {seeding.first_error}")
    run.seeded = list(seeding.created)
    say(f"peer: {len(run.seeded)} Patients seeded through POST {run.base_url}/Patient")
    created = list(run.seeded)
    for concurrency in options.concurrency:
        load = create_load(patients, credentials)
        measure(load, concurrency)
        created.extend(load.created)
    for concurrency in options.concurrency:
        measure(read_load(created, credentials), concurrency)
    clinical_figures(created, credentials, max(options.concurrency), measure)
    return run
