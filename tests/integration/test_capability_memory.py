"""``GET /metadata`` costs a server no model classes (R4 §3.1.0.10 "capabilities").

The statement lists every type's search parameters, includes and revincludes: read from the generated
tables (projections/search/definitions.py), never by compiling every parameter, which needs the R4B model
class of each of the 140-odd types. A server keeps what it imported for its whole life, so the first
``/metadata`` (what every client, load balancer and benchmark asks first) would otherwise grow each server
process by tens of MiB. Measured in a fresh interpreter: the model modules loaded and the resident memory,
before and after the first request, the bound taken from the same process's own size before it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.server import REPO

_CHILD = """
import json, sys
from fastapi.testclient import TestClient
from ehr_core.settings import Settings
from fhir_api.app import create_app


def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def models():
    return sorted(name for name in sys.modules if name.startswith("fhir.resources.R4B."))


with TestClient(create_app(Settings())) as client:
    client.get("/fhir/Patient/none")  # one request first: the app's own lazily built parts are not counted
    before, loaded = rss_kib(), models()
    answer = client.get("/fhir/metadata")
    statement = answer.json()
    print(json.dumps({
        "status": answer.status_code,
        "types": len(statement["rest"][0]["resource"]),
        "includes": sum(len(r.get("searchRevInclude", [])) for r in statement["rest"][0]["resource"]),
        "before": before,
        "after": rss_kib(),
        "loaded": loaded,
        "new": sorted(set(models()) - set(loaded)),
    }))
"""


def test_the_first_metadata_imports_no_model_class_and_keeps_the_process_size(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EHR_")}
    env |= {"EHR_DATA_DIR": str(tmp_path / "data"), "EHR_AUTH": "disabled-for-development"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["status"] == 200 and found["types"] > 140 and found["includes"] > 1000, found
    # A Patient read builds the Patient model at most; the statement adds none of the other types' models.
    assert found["new"] == [], found["new"][:20]
    # Every model class would add tens of MiB to a process of about 200; the statement itself is under one.
    assert found["after"] - found["before"] < found["before"] // 10, (found["before"], found["after"])
