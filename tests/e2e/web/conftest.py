"""Browser tests of the web view: a real server process on the demo population, headless Chromium.

- ``backend``: SQLite, then PostgreSQL (a fresh schema; required under ``CI=true``, like every PG test).
- ``demo_data``: ``ehr demo --no-serve`` run as a process into a data directory shared by the module.
- ``web_server`` / ``web_server_auth``: ``ehr serve`` on that directory with auth disabled / required
  (tests/support/server.py), after a third Patient record (same CURP, the third institution) with an
  encounter has been written through the FHIR API, so one person is treated at IMSS, ISSSTE and
  IMSS-Bienestar.
- ``browser``: Debian's Chromium (``/usr/bin/chromium``, ``make browser``) driven by Playwright. Missing,
  it skips locally and fails under ``CI=true``.
- ``page``: a 1280x800 page that records console errors and uncaught exceptions; each test asserts none.
  ``shoot(page, name)`` saves ``build/screenshots/web/{name}.png``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ehr_core.settings import Settings
from tests.support.schemas import drop_schema
from tests.support.server import REPO, running_server

CHROMIUM = Path(os.environ.get("EHR_TEST_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = REPO / "build" / "screenshots" / "web"
DEMO_PEOPLE = 40
CURP_SYSTEM = "urn:oid:2.16.840.1.113883.4.629"
CLUES_SYSTEM = "urn:oid:2.16.840.1.113883.4.631"
#: One unit per institution, from the demo's units (ehr_core/demo/population.py).
UNITS = {"IMSS": "DFIMS000020", "ISSSTE": "DFIST000312", "IMSS-BIENESTAR": "OCIMB000123"}
UNIT_NAMES = {
    "DFIMS000020": "UMF 20 Vallejo",
    "DFIST000312": "Hospital Regional 1o de Octubre",
    "OCIMB000123": "Centro de Salud Rural San Juan Bautista",
}
RECORD_SYSTEMS = {
    "IMSS": "urn:ehr-core:sid:imss:expediente",
    "ISSSTE": "urn:ehr-core:sid:issste:expediente",
    "IMSS-BIENESTAR": "urn:ehr-core:sid:imss-bienestar:expediente",
}


@dataclass
class Demo:
    base_url: str  # http://127.0.0.1:PORT (the web view is under /web, FHIR under /fhir)
    data_dir: Path
    #: the person treated at three institutions: Patient id per institution
    records: dict[str, str] = field(default_factory=dict)
    family: str = ""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EHR_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The server's backend settings: SQLite files, or a fresh PostgreSQL schema (dropped afterwards)."""
    if request.param == "sqlite":
        yield {}
        return
    url: str = request.getfixturevalue("postgres_url")  # tests/conftest.py: fails under CI=true if absent
    schema = f"w_{uuid.uuid4().hex[:12]}"
    yield {"EHR_DATABASE_URL": url, "EHR_POSTGRES_SCHEMA": schema}
    drop_schema(Settings(database_url=url).postgres_conninfo(), schema)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory, backend: dict[str, str]) -> Path:
    data_dir = tmp_path_factory.mktemp("web") / "ehr-data"
    command = [sys.executable, "-m", "fhir_api.cli", "demo", "--people", str(DEMO_PEOPLE), "--no-serve"]
    done = subprocess.run(
        [*command, "--data", str(data_dir)],
        cwd=REPO,
        env=_env() | backend,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return data_dir


def _headers(institution: str) -> dict[str, str]:
    return {
        "Content-Type": "application/fhir+json",
        "X-EHR-Institution": institution,
        "X-EHR-Unit": UNITS[institution],
        "X-EHR-User": "e2e-registro",
    }


def _source_institution(resource: dict[str, Any]) -> str:
    source = str(resource["meta"]["source"])  # urn:ehr-core:source:{institution}:{CLUES}
    return source.removeprefix("urn:ehr-core:source:").rsplit(":", 1)[0]


def third_institution(fhir: str, http: httpx.Client, write_headers: Any = _headers) -> Demo:
    """Find a demo person with records at two institutions and a CURP; register them at the third."""
    bundle = http.get(f"{fhir}/Patient", params={"_count": "500"}).json()
    for entry in bundle.get("entry", []):
        # The read serves the MPI's seealso links (a search serves the stored bytes only).
        patient = http.get(f"{fhir}/Patient/{entry['resource']['id']}").json()
        others = [link["other"]["reference"] for link in patient.get("link", []) if link.get("type") == "seealso"]
        curp = next((i["value"] for i in patient.get("identifier", []) if i.get("system") == CURP_SYSTEM), None)
        if len(others) != 1 or curp is None:
            continue
        everything = http.get(f"{fhir}/Patient/{patient['id']}/$everything", params={"_type": "Patient"}).json()
        records = {_source_institution(e["resource"]): e["resource"]["id"] for e in everything["entry"]}
        if len(records) != 2:
            continue
        third = next(name for name in UNITS if name not in records)
        record_id = f"e2e-{third.lower()}-{patient['id']}"
        registration = {
            "resourceType": "Patient",
            "id": record_id,
            "identifier": [
                {"use": "official", "system": CURP_SYSTEM, "value": curp},
                {"use": "usual", "system": RECORD_SYSTEMS[third], "value": f"E2E{patient['id']}"},
            ],
            "name": patient["name"],
            "gender": patient["gender"],
            "birthDate": patient["birthDate"],
        }
        answer = http.put(f"{fhir}/Patient/{record_id}", json=registration, headers=write_headers(third))
        assert answer.status_code == 201, answer.text
        encounter = {
            "resourceType": "Encounter",
            "id": f"{record_id}-e1",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
            "subject": {"reference": f"Patient/{record_id}"},
            "period": {"start": "2025-06-01T09:30:00-06:00", "end": "2025-06-01T11:00:00-06:00"},
            "location": [{"location": {"reference": f"Location/{UNITS[third].lower()}"}}],
        }
        answer = http.put(f"{fhir}/Encounter/{encounter['id']}", json=encounter, headers=write_headers(third))
        assert answer.status_code == 201, answer.text
        person = http.get(f"{fhir}/Patient/{record_id}/$person").json()
        linked = {link["target"]["reference"].removeprefix("Patient/") for link in person["link"]}
        assert linked == {*records.values(), record_id}, person
        family = str(patient["name"][0]["family"])
        return Demo(fhir.removesuffix("/fhir"), Path(), {**records, third: record_id}, family)
    raise AssertionError("the demo population has no person with records at two institutions and a CURP")


@pytest.fixture(scope="module")
def web_server(demo_data: Path, backend: dict[str, str]) -> Iterator[Demo]:
    """The demo served with auth disabled for development (no login)."""
    with running_server(demo_data, backend) as (fhir, _log), httpx.Client(timeout=30) as http:
        demo = third_institution(fhir, http)
        demo.data_dir = demo_data
        yield demo


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Console:
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Any, console: Console) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="es-MX")
    tab = context.new_page()
    tab.on("console", lambda message: console.errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: console.errors.append(f"uncaught: {error}"))
    tab.set_default_timeout(15_000)
    try:
        yield tab
    finally:
        context.close()


def shoot(page: Any, name: str, full_page: bool = False) -> Path:
    """Save the page at 1280x800 (``full_page``: the whole length, for a human to review)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def mint_token(data_dir: Path, institution: str, user: str, role: str = "physician") -> str:
    """``ehr token`` run as a process, from the data directory's development issuer (as the README says)."""
    command = [
        sys.executable,
        "-m",
        "fhir_api.cli",
        "token",
        "--institution",
        institution,
        "--unit",
        UNITS[institution],
        "--user",
        user,
        "--role",
        role,
        "--data",
        str(data_dir),
    ]
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def web_server_auth(demo_data: Path, backend: dict[str, str]) -> Iterator[Demo]:
    """The demo served with auth required (``EHR_AUTH=required``): the pages need a token."""
    with running_server(demo_data, backend) as (fhir, _log), httpx.Client(timeout=30) as http:
        demo = third_institution(fhir, http)  # written before auth is switched on
    with running_server(demo_data, backend | {"EHR_AUTH": "required"}) as (fhir, _log):
        demo.base_url = fhir.removesuffix("/fhir")
        demo.data_dir = demo_data
        yield demo
