"""``ehr rebuild [NAME…]``: rebuild projections from zero beside the live ones and swap them in.

NAME is one of the projections of ``fhir_api/registry.py`` (``resources``: read, history, search, provenance,
access, erasures; ``identity``: the master patient index; ``audit``: the AuditEvent views; ``break_glass``: the
break-the-glass review list; ``terminology``: the CodeSystems and ValueSets of ``$expand``); none means all.
The ledgers are not projections to rebuild: they are signed chains, checked by ``ehr verify``. Nor is the
subscriptions' outbox: it records which events each subscriber was or will be notified of, under their event
numbers. The server may keep running.
"""

from __future__ import annotations

import argparse
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ehr_core.errors import StoreUnavailable
from ehr_core.settings import Settings
from fhir_api.bootstrap import open_services
from fhir_api.registry import REBUILT
from fhir_api.services import Services
from projections.projector import Projector
from projections.rebuild import rebuild

__all__ = ["add_parser", "projectors_named"]


def projectors_named(services: Services, names: list[str]) -> list[Projector]:
    """The projectors to rebuild, in the order asked (registry order when none is named)."""
    wanted = names or list(REBUILT)
    found = {projector.name: projector for projector in services.projectors(wanted)}
    return [found[name] for name in wanted if name in found]


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)
    unknown = sorted(set(args.names) - set(REBUILT))
    if unknown:
        console.print(
            f"ehr rebuild: no projection to rebuild named {', '.join(unknown)}; choose from {', '.join(REBUILT)} "
            "(the subscriptions' outbox is not rebuilt: replayed, it would notify every subscriber of the whole "
            "log again)"
        )
        return 2
    settings = Settings()
    try:
        services = open_services(settings, follow=False)
    except psycopg.OperationalError as error:
        console.print(f"ehr rebuild: cannot reach the database ({str(error).strip()}); check EHR_DATABASE_URL")
        return 1

    columns = (
        TextColumn("[bold]{task.description:<9}"),
        BarColumn(),
        TextColumn("{task.completed:>12,.0f}/{task.total:,.0f} events"),
        TextColumn("{task.fields[rate]:>9,.0f}/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=console, disable=args.quiet) as bar:
            tasks: dict[str, TaskID] = {}

            def progress(name: str, position: int, head: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=head, rate=0.0)
                task = bar.tasks[tasks[name]]
                elapsed = task.elapsed or 0.0
                bar.update(tasks[name], completed=position, total=head, rate=position / elapsed if elapsed else 0.0)

            done = rebuild(settings, projectors_named(services, args.names), progress)
    except StoreUnavailable as error:  # A rebuild reads every institution's log
        console.print(f"ehr rebuild: {error}; a rebuild needs every store of EHR_STORES up")
        return 1
    finally:
        services.close()
    for item in done:
        console.print(
            f"rebuilt {item.name}: {item.events:,} events in {item.seconds:.1f} s ({item.rate:,.0f} events/s), "
            f"{len(item.tables)} tables swapped in"
        )
    return 0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "rebuild",
        help="rebuild projections beside the live ones and swap them in",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(REBUILT)} (default: all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)
