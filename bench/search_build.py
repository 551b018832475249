"""Search index build cost per resource, today's code beside the code before the generated registry:
``python -m bench.search_build [--resources N] [--baseline COMMIT]`` (also ``python -m bench.search --build-cost``).

The registry generated from R4's ``search-parameters.json`` indexes every parameter of every type (about ten
times the parameters the hand-transcribed table had), so each resource gives more index rows. What that
costs is measured on the same synthetic resources (:class:`bench.search.Generator`'s mix, written once
to a file) by each tree's own code, in child processes that take turns, three times each (the fastest try
of each counts: the machine is shared):

- **extract**: ``projections.search.extract.extract`` of every resource (in process, no database; the
  fastest of five passes);
- **import**: the search index view's ``apply`` (keys, delete, extract, insert) of one resource per
  transaction, pipelined, into a fresh schema with every index in place: what a create's
  read-your-writes projection does (``projections/projector.py`` pipelines batches this small);
- **rebuild**: ``apply`` of the tree's own rebuild batches (``REBUILD_BATCH_SIZE``, 5,000 events, where
  ``projections/rebuild.py`` has it; else the projector's 500; ``--rebuild-batch`` for one size for both)
  with the readers' indexes dropped, then those indexes built: what ``ehr rebuild`` does.

Today's tree also has the full-text view (``_text``/``_content``, applied after the search index in the
same transaction); its cost is given beside, and with it in the ratio. The baseline tree is a temporary
``git worktree`` of ``--baseline`` under /tmp (the parent of the commit that made ``definitions.py``
generated, the hand-transcribed table), removed at the end. Target: ≤ 1.5x the baseline per resource.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

#: The parent of "Search parameter table generated from R4 search-parameters.json": the hand-transcribed table.
BASELINE = "9116e9a^"
TARGET = 1.5
ROOT = Path(__file__).resolve().parent.parent
_REBUILD_BATCH = 500
_EXTRACT_PASSES = 5


# -- the child: one tree's code ----------------------------------------------------------------------


def _rebuild_batch() -> int:
    """The tree's own rebuild batch: a shadow's (``REBUILD_BATCH_SIZE``), or the projector's before it had one."""
    try:
        from projections.rebuild import REBUILD_BATCH_SIZE
    except ImportError:
        return _REBUILD_BATCH
    return int(REBUILD_BATCH_SIZE)


def worker(tree: str, sample: str, conninfo: str, rebuild_batch: int = 0) -> dict[str, Any]:
    """Measure ``tree``'s code (imported from it, not from this checkout) on the resources in ``sample``."""
    sys.path.insert(0, tree)
    import orjson
    import psycopg
    from psycopg import sql

    from projections.changes import Change
    from projections.db import PostgresViews
    from projections.search.extract import extract
    from projections.search.index import SearchIndex
    from projections.search.registry import parameters, searchable_types

    try:
        from projections.search.fulltext import FullTextIndex

        fulltext: Any = FullTextIndex
    except ImportError:  # the baseline has no full-text view
        fulltext = None
    resources = [orjson.loads(line) for line in Path(sample).read_bytes().splitlines()]
    types = sorted({str(resource["resourceType"]) for resource in resources})
    rebuild_batch = rebuild_batch or _rebuild_batch()
    result: dict[str, Any] = {
        "tree": tree,
        "rebuild_batch": rebuild_batch,
        "resources": len(resources),
        "parameters": {kind: len(parameters(kind)) for kind in types},
        "registry_parameters": sum(len(parameters(kind)) for kind in searchable_types()),
        "registry_types": len(searchable_types()),
    }
    passes = []
    for _ in range(_EXTRACT_PASSES):  # the fastest pass: the least disturbed by the machine's other work
        tick = time.perf_counter()
        rows = [extract(resource) for resource in resources]
        passes.append(time.perf_counter() - tick)
    result["extract_s"] = min(passes)
    result["rows"] = sum(len(getattr(found, name)) for found in rows for name in vars(found))
    instant = "2026-01-01T00:00:00.000000+00:00"
    changes = [
        Change(
            number + 1,
            str(r["resourceType"]),
            str(r["id"]),
            1,
            instant,
            datetime_now(),
            "POST",
            orjson.dumps(r),
            [],
            {},
        )
        for number, r in enumerate(resources)
    ]
    for mode in ("import", "rebuild"):
        schema = f"bench_build_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        views = PostgresViews(conninfo, schema, pool_size=1)
        try:
            index = SearchIndex()
            text = fulltext() if fulltext is not None else None
            with views.write() as tx:
                index.create(tx, "postgres")
                if text is not None:
                    text.create(tx, "postgres")
            readers = tuple(index.query_indexes) + (tuple(text.query_indexes) if text is not None else ())
            deferred: list[str] = []
            if mode == "rebuild":
                with psycopg.connect(conninfo, autocommit=True) as admin:
                    deferred = [
                        str(row[1])
                        for row in admin.execute(
                            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = ANY(%s)",
                            (schema, list(readers)),
                        ).fetchall()
                    ]
                    for name in readers:
                        admin.execute(
                            sql.SQL("DROP INDEX IF EXISTS {}.{}").format(*map(sql.Identifier, (schema, name)))
                        )
            size = 1 if mode == "import" else rebuild_batch
            index_s = text_s = 0.0
            started = time.perf_counter()
            for start in range(0, len(changes), size):
                batch = changes[start : start + size]
                with views.write() as tx, tx.pipelined() if size == 1 else _nothing():
                    tick = time.perf_counter()
                    index.apply(tx, batch)
                    index_s += time.perf_counter() - tick
                    if text is not None:
                        tick = time.perf_counter()
                        text.apply(tx, batch)
                        text_s += time.perf_counter() - tick
            create_s = 0.0
            if deferred:
                tick = time.perf_counter()
                with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as admin:
                    for definition in deferred:
                        admin.execute(definition)
                create_s = time.perf_counter() - tick
            result[mode] = {
                "wall_s": time.perf_counter() - started,
                "search_index_s": index_s,
                "fulltext_s": text_s,
                "create_indexes_s": create_s,
            }
        finally:
            views.close()
            with psycopg.connect(conninfo, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    return result


def datetime_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


# -- the parent: sample, trees, turns, ratios --------------------------------------------------------


def _per_resource(result: dict[str, Any]) -> dict[str, float]:
    """Microseconds per resource of each figure (rebuild: the load and its reader indexes built after)."""
    n = result["resources"]
    found = {"extract": result["extract_s"]}
    for mode in ("import", "rebuild"):
        figures = result[mode]
        found[f"{mode} search index"] = figures["search_index_s"] + figures["create_indexes_s"] * (mode == "rebuild")
        found[f"{mode} full-text view"] = figures["fulltext_s"]
        found[f"{mode} wall (with full text)"] = figures["wall_s"]
    return {name: seconds / n * 1e6 for name, seconds in found.items()}


#: A try whose child found the shared server out of connections runs again, after a pause, this many times.
_CONNECTION_RETRIES = 5


def _child(tree: str, sample: str, conninfo: str, what: str, rebuild_batch: int = 0) -> str:
    """One try's output; a failed child's own error is raised (not only its exit status)."""
    for attempt in range(_CONNECTION_RETRIES + 1):
        child = subprocess.run(
            [sys.executable, "-m", "bench.search_build", "--worker", tree, "--sample", sample, "--conninfo", conninfo,
             "--rebuild-batch", str(rebuild_batch)],
            cwd=ROOT, check=False, capture_output=True, text=True,
        )  # fmt: skip
        if not child.returncode:
            return child.stdout
        if "too many clients" not in child.stderr or attempt == _CONNECTION_RETRIES:
            break
        print(f"  {what}: the server has no free connection, again in 30 s", file=sys.stderr, flush=True)
        time.sleep(30)
    raise RuntimeError(f"{what} failed:\n{child.stderr[-3000:]}")


def measure(resources: int, baseline: str, conninfo: str, rounds: int = 3, rebuild_batch: int = 0) -> dict[str, Any]:
    from bench.search import Generator

    work = Path(tempfile.mkdtemp(prefix="ehr-search-build-"))
    sample = work / "resources.jsonl"
    import orjson

    with sample.open("wb") as out:
        for resource in Generator(resources).resources():
            out.write(orjson.dumps(resource) + b"\n")
    commit = subprocess.run(
        ["git", "rev-parse", baseline], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    old_tree = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old_tree), commit], cwd=ROOT, check=True)
    trees = {"today": str(ROOT), "baseline": str(old_tree)}
    best: dict[str, dict[str, float]] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for number in range(rounds):
            for name, tree in trees.items():
                print(f"  build cost: {name} ({tree}), try {number + 1}/{rounds}", file=sys.stderr, flush=True)
                output = _child(tree, str(sample), conninfo, f"{name} try {number + 1}", rebuild_batch)
                result = json.loads(output.strip().splitlines()[-1])
                figures = _per_resource(result)
                results[name] = result
                kept = best.setdefault(name, figures)
                for figure, value in figures.items():
                    kept[figure] = min(kept[figure], value)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, check=False)
        sample.unlink(missing_ok=True)
        work.rmdir() if not any(work.iterdir()) else None
    return {"baseline_commit": commit, "per_resource_us": best, "results": results}


def report(found: dict[str, Any]) -> str:
    today, before = found["per_resource_us"]["today"], found["per_resource_us"]["baseline"]
    results = found["results"]
    count = results["today"]["resources"]
    lines = [
        f"index build cost per resource ({count:,} resources; fastest of the tries; baseline "
        f"{found['baseline_commit'][:9]}, the hand-transcribed table)",
        f"  rebuild batch: today {results['today']['rebuild_batch']:,}, baseline "
        f"{results['baseline']['rebuild_batch']:,} events",
        f"  registry: today {results['today']['registry_parameters']:,} parameters over "
        f"{results['today']['registry_types']} types, baseline {results['baseline']['registry_parameters']:,} over "
        f"{results['baseline']['registry_types']}",
        f"  parameters of the generated types: today {sum(results['today']['parameters'].values())}, "
        f"baseline {sum(results['baseline']['parameters'].values())}; index rows per resource: today "
        f"{results['today']['rows'] / count:.1f}, baseline {results['baseline']['rows'] / count:.1f}",
        f"  {'figure (µs per resource)':<34} {'today':>9} {'baseline':>9} {'ratio':>7}  target ≤ {TARGET}x",
    ]
    for figure in today:
        if not before[figure]:  # the full-text view: the baseline has none
            lines.append(f"  {figure:<34} {today[figure]:9.1f} {'-':>9} {'-':>7}")
            continue
        ratio = today[figure] / before[figure]
        verdict = "ok" if ratio <= TARGET else "OVER"
        lines.append(f"  {figure:<34} {today[figure]:9.1f} {before[figure]:9.1f} {ratio:6.2f}x  {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search_build", description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=3000, help="synthetic resources measured (default 3,000)")
    parser.add_argument("--baseline", default=BASELINE, help=f"the commit to compare with (default {BASELINE})")
    parser.add_argument("--rounds", type=int, default=3, help="tries of each tree, taking turns (default 3)")
    parser.add_argument(
        "--rebuild-batch", type=int, default=0, help="events per rebuild batch for both trees (default: each its own)"
    )
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sample", help=argparse.SUPPRESS)
    parser.add_argument("--conninfo", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.sample, args.conninfo, args.rebuild_batch)))
        return 0
    from bench.pg import DEFAULT_URL, available, conninfo

    url = args.postgres_url or DEFAULT_URL
    problem = available(url)
    if problem is not None:
        print(f"PostgreSQL at {url} is not answering: {problem}", file=sys.stderr)
        return 1
    print(report(measure(args.resources, args.baseline, conninfo(url), args.rounds, args.rebuild_batch)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
