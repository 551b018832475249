"""``ehr import PATH…``: load Bundle files, directories and NDJSON into the store, with progress.

Importing and projecting run side by side: a projector process follows the log while the importer
validates and appends (both are CPU-bound, so processes, not threads). The importer does not wait for the
projections after each commit; a conditional reference or ``ifNoneExist`` catches them up before it
matches. The import ends only when everything is projected, so what it reports is also searchable.

With ``--workers N`` the files are shared among N importing processes. Batch Bundles go first: later
transactions may refer to what they define. NDJSON goes in dependency order, and lines whose conditional
references match nothing until the rest is loaded are resolved last, once every worker is done
(``ehr_core.importing``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ehr_core.importing import Importer, ImportReport, is_batch_head
from ehr_core.settings import Settings
from fhir_api.bootstrap import open_services
from fhir_api.resolver import ViewResolver

__all__ = ["add_parser"]

_DONE = "done"


def _print_report(console: Console, report: ImportReport, seconds: float) -> None:
    rate = (report.stored + report.unchanged) / seconds if seconds > 0 else 0.0
    console.print(
        f"imported {report.files} files: {report.stored} versions stored, {report.unchanged} unchanged, "
        f"{len(report.rejected)} rejected, {report.skipped_chunks} chunks already imported, "
        f"{report.resolved_later} lines stored after the resources they refer to "
        f"({seconds:.1f} s, {rate:,.0f} resources/s)"
    )
    for rejection in report.rejected[:50]:
        console.print(f"  rejected {rejection.source} {rejection.position}: {rejection.reason}")
    if len(report.rejected) > 50:
        console.print(f"  … and {len(report.rejected) - 50} more")
    if report.rejected:
        console.print("Fix the rejected resources and run the same command again: what is stored is skipped.")


def _import(files: list[Path], progress: Any, finish: bool = True, report: ImportReport | None = None) -> ImportReport:
    """Import ``files`` (``finish``: then the deferred lines), or with ``report``, only ``report``'s deferred lines."""
    services = open_services(Settings(postgres_pool_size=2), follow=False)  # one thread each: few connections
    try:
        importer = Importer(services.application, ViewResolver(services), lambda _: None)
        if report is not None:
            importer.finish(report, progress)
            return report
        return importer.run(files, progress, finish)
    finally:
        services.close()


def _end_with_parent() -> None:
    """End this child of ``ehr import`` as soon as the command's own process ends. Killed (SIGKILL, or a
    crash), the command can no longer tell its children to stop: its projector would follow the log forever
    and its workers block on a queue nobody reads, each holding database connections and locks. Ending at
    once loses nothing: a projection batch not committed is rolled back, and ``ehr import`` again resumes."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])  # ready when the parent has exited
        os._exit(1)

    threading.Thread(target=watch, name="ehr-import-parent-watch", daemon=True).start()


def project_until_stopped(stop: Any, settings: Settings | None = None) -> None:
    """Follow the log until told to stop, then finish what is left (the projector process of an import)."""
    _end_with_parent()
    # One thread: a pool of two connections is plenty, and imports run beside servers on one database.
    services = open_services(settings or Settings(postgres_pool_size=2), follow=False)
    try:
        while not stop.wait(0.05):
            services.projector.catch_up()
        services.projector.catch_up()
    finally:
        services.close()


def _worker(files: list[Path], ticks: Any) -> None:
    _end_with_parent()
    report = _import(files, lambda resources, consumed: ticks.put((resources, consumed)), finish=False)
    ticks.put((_DONE, report))


def _merge(total: ImportReport, part: ImportReport) -> None:
    total.files += part.files
    total.stored += part.stored
    total.unchanged += part.unchanged
    total.skipped_chunks += part.skipped_chunks
    total.rejected += part.rejected
    total.deferred += part.deferred
    total.resolved_later += part.resolved_later
    for resource_type, count in part.stored_by_type.items():
        total.stored_by_type[resource_type] = total.stored_by_type.get(resource_type, 0) + count


def _is_batch(path: Path) -> bool:
    if path.suffix not in (".json", ".xml"):
        return False
    with path.open("rb") as source:
        return is_batch_head(source.read(4096))


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        console.print(
            f"ehr import: no such file or directory: {', '.join(missing)}; give Bundle, NDJSON or directories"
        )
        return 2
    files = Importer.sources(args.paths)
    total_bytes = sum(path.stat().st_size for path in files)
    started = time.perf_counter()
    counted = 0
    report = ImportReport()
    columns = (
        TextColumn("[bold]import"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[resources]:,} resources, {task.fields[rate]:,.0f}/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=args.quiet) as bar:
        task = bar.add_task("import", total=total_bytes, resources=0, rate=0.0)

        def tick(resources: int, consumed: int) -> None:
            nonlocal counted
            counted += resources
            elapsed = time.perf_counter() - started
            bar.update(task, advance=consumed, resources=counted, rate=counted / elapsed if elapsed else 0.0)

        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        projector = context.Process(target=project_until_stopped, args=(stop,), name="ehr-import-projector")
        projector.start()
        batches = [path for path in files if _is_batch(path)]
        rest = [path for path in files if path not in batches]
        workers = max(1, min(args.workers, len(rest)))
        if workers == 1:
            _merge(report, _import(files, tick))
        else:
            _merge(report, _import(batches, tick))
            ticks = context.Queue()
            shares = [rest[i::workers] for i in range(workers)]
            processes = [context.Process(target=_worker, args=(share, ticks)) for share in shares]
            for process in processes:
                process.start()
            finished = 0
            while finished < workers:
                try:
                    first, second = ticks.get(timeout=1.0)
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in processes):
                        console.print("ehr import: a worker died; run the same command again to resume")
                        return 3
                    continue
                if first == _DONE:
                    _merge(report, second)
                    finished += 1
                else:
                    tick(first, second)
            for process in processes:
                process.join()
            if report.deferred:  # every worker is done: what their lines refer to is stored, if anywhere
                _import([], tick, report=report)
        bar.update(task, description="projecting")
        stop.set()
        projector.join()
        if projector.exitcode != 0:
            console.print("ehr import: the projector stopped with an error; `ehr import` again catches up")
            return 3
    _print_report(console, report, time.perf_counter() - started)
    return 0 if not report.rejected else 1


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "import",
        help="load transaction/batch Bundle files (JSON or FHIR XML), directories and NDJSON (resumable)",
        description="Resumable: re-running after an interruption skips what was already stored.",
    )
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the files (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)
