"""What every fuzzed answer must be, and the check that the store survived the fuzzing.

A real server process (``ehr serve``, tests/support/server.py) is the target: the bytes go through
uvicorn, the middlewares and the error mapping exactly as a hospital's client would send them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ehr_core.resources.xml import from_xml
from ehr_core.settings import Settings
from fhir_api.services import Services
from tests.support.schemas import drop_schema
from tests.support.server import REPO, running_server

__all__ = [
    "FuzzTarget",
    "assert_fhir_answer",
    "assert_rebuild_equals_live",
    "check_answer",
    "fhir_body",
    "fuzz_target",
    "ledger_verifies",
]

#: Limits low enough that fuzzing reaches them (fhir_api/limits.py), so their answers are fuzzed too.
FUZZ_LIMITS = {
    "EHR_MAX_BODY_BYTES": str(256 * 1024),
    "EHR_MAX_BUNDLE_ENTRIES": "40",
    "EHR_MAX_JSON_DEPTH": "60",
    "EHR_MAX_COUNT": "50",
}


@dataclass
class FuzzTarget:
    backend: str
    base_url: str
    settings: Settings
    log: Path
    _stack: ExitStack = field(default_factory=ExitStack)
    #: Every request sent and its status, for the report printed at the end.
    statuses: dict[int, int] = field(default_factory=dict)

    def stop(self) -> None:
        self._stack.close()

    def server_log(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def assert_fhir_answer(response: httpx.Response, what: str, target: FuzzTarget | None = None) -> None:
    """No 5xx, ever; every 4xx is an OperationOutcome with at least one error issue (R4 §6.1.3)."""
    content_type = response.headers.get("content-type", "")
    check_answer(response.status_code, response.request.method, content_type, response.content, what, target)


def check_answer(
    status: int, method: str, content_type: str, body: bytes, what: str, target: FuzzTarget | None = None
) -> None:
    if target is not None:
        target.statuses[status] = target.statuses.get(status, 0) + 1
    text = body.decode("utf-8", "replace")
    log = f"\nserver log:\n{target.server_log()}" if target is not None and status >= 500 else ""
    assert status < 500, f"{what} -> {status} {text[:800]}{log}"
    if status < 400 or method == "HEAD":
        return
    try:
        outcome = fhir_body(content_type, body)
    except ValueError:
        raise AssertionError(f"{what} -> {status} with a body that is not FHIR: {text[:300]!r}") from None
    assert isinstance(outcome, dict) and outcome.get("resourceType") == "OperationOutcome", (
        f"{what} -> {status} without an OperationOutcome: {text[:300]}"
    )
    issues = outcome.get("issue")
    assert isinstance(issues, list) and issues, f"{what} -> {status}: OperationOutcome without issues"
    assert all(issue.get("severity") in ("fatal", "error") for issue in issues), f"{what} -> {status}: {issues}"
    # In the format asked for (Accept, fhir_api/formats.py): FHIR JSON, or FHIR XML.
    assert "application/fhir+json" in content_type or "application/fhir+xml" in content_type, (
        f"{what} -> {status} as {content_type!r}"
    )


def fhir_body(content_type: str, body: bytes) -> Any:
    """A FHIR answer in its JSON form, whichever format it came in (``XmlError`` is a ``ValueError``)."""
    if "application/fhir+xml" in content_type:
        return from_xml(body)
    return json.loads(body)


def _canonical(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[str]]:
    # Row order within a table is not part of the contract; bytes and decimals compare by their text.
    return {table: sorted(repr(row) for row in table_rows) for table, table_rows in rows.items()}


def assert_rebuild_equals_live(settings: Settings) -> int:
    """The views as the server left them equal the views rebuilt from the log alone; returns the row count.

    Call it with the server stopped: the rebuild empties the views it would be reading.
    """
    services = Services.open(settings, follow=False)
    try:
        live = services.projector.dump()
        services.projector.reset()
        services.projector.catch_up()
        rebuilt = services.projector.dump()
    finally:
        services.close()
    assert _canonical(rebuilt) == _canonical(live), "the views rebuilt from the log differ from the live views"
    return sum(len(rows) for rows in live.values())


def ledger_verifies(settings: Settings) -> str:
    """Run ``ehr verify`` (the clinical log's ledger) as an operator would; return its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env |= {"EHR_DATA_DIR": str(settings.data_dir), "EHR_AUTH": "disabled-for-development"}
    if settings.uses_postgres:
        env |= {"EHR_DATABASE_URL": str(settings.database_url), "EHR_POSTGRES_SCHEMA": settings.postgres_schema}
    done = subprocess.run(
        [sys.executable, "-m", "fhir_api.cli", "verify"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"ehr verify exited {done.returncode}:\n{output[-3000:]}"
    return output


@contextmanager
def fuzz_target(backend: str, tmp: Path, postgres_url: str | None) -> Iterator[FuzzTarget]:
    """A server process on ``backend`` with the fuzzing limits; a fresh PostgreSQL schema dropped after."""
    data = tmp / "ehr-data"
    schema = f"fuzz_{uuid.uuid4().hex[:10]}"
    env = dict(FUZZ_LIMITS)
    if backend == "postgres":
        assert postgres_url is not None
        env |= {"EHR_DATABASE_URL": postgres_url, "EHR_POSTGRES_SCHEMA": schema, "EHR_POSTGRES_POOL_SIZE": "4"}
        settings = Settings(database_url=postgres_url, postgres_schema=schema, data_dir=data, postgres_pool_size=2)
    else:
        settings = Settings(data_dir=data, database_url=None)
    try:
        with ExitStack() as outer:
            stack = ExitStack()
            outer.callback(stack.close)
            base_url, log = stack.enter_context(running_server(data, env))
            yield FuzzTarget(backend, base_url, settings, log, stack)
    finally:
        if backend == "postgres":
            drop_schema(settings.postgres_conninfo(), schema)


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
