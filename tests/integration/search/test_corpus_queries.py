"""Real queries over the whole corpus (Synthea + HL7 R4 examples), on every backend.

Every expected result is computed here from the loaded files by plain Python, independently of the
index (its own folding, date ranges and reference reading), following R4 §3.1.1.5's matching rules.
Each search is read through all its pages (small ``_count``s, so paging is always exercised) and must
give exactly the expected resources, none twice.
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.integration.search.corpus import corpus_resources

pytestmark = pytest.mark.slow

Resource = dict[str, Any]
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SYNTHEA = "https://github.com/synthetichealth/synthea"


# -- reading the corpus, independently of the server --------------------------------------------------


@cache
def by_type(resource_type: str) -> tuple[Resource, ...]:
    return tuple(r for r in corpus_resources() if r["resourceType"] == resource_type)


def ids(resources: Iterable[Resource]) -> set[str]:
    return {r["id"] for r in resources}


def where(resource_type: str, predicate: Callable[[Resource], bool]) -> set[str]:
    return ids(r for r in by_type(resource_type) if predicate(r))


def folded(text: str) -> str:
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return " ".join(plain.casefold().split())


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def codings(concept: Any) -> list[tuple[str | None, str | None]]:
    return [(c.get("system"), c.get("code")) for c in as_list((concept or {}).get("coding"))]


def reference_of(value: Any) -> str | None:
    """``Type/id`` of a literal reference (relative, or absolute with the type and id at its end)."""
    reference = (value or {}).get("reference")
    if not isinstance(reference, str):
        return None
    parts = reference.split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def bounds(text: str) -> tuple[datetime, datetime]:
    """[start, end) of a FHIR date/dateTime (no zone: UTC)."""
    found = _DATE.match(text)
    if found:
        year, month, day = int(found[1]), int(found[2] or 1), int(found[3] or 1)
        start = datetime(year, month, day, tzinfo=UTC)
        if found[3]:
            return start, start + timedelta(days=1)
        if found[2]:
            return start, start + timedelta(days=calendar.monthrange(year, month)[1])
        return start, datetime(year + 1, 1, 1, tzinfo=UTC)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    fraction = text.split(".")[1].rstrip("Z").split("+")[0].split("-")[0] if "." in text else ""
    step = timedelta(microseconds=10 ** (6 - min(len(fraction), 6))) if fraction else timedelta(seconds=1)
    return moment, moment + step


def period_bounds(period: Any) -> tuple[datetime, datetime]:
    start = bounds(period["start"])[0] if period.get("start") else datetime.min.replace(tzinfo=UTC)
    end = bounds(period["end"])[1] if period.get("end") else datetime.max.replace(tzinfo=UTC)
    return start, end


def date_matches(value: tuple[datetime, datetime], prefix: str, text: str) -> bool:
    """R4 §3.1.1.5.6 on ranges: target [ts, te) against the searched [ps, pe)."""
    ts, te = value
    ps, pe = bounds(text)
    inside = ts >= ps and te <= pe
    return {
        "eq": inside,
        "ne": not inside,
        "gt": te > pe,
        "lt": ts < ps,
        "ge": te > pe or inside,
        "le": ts < ps or inside,
        "sa": ts >= pe,
        "eb": te <= ps,
    }[prefix]


def effective(observation: Resource) -> list[tuple[datetime, datetime]]:
    found = []
    if observation.get("effectiveDateTime"):
        found.append(bounds(observation["effectiveDateTime"]))
    if observation.get("effectiveInstant"):
        found.append(bounds(observation["effectiveInstant"]))
    if observation.get("effectivePeriod"):
        found.append(period_bounds(observation["effectivePeriod"]))
    return found


# -- asking the server --------------------------------------------------------------------------------


def fetch_all(client: TestClient, url: str) -> tuple[list[str], list[str], int | None]:
    """Every match (in order) and every included resource (``Type/id``) over all pages, and the total."""
    matches: list[str] = []
    included: list[str] = []
    next_url: str | None = url
    total = None
    pages = 0
    while next_url is not None:
        response = client.get(next_url)
        assert response.status_code == 200, response.text
        bundle = response.json()
        total = bundle.get("total", total)
        for entry in bundle.get("entry", []):
            mode, resource = entry["search"]["mode"], entry["resource"]
            assert mode != "outcome", resource
            (matches if mode == "match" else included).append(
                resource["id"] if mode == "match" else f"{resource['resourceType']}/{resource['id']}"
            )
        next_url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        next_url = next_url.split("testserver")[1] if next_url else None
        pages += 1
        assert pages < 500
    assert len(matches) == len(set(matches)), "a resource appeared on two pages"
    return matches, included, total


def check(client: TestClient, query: str, expected: set[str], count: int = 37) -> list[str]:
    resource_type = query.split("?")[0]
    separator = "&" if "?" in query else "?"
    matches, _, total = fetch_all(client, f"/fhir/{query}{separator}_count={count}")
    assert set(matches) == expected, (
        f"{query}: missing {sorted(expected - set(matches))[:5]}, unexpected {sorted(set(matches) - expected)[:5]}"
    )
    assert total == len(expected)
    assert expected, f"{resource_type}: a query with no expected result proves little"
    return matches


# -- a few corpus facts the queries use ---------------------------------------------------------------


def synthea_patient() -> Resource:
    return next(p for p in by_type("Patient") if any(i.get("system") == SYNTHEA for i in p.get("identifier", [])))


def mr_number(patient: Resource) -> str:
    return next(i["value"] for i in patient["identifier"] if ("MR" in [c for _, c in codings(i.get("type"))]))


# -- the tests ------------------------------------------------------------------------------------------


def test_tokens(corpus_client: TestClient) -> None:
    def has(concept_key: str, system: str | None, code: str | None) -> Callable[[Resource], bool]:
        def predicate(resource: Resource) -> bool:
            for concept in as_list(resource.get(concept_key)):
                for s, c in codings(concept):
                    if (system is None or s == system) and (code is None or c == code):
                        return True
            return False

        return predicate

    check(corpus_client, f"Observation?code={LOINC}|8302-2", where("Observation", has("code", LOINC, "8302-2")))
    both = where("Observation", lambda o: has("code", None, "8302-2")(o) or has("code", None, "29463-7")(o))
    check(corpus_client, "Observation?code=8302-2,29463-7", both)
    check(corpus_client, f"Condition?code={quote(SNOMED)}|", where("Condition", has("code", SNOMED, None)))
    check(corpus_client, "Observation?status:not=final", where("Observation", lambda o: o.get("status") != "final"))
    check(corpus_client, "Patient?gender=female", where("Patient", lambda p: p.get("gender") == "female"))
    check(corpus_client, "Patient?active=true", where("Patient", lambda p: p.get("active") is True))
    category = where("Observation", has("category", None, "vital-signs"))
    check(
        corpus_client,
        "Observation?category=vital-signs&status=final",
        category & where("Observation", lambda o: o["status"] == "final"),
    )
    practitioner = by_type("Practitioner")[-1]
    npi = practitioner["identifier"][0]
    check(
        corpus_client,
        f"Practitioner?identifier={quote(npi['system'])}|{npi['value']}",
        where("Practitioner", lambda p: npi in p.get("identifier", [])),
    )
    tag = "https://smarthealthit.org/tags|synthea-5-2019"
    check(
        corpus_client,
        f"Patient?_tag={quote(tag)}",
        where(
            "Patient",
            lambda p: {"system": tag.split("|")[0], "code": tag.split("|")[1]} in p.get("meta", {}).get("tag", []),
        ),
    )


def test_token_modifiers_text_and_of_type(corpus_client: TestClient) -> None:
    def text_matches(condition: Resource) -> bool:
        concept = condition.get("code") or {}
        texts = [concept.get("text")] + [c.get("display") for c in as_list(concept.get("coding"))]
        return any(
            word.startswith("sinusitis") or folded(t).startswith("sinusitis")
            for t in texts
            if t
            for word in folded(t).split(" ")
        )

    check(corpus_client, "Condition?code:text=Sinusitis", where("Condition", text_matches))
    patient = synthea_patient()
    value = mr_number(patient)
    check(
        corpus_client,
        f"Patient?identifier:of-type={quote(V2)}|MR|{value}",
        where(
            "Patient",
            lambda p: (
                value
                in [i.get("value") for i in p.get("identifier", []) if "MR" in [c for _, c in codings(i.get("type"))]]
            ),
        ),
    )


def test_strings(corpus_client: TestClient) -> None:
    def name_parts(resource: Resource) -> list[str]:
        parts: list[str] = []
        for name in as_list(resource.get("name")):
            parts += [name.get("family"), name.get("text"), *as_list(name.get("given"))]
            parts += as_list(name.get("prefix")) + as_list(name.get("suffix"))
        return [p for p in parts if isinstance(p, str)]

    check(
        corpus_client,
        "Patient?name=MAR",
        where("Patient", lambda p: any(folded(x).startswith("mar") for x in name_parts(p))),
    )
    check(
        corpus_client,
        "Practitioner?family=gle",
        where("Practitioner", lambda p: any(folded(n.get("family", "")).startswith("gle") for n in p.get("name", []))),
    )
    check(
        corpus_client,
        "Patient?family:exact=Chalmers",
        where("Patient", lambda p: "Chalmers" in [n.get("family") for n in p.get("name", [])]),
    )
    check(
        corpus_client,
        "Patient?name:contains=ALME",
        where("Patient", lambda p: any("alme" in folded(x) for x in name_parts(p))),
    )
    check(
        corpus_client,
        "Organization?name=steward",
        where(
            "Organization",
            lambda o: any(folded(n).startswith("steward") for n in [o.get("name"), *as_list(o.get("alias"))] if n),
        ),
    )
    check(
        corpus_client,
        "Patient?address-city=boston",
        where("Patient", lambda p: any(folded(a.get("city", "")).startswith("boston") for a in p.get("address", []))),
    )


@pytest.mark.parametrize(
    ("prefix", "value"),
    [
        ("eq", "1974"),
        ("ge", "1990-01-01"),
        ("lt", "1960"),
        ("gt", "2000-05"),
        ("le", "1974-12-25"),
        ("ne", "1974"),
        ("sa", "1999"),
        ("eb", "1990-06-15"),
    ],
)
def test_dates_on_birthdate(corpus_client: TestClient, prefix: str, value: str) -> None:
    expected = where(
        "Patient", lambda p: bool(p.get("birthDate")) and date_matches(bounds(p["birthDate"]), prefix, value)
    )
    check(corpus_client, f"Patient?birthdate={prefix}{value}", expected)


def test_dates_on_periods_and_date_times(corpus_client: TestClient) -> None:
    in_2015 = where(
        "Observation",
        lambda o: (
            any(date_matches(r, "ge", "2015-01-01") for r in effective(o))
            and any(date_matches(r, "lt", "2016-01-01") for r in effective(o))
        ),
    )
    check(corpus_client, "Observation?date=ge2015-01-01&date=lt2016-01-01", in_2015)
    check(
        corpus_client,
        "Encounter?date=sa2019-06-01",
        where("Encounter", lambda e: "period" in e and date_matches(period_bounds(e["period"]), "sa", "2019-06-01")),
    )
    check(
        corpus_client,
        "Encounter?date=eb2000-01-01",
        where("Encounter", lambda e: "period" in e and date_matches(period_bounds(e["period"]), "eb", "2000-01-01")),
    )
    check(
        corpus_client,
        "Encounter?date=2019-02",
        where("Encounter", lambda e: "period" in e and date_matches(period_bounds(e["period"]), "eq", "2019-02")),
    )
    check(
        corpus_client,
        "Condition?onset-date=le2000",
        where(
            "Condition",
            lambda c: bool(c.get("onsetDateTime")) and date_matches(bounds(c["onsetDateTime"]), "le", "2000"),
        ),
    )
    exact = check(
        corpus_client,
        "Immunization?date=2016-04",
        where(
            "Immunization",
            lambda i: (
                bool(i.get("occurrenceDateTime")) and date_matches(bounds(i["occurrenceDateTime"]), "eq", "2016-04")
            ),
        ),
    )
    approximately, _, _ = fetch_all(corpus_client, "/fhir/Immunization?date=ap2016-04&_count=200")
    assert set(exact) <= set(approximately)


def test_references(corpus_client: TestClient) -> None:
    patient = synthea_patient()
    of_patient = where("Observation", lambda o: reference_of(o.get("subject")) == f"Patient/{patient['id']}")
    check(corpus_client, f"Observation?subject=Patient/{patient['id']}", of_patient)
    check(corpus_client, f"Observation?patient={patient['id']}", of_patient)
    check(corpus_client, f"Observation?subject=http://testserver/fhir/Patient/{patient['id']}", of_patient)
    check(corpus_client, f"Observation?subject:Patient={patient['id']}", of_patient)
    encounter = by_type("Encounter")[-1]
    provider = reference_of(encounter["serviceProvider"])
    check(
        corpus_client,
        f"Encounter?service-provider={provider}",
        where("Encounter", lambda e: reference_of(e.get("serviceProvider")) == provider),
    )
    location = by_type("Location")[-1]
    identifier = location["managingOrganization"]["identifier"]
    check(
        corpus_client,
        f"Location?organization:identifier={quote(identifier['system'])}|{identifier['value']}",
        where("Location", lambda loc: (loc.get("managingOrganization") or {}).get("identifier") == identifier),
    )


def test_quantities_numbers_and_missing(corpus_client: TestClient) -> None:
    def quantity(o: Resource) -> dict[str, Any]:
        return o.get("valueQuantity") or {}

    check(
        corpus_client,
        f"Observation?value-quantity=gt180|{quote(UCUM)}|cm",
        where(
            "Observation",
            lambda o: (
                quantity(o).get("system") == UCUM
                and quantity(o).get("code") == "cm"
                and quantity(o).get("value", 0) > 180
            ),
        ),
    )
    check(
        corpus_client,
        "Observation?value-quantity=le60||kg",
        where(
            "Observation",
            lambda o: (
                "kg" in (quantity(o).get("code"), quantity(o).get("unit")) and quantity(o).get("value", 1e9) <= 60
            ),
        ),
    )
    check(
        corpus_client,
        "Observation?value-quantity=70",
        where("Observation", lambda o: "value" in quantity(o) and 69.5 <= quantity(o)["value"] < 70.5),
    )

    def probabilities(r: Resource) -> list[float]:
        return [p["probabilityDecimal"] for p in r.get("prediction", []) if "probabilityDecimal" in p]

    check(
        corpus_client,
        "RiskAssessment?probability=lt0.0005",
        where("RiskAssessment", lambda r: any(p < 0.0005 for p in probabilities(r))),
    )
    check(
        corpus_client,
        "RiskAssessment?probability=0.02",
        where("RiskAssessment", lambda r: any(0.015 <= p < 0.025 for p in probabilities(r))),
    )
    check(
        corpus_client,
        "Observation?value-quantity:missing=true",
        where("Observation", lambda o: "valueQuantity" not in o),
    )
    check(corpus_client, "Patient?birthdate:missing=false", where("Patient", lambda p: "birthDate" in p))


def test_chains(corpus_client: TestClient) -> None:
    patient = synthea_patient()
    family = folded(patient["name"][0]["family"])[:6]
    named = {
        f"Patient/{p['id']}"
        for p in by_type("Patient")
        if any(
            folded(part).startswith(family)
            for n in p.get("name", [])
            for part in [n.get("family", ""), *n.get("given", [])]
        )
    }
    check(
        corpus_client,
        f"Observation?subject:Patient.name={family}",
        where("Observation", lambda o: reference_of(o.get("subject")) in named),
    )
    women = {f"Patient/{p['id']}" for p in by_type("Patient") if p.get("gender") == "female"}
    check(
        corpus_client,
        "Encounter?patient.gender=female",
        where("Encounter", lambda e: reference_of(e.get("subject")) in women),
    )
    # Two levels: Observation → Encounter → Organization, named after the provider of one observation's encounter.
    encounters_by_ref = {f"Encounter/{e['id']}": e for e in by_type("Encounter")}
    organizations = {f"Organization/{o['id']}": o for o in by_type("Organization")}
    observation = next(
        o
        for o in by_type("Observation")
        if reference_of(o.get("encounter")) in encounters_by_ref
        and reference_of(encounters_by_ref[str(reference_of(o["encounter"]))].get("serviceProvider")) in organizations
    )
    encounter = encounters_by_ref[str(reference_of(observation["encounter"]))]
    prefix = folded(organizations[str(reference_of(encounter["serviceProvider"]))]["name"])[:8]
    named_orgs = {ref for ref, o in organizations.items() if folded(o.get("name", "")).startswith(prefix)}
    encounters = {ref for ref, e in encounters_by_ref.items() if reference_of(e.get("serviceProvider")) in named_orgs}
    check(
        corpus_client,
        f"Observation?encounter.service-provider.name={quote(prefix)}",
        where("Observation", lambda o: reference_of(o.get("encounter")) in encounters),
    )


def test_reverse_chains(corpus_client: TestClient) -> None:
    heights = {
        reference_of(o.get("subject")) for o in by_type("Observation") if (LOINC, "8302-2") in codings(o.get("code"))
    }
    check(
        corpus_client,
        f"Patient?_has:Observation:patient:code={quote(LOINC)}|8302-2",
        where("Patient", lambda p: f"Patient/{p['id']}" in heights),
    )
    sinusitis = {
        reference_of(c.get("subject")) for c in by_type("Condition") if (SNOMED, "444814009") in codings(c.get("code"))
    }
    check(
        corpus_client,
        "Patient?_has:Condition:patient:code=444814009&gender=female",
        where("Patient", lambda p: f"Patient/{p['id']}" in sinusitis and p.get("gender") == "female"),
    )


def test_includes_across_pages(corpus_client: TestClient) -> None:
    existing = {f"{r['resourceType']}/{r['id']}" for r in corpus_resources()}
    heights = [o for o in by_type("Observation") if (LOINC, "8302-2") in codings(o.get("code"))]
    matches, included, _ = fetch_all(
        corpus_client, f"/fhir/Observation?code={quote(LOINC)}|8302-2&_include=Observation:patient&_count=25"
    )
    assert set(matches) == ids(heights)
    patients = {reference_of(o.get("subject")) for o in heights} & existing
    assert set(included) == {p for p in patients if p and p.startswith("Patient/")}

    encounters = {reference_of(o.get("encounter")) for o in heights} & existing
    providers = {
        reference_of(e.get("serviceProvider")) for e in by_type("Encounter") if f"Encounter/{e['id']}" in encounters
    } & existing
    _, included, _ = fetch_all(
        corpus_client,
        f"/fhir/Observation?code={quote(LOINC)}|8302-2&_include=Observation:encounter"
        "&_include:iterate=Encounter:service-provider&_count=40",
    )
    assert set(included) == encounters | providers

    women = [p for p in by_type("Patient") if p.get("gender") == "female"]
    women_refs = {f"Patient/{p['id']}" for p in women}
    conditions = {f"Condition/{c['id']}" for c in by_type("Condition") if reference_of(c.get("subject")) in women_refs}
    matches, included, _ = fetch_all(
        corpus_client, "/fhir/Patient?gender=female&_revinclude=Condition:patient&_count=10"
    )
    assert set(matches) == ids(women) and set(included) == conditions


def test_sorting_across_pages(corpus_client: TestClient) -> None:
    matches, _, _ = fetch_all(corpus_client, "/fhir/Patient?_sort=birthdate,_id&_count=9")
    born = {p["id"]: p.get("birthDate") for p in by_type("Patient")}
    expected = sorted(born, key=lambda i: (born[i] is None, bounds(born[i])[0] if born[i] else None, i))
    assert matches == expected

    heights = {o["id"]: o for o in by_type("Observation") if (LOINC, "8302-2") in codings(o.get("code"))}
    matches, _, _ = fetch_all(corpus_client, f"/fhir/Observation?code={quote(LOINC)}|8302-2&_sort=-date&_count=11")
    assert set(matches) == set(heights)
    latest = [max((r[1] for r in effective(heights[i])), default=None) for i in matches]
    present = [moment for moment in latest if moment is not None]
    assert present == sorted(present, reverse=True) and latest[: len(present)] == present


def test_paging_backwards_gives_the_same_pages(corpus_client: TestClient) -> None:
    url: str | None = f"/fhir/Observation?code={quote(LOINC)}|29463-7&_sort=-date&_count=15"
    forward: list[list[str]] = []
    bundle: dict[str, Any] = {}
    while url is not None:
        bundle = corpus_client.get(url).json()
        forward.append([e["resource"]["id"] for e in bundle["entry"]])
        url = next((link["url"].split("testserver")[1] for link in bundle["link"] if link["relation"] == "next"), None)
    backward: list[list[str]] = [forward[-1]]
    while (
        previous := next((link["url"] for link in bundle["link"] if link["relation"] == "previous"), None)
    ) is not None:
        bundle = corpus_client.get(previous.split("testserver")[1]).json()
        backward.append([e["resource"]["id"] for e in bundle["entry"]])
    assert len(forward) > 3 and list(reversed(backward)) == forward
