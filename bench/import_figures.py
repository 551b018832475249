"""Import figures: resources/s of `ehr import` on the Synthea corpus, and its memory at two input sizes.

Each size runs in its own child process (so its peak RSS is its own, not this process's): a warm-up
import of one file into a throwaway SQLite directory builds the R4B model classes, then the measured
import runs :func:`bench.import_throughput._import` (the importer beside a projector process, as ``ehr
import`` runs them; the clock stops when everything is projected) into a fresh PostgreSQL schema. This
process samples the RSS of the child and its projector process meanwhile. The baseline is raw COPY of the
same resource bytes into a two-column table. The larger import's schema is kept for the rebuild figures.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.import_throughput import CORPUS, _copy, _import, _resource_bytes, _settings
from bench.memory import RssSampler
from bench.stats import CpuClock, other_percent

__all__ = ["ImportRun", "copy_rate", "corpus_sizes", "measure_import"]


@dataclass
class ImportRun:
    files: int
    resources: int = 0
    seconds: float = float("nan")
    rss_peak_mb: float = float("nan")
    rss_samples: list[float] = field(default_factory=list, repr=False)
    #: Other processes' CPU during the import, % of one core (noise).
    other_cpu: float = float("nan")

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds > 0 else float("nan")


def corpus_sizes(quick: bool) -> tuple[list[Path], list[Path]]:
    """(smaller, larger) inputs: smart-r4-2019 then the whole corpus (3,507 and 9,251 resources);
    with ``--quick`` a third of smart-r4-2019, then all of it."""
    from ehr_core.importing import Importer

    smart = Importer.sources([CORPUS / "smart-r4-2019"])
    if quick:
        return smart[: len(smart) // 3], smart
    return smart, Importer.sources([CORPUS / "smart-r4-2019", CORPUS / "fhir-data-pipes-2021"])


def _child(settings: Any, files: list[Path], warm: Path, pipe: Any) -> None:
    from ehr_core.importing import Importer
    from ehr_core.settings import Settings
    from fhir_api.resolver import ViewResolver
    from fhir_api.services import Services

    with tempfile.TemporaryDirectory(prefix="ehr-bench-warm-") as directory:
        services = Services.open(Settings(data_dir=Path(directory)), follow=False)
        try:
            Importer(services.application, ViewResolver(services), lambda _: None).run([warm])
        finally:
            services.close()
    pipe.send("measuring")
    stored, seconds = _import(settings, files)
    pipe.send((stored, seconds))


def measure_import(files: list[Path], data_dir: Path, schema: str, url: str) -> ImportRun:
    """Import ``files`` into ``schema`` in a child process; RSS sampled from the warm-up's end to the finish."""
    run = ImportRun(len(files))
    settings = _settings("postgres", data_dir, schema, url)
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    warm = next(path for path in files if b'"batch"' not in path.read_bytes()[:4096])  # a patient's transaction
    child = context.Process(target=_child, args=(settings, files, warm, theirs), name="bench-import")
    child.start()
    sampler: RssSampler | None = None
    clock = CpuClock(child.pid, with_db=True)  # the child's CPU includes its projector's once reaped
    began = time.perf_counter()
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and child.is_alive():
            if not ours.poll(0.2):
                continue
            message = ours.recv()
            if message == "measuring":
                sampler = RssSampler(child.pid or 0, interval=0.1).start()
                clock.start()
                began = time.perf_counter()
                continue
            run.resources, run.seconds = message
            run.other_cpu = other_percent(clock.stop(), time.perf_counter() - began)
            break
        if sampler is not None:
            sampler.stop()
            run.rss_peak_mb, run.rss_samples = sampler.peak_mb, sampler.samples
        child.join(timeout=60)
        if run.resources == 0:
            raise RuntimeError(f"import of {len(files)} files ended without a result (exit code {child.exitcode})")
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    return run


def copy_rate(files: list[Path], url: str) -> tuple[int, float]:
    """(rows, rows/s) of raw COPY of the same resource bytes."""
    rows = _resource_bytes([path for path in files if path.suffix == ".json"])
    seconds = _copy(url, rows)
    return len(rows), len(rows) / seconds
