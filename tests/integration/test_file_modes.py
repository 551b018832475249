"""Every file the server writes is its owner's only (0600 files, 0700 directories), on SQLite.

The data dir holds the logs, views, audit trail, bulk exports and keys: patients' records and what decrypts
and signs them. The test runs under a permissive umask (0022), so the modes come from the server itself,
not from the environment the tests happen to run in.
"""

from __future__ import annotations

import argparse
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ehr_core.settings import Settings
from fhir_api.app import create_app
from fhir_api.cli import main
from fhir_api.services import Services


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _loose(root: Path) -> list[str]:
    """Paths under ``root`` (itself included) that group or others may read, write or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {oct(mode)}")
    return found


def test_files_under_the_data_dir_are_owner_only(sqlite_settings: Settings, permissive_umask: None) -> None:
    data = sqlite_settings.data_dir
    (data / "issuers").mkdir(parents=True)  # put there by an operator, with the permissive umask
    (data / "issuers" / "imss.json").write_text("{}")
    services = Services.open(sqlite_settings)
    try:
        with TestClient(create_app(services=services)) as client:
            created = client.post("/fhir/Patient", json={"resourceType": "Patient", "birthDate": "1980-01-01"})
            assert created.status_code == 201, created.text
            kick_off = client.get("/fhir/$export", headers={"Prefer": "respond-async"})
            assert kick_off.status_code == 202, kick_off.text
            status = kick_off.headers["content-location"].split("testserver")[1]
            for _ in range(600):
                if client.get(status).status_code == 200:
                    break
                time.sleep(0.05)
            assert client.get("/fhir/AuditEvent").status_code == 200  # the audit entries, projected
            assert services.compliance is not None
            services.compliance.ledger.seal(partial=True)
            names = {p.name for p in data.rglob("*")}  # while open: the -wal and -shm files are there
            for expected in (
                "events.sqlite",
                "views.sqlite",
                "views.sqlite-wal",
                "views.sqlite-shm",
                "audit.sqlite",
                "exports",
                "Patient.ndjson",
                "manifest.json",
                "ledger-key.pem",
                "ledger.json",
            ):
                assert expected in names, sorted(names)
            assert _loose(data) == []
    finally:
        services.close()
    assert _loose(data) == []


def test_the_command_line_sets_an_owner_only_umask(
    sqlite_settings: Settings, permissive_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files made by libraries (SQLite's journals, uvicorn) get the process's umask: every ``ehr`` command
    narrows it while it runs, and gives it back to an in-process caller afterwards."""
    monkeypatch.setenv("EHR_DATA_DIR", str(sqlite_settings.data_dir))
    monkeypatch.delenv("EHR_DATABASE_URL", raising=False)
    seen: list[int] = []

    def handler(_: object) -> int:
        seen.append(os.umask(0o077))
        return 0

    from fhir_api import cli

    original = cli.build_parser

    class Parser:
        def parse_args(self, argv: list[str] | None) -> argparse.Namespace:
            args = original().parse_args(argv)
            args.handler = handler
            return args

    monkeypatch.setattr(cli, "build_parser", Parser)
    assert main(["verify", "--quiet"]) == 0
    assert seen == [0o077]
    assert os.umask(0o022) == 0o022
