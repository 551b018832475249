"""FHIR search over HTTP on every backend (R4 §3.1.1): the Bundle, paging, errors, freshness."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

FHIR = {"content-type": "application/fhir+json"}


def _put(client: TestClient, resource: dict[str, Any]) -> None:
    response = client.put(
        f"/fhir/{resource['resourceType']}/{resource['id']}", content=json.dumps(resource), headers=FHIR
    )
    assert response.status_code in (200, 201), response.text


def _get(client: TestClient, url: str, **headers: str) -> dict[str, Any]:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def _ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == mode]


def _link(bundle: dict[str, Any], relation: str) -> str | None:
    for link in bundle["link"]:
        if link["relation"] == relation:
            return str(link["url"]).split("testserver")[1]
    return None


def _patient(i: int, family: str = "Paginada", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": f"p{i}", "name": [{"family": family}], **extra}


def test_search_sees_each_write_and_never_an_old_version(client: TestClient) -> None:
    _put(client, _patient(1, "Gómez", gender="female"))
    assert _ids(_get(client, "/fhir/Patient?family=gomez")) == ["p1"]
    assert _ids(_get(client, "/fhir/Patient?name=GÓM")) == ["p1"]
    _put(client, _patient(1, "Pérez", gender="male"))
    assert _ids(_get(client, "/fhir/Patient?family=gomez")) == []
    assert _ids(_get(client, "/fhir/Patient?gender=female")) == []
    assert _ids(_get(client, "/fhir/Patient?family=perez&gender=male")) == ["p1"]
    assert client.delete("/fhir/Patient/p1").status_code == 204
    assert _ids(_get(client, "/fhir/Patient?family=perez")) == []
    _put(client, _patient(1, "Gómez"))
    assert _ids(_get(client, "/fhir/Patient?family=gomez")) == ["p1"]


def test_entries_are_the_stored_bytes(client: TestClient) -> None:
    raw = (
        b'{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"g"},"valueQuantity":{"value":1.50}}'
    )
    assert client.put("/fhir/Observation/o1", content=raw, headers=FHIR).status_code == 201
    response = client.get("/fhir/Observation?value-quantity=1.5")
    stored = client.get("/fhir/Observation/o1").content
    assert stored in response.content and b'"value":1.50' in response.content


def test_pages_stay_consistent_while_writes_arrive(client: TestClient) -> None:
    for i in range(23):
        _put(client, _patient(i))
    page = _get(client, "/fhir/Patient?family=paginada&_count=10")
    assert page["total"] == 23 and len(page["entry"]) == 10 and _link(page, "previous") is None
    pages = [_ids(page)]
    late = 100
    while (url := _link(page, "next")) is not None:
        _put(client, _patient(late))  # a new match while the client pages: not on later pages
        late += 1
        page = _get(client, url)
        pages.append(_ids(page))
    seen = [i for ids in pages for i in ids]
    assert sorted(seen) == sorted(f"p{i}" for i in range(23)) and len(seen) == len(set(seen))
    assert [len(ids) for ids in pages] == [10, 10, 3]
    back = _link(page, "previous")
    assert back is not None and _ids(_get(client, back)) == pages[1]
    assert _get(client, "/fhir/Patient?family=paginada&_count=10")["total"] == 23 + late - 100


def test_sorted_paging_in_both_directions(client: TestClient) -> None:
    dates = ["1990-01-01", "1985-05-05", "1990-01-01", None, "2001-12", "1970", "1990-01-01"]
    for i, date in enumerate(dates):
        _put(client, _patient(i, **({"birthDate": date} if date else {})))
    url: str | None = "/fhir/Patient?_sort=-birthdate,_id&_count=3"
    order: list[str] = []
    while url is not None:
        page = _get(client, url)
        order += _ids(page)
        url = _link(page, "next")
    assert order == ["p4", "p0", "p2", "p6", "p1", "p5", "p3"]  # missing dates last
    ascending = _get(client, "/fhir/Patient?_sort=birthdate&_count=10")
    assert _ids(ascending)[:2] == ["p5", "p1"] and _ids(ascending)[-1] == "p3"


def test_post_search_is_the_same_search(client: TestClient) -> None:
    _put(client, _patient(1, "Gómez"))
    posted = client.post(
        "/fhir/Patient/_search",
        content="family=gomez&_count=5",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert posted.status_code == 200 and _ids(posted.json()) == ["p1"]
    assert client.post("/fhir/Patient/_search", content="{}", headers=FHIR).status_code == 415


def test_unknown_parameters_are_rejected_unless_lenient(client: TestClient) -> None:
    """Strict by default: a parameter the server cannot apply would return unfiltered results."""
    _put(client, _patient(1))
    lenient = client.get("/fhir/Patient?nickname=x&family=paginada", headers={"Prefer": "handling=lenient"})
    bundle = lenient.json()
    assert _ids(bundle) == ["p1"]
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["resource"]["issue"][0]["expression"] == ["nickname"]
    assert "nickname" not in bundle["link"][0]["url"]
    for headers in ({}, {"Prefer": "handling=strict"}):
        strict = client.get("/fhir/Patient?nickname=x", headers=headers)
        assert strict.status_code == 400 and strict.json()["resourceType"] == "OperationOutcome"
        assert "nickname" in strict.text and "birthdate" in strict.text  # names it, lists what is supported
    # The remaining special parameters are not supported (_text, _content, _list and _filter are:
    # tests/integration/test_text_search.py, test_list_search.py, test_filter_search.py; composites:
    # test_composite_search.py).
    for query in ("Observation?_query=x",
                  "Observation?_filter=code ss x", "Observation?_list=$current-everything"):  # fmt: skip
        refused = client.get(f"/fhir/{query}")
        assert refused.status_code == 400, (query, refused.text[:200])
    # An export filter the server cannot apply is refused too (tests/integration/test_export_type_filter.py).
    export = client.get("/fhir/$export?_typeFilter=Observation%3Fnickname%3Dx", headers={"Prefer": "respond-async"})
    assert export.status_code == 400 and "_typeFilter" in export.text and "nickname" in export.text


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("birthdate=yesterday", "birthdate"),
        ("birthdate=zz2020", "birthdate"),
        ("_lastUpdated=2020-02-30", "_lastUpdated"),
        ("gender:exact=female", "gender"),
        ("_count=ten", "_count"),
        ("_cursor=garbage", "_cursor"),
        ("_sort=nickname", "_sort"),
    ],
)
def test_malformed_values_are_400_naming_the_parameter(client: TestClient, query: str, parameter: str) -> None:
    response = client.get(f"/fhir/Patient?{query}")
    assert response.status_code == 400, response.text
    issue = response.json()["issue"][0]
    assert issue["severity"] == "error" and parameter in issue["expression"][0]


def test_unknown_type_is_404(client: TestClient) -> None:
    assert client.get("/fhir/Unicorn?name=x").status_code == 404


def test_totals_counts_and_summaries(client: TestClient) -> None:
    for i in range(3):
        _put(client, _patient(i, birthDate="2000-01-01", text={"status": "generated", "div": "<div>x</div>"}))
    assert "total" not in _get(client, "/fhir/Patient?_total=none")
    assert _get(client, "/fhir/Patient?_total=estimate")["total"] >= 0
    counted = _get(client, "/fhir/Patient?_count=0")
    assert counted["total"] == 3 and counted["entry"] == []
    assert _get(client, "/fhir/Patient?_summary=count")["entry"] == []
    summary = _get(client, "/fhir/Patient?_summary=true")["entry"][0]["resource"]
    assert "text" not in summary and summary["meta"]["tag"][-1]["code"] == "SUBSETTED" and "name" in summary
    text = _get(client, "/fhir/Patient?_summary=text")["entry"][0]["resource"]
    assert "text" in text and "name" not in text
    elements = _get(client, "/fhir/Patient?_elements=birthDate")["entry"][0]["resource"]
    assert set(elements) == {"resourceType", "id", "meta", "birthDate"}


def test_last_updated_and_includes(client: TestClient) -> None:
    _put(client, {"resourceType": "Organization", "id": "imss", "name": "IMSS"})
    _put(client, _patient(1, managingOrganization={"reference": "Organization/imss"}))
    _put(
        client,
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
        },
    )
    assert _ids(_get(client, "/fhir/Patient?_lastUpdated=gt2000-01-01")) == ["p1"]
    assert _ids(_get(client, "/fhir/Patient?_lastUpdated=lt2000-01-01")) == []
    bundle = _get(client, "/fhir/Observation?_include=Observation:patient&_include:iterate=Patient:organization")
    assert _ids(bundle) == ["o1"] and sorted(_ids(bundle, "include")) == ["imss", "p1"]
    reverse = _get(
        client, "/fhir/Organization?_revinclude=Patient:organization&_revinclude:iterate=Observation:subject"
    )
    assert _ids(reverse) == ["imss"] and sorted(_ids(reverse, "include")) == ["o1", "p1"]
    assert _ids(_get(client, "/fhir/Observation?patient.organization.name=imss")) == ["o1"]
    assert _ids(_get(client, "/fhir/Organization?_has:Patient:organization:_has:Observation:subject:status=final")) == [
        "imss"
    ]


def test_capability_statement_lists_search(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert "search-type" in {i["code"] for i in patient["interaction"]}
    params = {p["name"]: p["type"] for p in patient["searchParam"]}
    assert params["name"] == "string" and params["birthdate"] == "date" and params["_id"] == "token"
    assert params["organization"] == "reference" and params["_profile"] == "uri"


def _forge(payload: object) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("sort", "payload"),
    [
        ("", {"d": "n", "m": 2**70, "k": [1]}),  # past a 64-bit integer
        ("", {"d": "n", "m": 1, "k": [-(2**70)]}),
        ("", {"d": "n", "m": True, "k": [True]}),
        ("", [1, 2, 3]),
        ("", {"d": "n", "m": 1.5, "k": [1]}),
        ("birthdate", {"d": "n", "m": 10, "k": [{"a": 1}, 1]}),  # not a value a column can hold
        ("birthdate", {"d": "n", "m": 10, "k": [[1, 2], 1]}),
        ("birthdate", {"d": "p", "m": 10, "k": ["1980", 1]}),  # text where the key is a number (an instant)
        ("_id", {"d": "p", "m": 10, "k": [12345, 1]}),  # a number where the key is text
        ("birthdate", {"d": "n", "m": 10, "k": [2**80, 1]}),
        ("-_lastUpdated", {"d": "n", "m": 10, "k": ["x" * 5000, 1]}),
    ],
)
def test_forged_cursor_is_400(client: TestClient, sort: str, payload: object) -> None:
    """A page cursor comes back from the client: whatever it holds, a bad one is the client's error (400
    OperationOutcome, FHIR R4 http.html "Search"), never a server failure."""
    _put(client, {"resourceType": "Patient", "id": "c1", "birthDate": "1980-01-01"})
    query = f"_cursor={_forge(payload)}" + (f"&_sort={sort}" if sort else "")
    response = client.get(f"/fhir/Patient?{query}")
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and "_cursor" in outcome["issue"][0]["expression"][0]
