"""The official HL7 FHIR R4 (4.0.1) examples, loaded through the HTTP API on every backend.

Each example that the ``fhir.resources`` R4B models accept, or of an R4 type R4B removed (and whose type
R4 4.0.1 has, and that is not in ``BREAKS_AN_R4_RULE``) must be stored faithfully: a read answers the
file's own JSON, decimals with their exact text, plus only ``meta.versionId`` and ``meta.lastUpdated``.
Each other example must get a 4xx OperationOutcome and leave nothing behind. No file may cause a 5xx.
Which files are accepted is decided
here, independently of the server's own validation.

All files go through one client (one database) per backend; failures are collected and reported together.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class
from httpx import Response

from ehr_core.resources.types import REMOVED_IN_R4B  # validated against the R4 element table, not a model
from tests.conftest import CORPUS

pytestmark = pytest.mark.slow

EXAMPLES = CORPUS / "hl7-examples" / "r4-examples"
FHIR = {"content-type": "application/fhir+json"}
#: A FHIR client reading asks for FHIR: a Binary read without it answers the raw content (R4 binary.html).
ACCEPT_FHIR = {"accept": "application/fhir+json"}
# Bundles of other types (message, *-response, history...) are outside this test.
BUNDLE_TYPES = frozenset({"transaction", "batch", "collection", "document", "searchset"})
SERVER_META = ("versionId", "lastUpdated")
# Resource types new in R4B (4.3.0, "R4B changes"): the R4B models accept them, an R4 server does not.
ADDED_IN_R4B = frozenset(
    {
        "AdministrableProductDefinition",
        "Citation",
        "ClinicalUseDefinition",
        "EvidenceReport",
        "Ingredient",
        "ManufacturedItemDefinition",
        "MedicinalProductDefinition",
        "NutritionProduct",
        "PackagedProductDefinition",
        "RegulatedAuthorization",
        "SubscriptionStatus",
        "SubscriptionTopic",
        "SubstanceDefinition",
    }
)

# Examples that break an error-level invariant or a required binding the server enforces beyond the R4B
# models (ehr_core/resources/validation.py: conformance_issues), each with the rule it breaks quoted from
# the R4 definitions: the server must refuse them. None of the 711 does today: every error-level
# constraint fhirpathpy can evaluate (ehr_core/spec/invariants.py) holds on every published example, and
# so does every required binding of code, Coding and CodeableConcept elements. A rule that starts
# rejecting an example makes this test fail until the example is listed here, after checking that the
# example, not the check, is wrong.
BREAKS_AN_R4_RULE: dict[str, str] = {}

# From shared/corpus/README.md: 716 examples less the 5 message/response Bundles left out above; 15 of
# them the R4B models reject: 13 of types R4B removed, stored all the same (validated against the R4
# element table, ehr_core/resources/r4_only.py), and Evidence-example and Questionnaire-qs1, refused. A guard against
# an empty or changed corpus making the test vacuous: the pass/fail oracle is still the independent check.
EXPECTED_FILES = 711
EXPECTED_REJECTED = 2


@dataclass(frozen=True)
class Example:
    path: Path
    raw: bytes
    resource_type: str
    resource_id: str | None
    #: The independent verdict: None if the server must store the file, else why it must refuse it.
    rejection: str | None

    @property
    def accepted(self) -> bool:
        return self.rejection is None


def _exact(body: bytes) -> Any:
    """Parse keeping decimal text, so 1.50 and 1.5 compare different."""
    return json.loads(body, parse_float=lambda text: ("decimal", text))


def _predicted_rejection(resource: dict[str, Any]) -> str | None:
    """None if the server should store ``resource``, else why not.

    The server speaks R4 (4.0.1) and validates with the R4B models: it stores what both know. An R4 type
    that R4B removed makes ``get_fhir_model_class`` raise; a type R4B added passes the models but is no R4.
    """
    resource_type = resource["resourceType"]
    if resource_type in ADDED_IN_R4B:
        return f"{resource_type} is an R4B type, not R4 4.0.1"
    if resource_type in REMOVED_IN_R4B:
        return None  # an R4 type R4B dropped: HL7's own example of it, valid R4, stored without a model
    try:
        get_fhir_model_class(resource_type).model_validate(resource)
    except Exception as error:  # ValueError for a type R4B lacks, pydantic's ValidationError otherwise
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return None


def _load_examples() -> list[Example]:
    examples = []
    for path in sorted(EXAMPLES.glob("*.json")):
        if path.name == "package.json":
            continue
        raw = path.read_bytes()
        resource = json.loads(raw)
        if resource["resourceType"] == "Bundle" and resource.get("type") not in BUNDLE_TYPES:
            continue
        examples.append(
            Example(
                path,
                raw,
                resource["resourceType"],
                resource.get("id"),
                BREAKS_AN_R4_RULE.get(path.name) or _predicted_rejection(resource),
            )
        )
    return examples


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    """The corpus and the R4B verdict on each file, computed once for both backends."""
    if not EXAMPLES.is_dir():
        pytest.fail(f"HL7 examples not found at {EXAMPLES} (set EHR_CORPUS)")
    return _load_examples()


def _without_server_meta(resource: Any) -> Any:
    """``resource`` less ``meta.versionId``/``meta.lastUpdated`` (and ``meta`` itself if nothing is left)."""
    if not isinstance(resource, dict) or not isinstance(resource.get("meta"), dict):
        return resource
    meta = {k: v for k, v in resource["meta"].items() if k not in SERVER_META}
    rest = {k: v for k, v in resource.items() if k != "meta"}
    return {**rest, "meta": meta} if meta else rest


def _difference(expected: Any, actual: Any, path: str = "$") -> str | None:
    """The first place where two parsed JSON values differ, for a readable failure message."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(expected.keys() | actual.keys()):
            if key not in actual:
                return f"{path}.{key} missing from the read"
            if key not in expected:
                return f"{path}.{key} added by the server: {str(actual[key])[:80]}"
            found = _difference(expected[key], actual[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return f"{path}: {len(expected)} items sent, {len(actual)} read"
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            found = _difference(left, right, f"{path}[{index}]")
            if found:
                return found
        return None
    if expected != actual:
        return f"{path}: sent {str(expected)[:80]}, read {str(actual)[:80]}"
    return None


def _describe(response: Response) -> str:
    return f"{response.status_code} {response.text[:300]}"


def _is_outcome(response: Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"


class Run:
    """One pass over the corpus on one backend, collecting failures instead of stopping at the first."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.failures: list[str] = []
        self.accepted: list[str] = []
        self.rejected: list[str] = []

    def fail(self, example: Example, message: str) -> None:
        self.failures.append(f"{example.path.name}: {message}")

    def request(self, example: Example, method: str, url: str, content: bytes | None = None) -> Response | None:
        try:
            response: Response = self.client.request(
                method, url, content=content, headers=FHIR if content else ACCEPT_FHIR
            )
        except Exception as error:  # the TestClient re-raises what the server did not handle: a 5xx
            self.fail(example, f"{method} {url} raised {type(error).__name__}: {error}")
            return None
        if response.status_code >= 500:
            self.fail(example, f"{method} {url} answered {_describe(response)}")
            return None
        return response

    def write(self, example: Example) -> Response | None:
        if example.resource_id is not None:
            return self.request(example, "PUT", f"/fhir/{example.resource_type}/{example.resource_id}", example.raw)
        # No id: an update has nothing to name, so these go through create, which assigns one.
        return self.request(example, "POST", f"/fhir/{example.resource_type}", example.raw)

    def check_accepted(self, example: Example) -> None:
        response = self.write(example)
        if response is None:
            return
        if response.status_code not in (200, 201):
            self.fail(example, f"R4B accepts it but the write answered {_describe(response)}")
            return
        self.accepted.append(example.path.name)
        resource_id = example.resource_id or response.json().get("id")
        read = self.request(example, "GET", f"/fhir/{example.resource_type}/{resource_id}")
        if read is None:
            return
        if read.status_code != 200:
            self.fail(example, f"read after write answered {_describe(read)}")
            return
        if not read.headers.get("content-type", "").startswith("application/fhir+json"):
            self.fail(example, f"read answered Content-Type {read.headers.get('content-type')}")
        stored = _exact(read.content)
        meta = stored.get("meta") or {}
        if meta.get("versionId") != "1" or not meta.get("lastUpdated"):
            self.fail(example, f"meta should carry versionId 1 and lastUpdated, read {meta}")
        if read.headers.get("etag") != f'W/"{meta.get("versionId")}"':
            self.fail(example, f"ETag {read.headers.get('etag')} does not match meta.versionId")
        sent = _without_server_meta(_exact(example.raw))
        if example.resource_id is None:
            sent = {**sent, "id": resource_id}  # created: the server's id is the only other difference
        difference = _difference(sent, _without_server_meta(stored))
        if difference:
            self.fail(example, f"read differs from the file: {difference}")

    def check_rejected(self, example: Example) -> None:
        response = self.write(example)
        if response is None:
            return
        if not 400 <= response.status_code < 500 or not _is_outcome(response):
            self.fail(example, f"R4B rejects it ({example.rejection}) but the write answered {_describe(response)}")
            return
        self.rejected.append(example.path.name)
        if example.resource_id is not None:
            read = self.request(example, "GET", f"/fhir/{example.resource_type}/{example.resource_id}")
            if read is not None and read.status_code != 404:
                self.fail(example, f"rejected, yet a read answered {_describe(read)} (expected 404)")


def test_hl7_examples_are_stored_faithfully(client: TestClient, examples: list[Example]) -> None:
    predicted_accepted = sorted(e.path.name for e in examples if e.accepted)
    predicted_rejected = sorted(e.path.name for e in examples if not e.accepted)
    expected_rejected = EXPECTED_REJECTED + len(BREAKS_AN_R4_RULE)
    assert (len(examples), len(predicted_rejected)) == (EXPECTED_FILES, expected_rejected), (
        f"the corpus changed: {len(examples)} files, R4B rejects {len(predicted_rejected)}: {predicted_rejected}"
    )

    run = Run(client)
    started = time.perf_counter()
    for example in examples:
        if example.accepted:
            run.check_accepted(example)
        else:
            run.check_rejected(example)
    elapsed = time.perf_counter() - started

    summary = (
        f"{len(examples)} files in {elapsed:.1f}s: server accepted {len(run.accepted)}/{len(predicted_accepted)}"
        f" predicted, rejected {len(run.rejected)}/{len(predicted_rejected)} predicted"
    )
    print(summary)
    assert not run.failures, f"{len(run.failures)} failures ({summary}):\n" + "\n".join(run.failures)
    assert sorted(run.accepted) == predicted_accepted, summary
    assert sorted(run.rejected) == predicted_rejected, summary
