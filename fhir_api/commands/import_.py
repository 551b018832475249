"""``ehr import PATH…``: load Bundle files, directories and NDJSON into the store, with progress."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ehr_core.importing import Importer, ImportReport
from ehr_core.settings import Settings
from fhir_api.resolver import ViewResolver
from fhir_api.services import Services

__all__ = ["add_parser"]


def _print_report(console: Console, report: ImportReport, seconds: float) -> None:
    rate = (report.stored + report.unchanged) / seconds if seconds > 0 else 0.0
    console.print(
        f"imported {report.files} files: {report.stored} versions stored, {report.unchanged} unchanged, "
        f"{len(report.rejected)} rejected, {report.skipped_chunks} chunks already imported "
        f"({seconds:.1f} s, {rate:,.0f} resources/s)"
    )
    for rejection in report.rejected[:50]:
        console.print(f"  rejected {rejection.source} {rejection.position}: {rejection.reason}")
    if len(report.rejected) > 50:
        console.print(f"  … and {len(report.rejected) - 50} more")


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        console.print(f"ehr import: no such file or directory: {', '.join(missing)}")
        return 2
    settings = Settings()
    services = Services.open(settings, follow=False)
    try:
        importer = Importer(services.application, ViewResolver(services), services.projector.wait_until)
        files = importer.sources(args.paths)
        total = sum(path.stat().st_size for path in files)
        started = time.perf_counter()
        counted = 0
        columns = (
            TextColumn("[bold]import"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[resources]:,} resources, {task.fields[rate]:,.0f}/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, disable=args.quiet) as progress:
            task = progress.add_task("import", total=total, resources=0, rate=0.0)

            def tick(resources: int, consumed: int) -> None:
                nonlocal counted
                counted += resources
                elapsed = time.perf_counter() - started
                rate = counted / elapsed if elapsed > 0 else 0.0
                progress.update(task, advance=consumed, resources=counted, rate=rate)

            report = importer.run(files, tick)
        _print_report(console, report, time.perf_counter() - started)
        return 0 if not report.rejected else 1
    finally:
        services.close()


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "import",
        help="load transaction/batch Bundle files, directories and NDJSON (resumable)",
        description="Resumable: re-running after an interruption skips what was already stored.",
    )
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)
