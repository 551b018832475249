"""``ehr demo``: generate a synthetic population across IMSS, ISSSTE and IMSS-Bienestar, load it, serve it.

Deterministic for a seed (``--seed``). Everything goes through the application service like any client
write (validation, identifier rules, one atomic append per group, each naming its institution and unit),
then the projections and the master patient index catch up, then the FHIR server starts (``ehr serve``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

__all__ = ["add_parser", "load"]


def load(people: int, seed: int, quiet: bool = False) -> dict[str, int]:
    """Generate and load the population into the configured store; returns counts."""
    from ehr_core.context import WriteContext
    from ehr_core.demo.population import population
    from ehr_core.settings import Settings
    from fhir_api.bootstrap import open_services

    services = open_services(Settings(), follow=False)
    started = time.perf_counter()
    counts = {"writes": 0, "resources": 0, "stored": 0}
    try:
        application = services.application
        referrals: dict[str, str] = {}  # Task id -> its last status
        consents: set[str] = set()
        denials: set[str] = set()
        consenting: set[str] = set()
        registrations: dict[str, int] = {}  # person (the Patient id's key) -> institutions registering them
        for write in population(people, seed):
            for resource in write.resources:
                if resource["resourceType"] == "Patient":
                    key = resource["id"].rsplit("-", 1)[-1]
                    registrations[key] = registrations.get(key, 0) + 1
                elif resource["resourceType"] == "Task":
                    referrals[resource["id"]] = resource["status"]
                elif resource["resourceType"] == "Consent":
                    consents.add(resource["id"])
                    consenting.add(resource["id"].split("-")[1])  # {institution}-{person}-consent
                    if (resource.get("provision") or {}).get("provision"):
                        denials.add(resource["id"])
            if write.step is not None:
                # A workflow step already taken (a second load): a Task never goes back a state.
                stream = application.stream(write.step[0], write.step[1])
                if stream is not None and stream.version >= write.step[2]:
                    continue
            context = WriteContext(
                institution=write.institution, unit=write.unit, user=write.user, interaction="update"
            )
            pendings = [application.prepare_update(r["resourceType"], r["id"], r, context) for r in write.resources]
            written = application.commit(pendings)
            counts["writes"] += 1
            counts["resources"] += len(written)
            counts["stored"] += sum(1 for w in written if w.notification_id is not None)
        services.projector.catch_up()
        services.identity.catch_up()
        with services.views.read() as tx:
            counts.update(services.identity.counts(tx))
    finally:
        services.close()
    counts["seconds"] = round(time.perf_counter() - started)
    counts["persons_at_several"] = sum(1 for n in registrations.values() if n > 1)
    counts["consents"] = len(consents)
    counts["persons_consenting"] = len(consenting)
    counts["consents_with_denials"] = len(denials)
    for status in ("requested", "accepted", "completed", "rejected", "cancelled"):
        counts[f"referrals_{status}"] = sum(1 for s in referrals.values() if s == status)
    if not quiet:
        print(
            f"ehr demo: {counts['resources']:,} resources in {counts['writes']:,} writes "
            f"({counts['stored']:,} new versions) in {counts['seconds']} s; "
            f"{counts['patients']} Patient records of {counts['persons']} persons in the index, "
            f"{counts['review']} possible matches waiting for review",
            flush=True,
        )
        print(
            f"ehr demo: sharing — {counts['persons_at_several']} persons with records at several institutions; "
            f"{counts['persons_consenting']} of them consented to share ({counts['consents']} Consents, one per "
            f"institution's record; {counts['consents_with_denials']} with a deny provision); "
            f"referrals: {len(referrals)} ("
            + ", ".join(
                f"{counts[f'referrals_{s}']} {s}"
                for s in ("requested", "accepted", "completed", "rejected", "cancelled")
            )
            + ")",
            flush=True,
        )
    return counts


def run(args: argparse.Namespace) -> int:
    if args.data is not None:
        os.environ["EHR_DATA_DIR"] = str(args.data)
    load(args.people, args.seed)
    if args.no_serve:
        return 0
    from fhir_api.server import serve

    return serve(args.host, args.port, args.data, args.workers, args.log_level)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="generate and load a synthetic population across IMSS, ISSSTE and IMSS-Bienestar, then serve it",
    )
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--no-serve", action="store_true", help="load only")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--data", type=Path, default=None, help="SQLite data directory (default ./ehr-data)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="warning")
    parser.set_defaults(handler=run)
