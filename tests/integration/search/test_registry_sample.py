"""Every kind of search parameter in the generated registry finds what it should, on both backends.

For a sample drawn here from :mod:`projections.search.definitions` (seeded, stratified: ``_PER_TYPE``
parameters of each resource type, every composite, and one parameter of each kind — search type by data types
reached — that the draw missed; ``EHR_TEST_REGISTRY_SAMPLE=all`` takes every parameter) two resources are
built per parameter: one with a value written at the parameter's expression path, one with a different value
there. A search by that parameter, limited by ``_id`` to the pair, must return exactly the first.

The path is the parameter's compiled route (:mod:`projections.search.paths`); whether each element on the way
repeats, and the type a choice key names, come from the generated R4 element table
(:mod:`ehr_core.spec.elements`), so the resources have the JSON shape R4 gives them (arrays where ``0..*``).
They are synthetic (only the searched element is set; validation is tested elsewhere), so they go straight
into the search index view, one transaction per backend, as the ``resources`` projector writes it; the
searches are those of conditional requests (:func:`projections.search.match`: the same parser and SQL as a
search). A parameter that fails is a bug of the extractor or the engine, unless it is in ``EXCLUDED`` with
the reason the spec makes it unsearchable this way.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ehr_core.errors import InvalidResource
from ehr_core.settings import Settings
from ehr_core.spec.elements import ELEMENTS
from fhir_api.services import Services
from projections.changes import Change
from projections.search import SearchIndex, match
from projections.search.definitions import DEFINITIONS
from projections.search.paths import Route
from projections.search.registry import Component, SearchParameter, parameter
from tests.conftest import DEV_AUTH
from tests.support.schemas import drop_schema

#: Parameters drawn per resource type (besides its composites, all taken).
_PER_TYPE = 3
_SEED = 20261206
_ALL = os.environ.get("EHR_TEST_REGISTRY_SAMPLE", "").lower() == "all"

#: (resource type, code) → why a value written at the parameter's path cannot be found by it.
EXCLUDED: dict[tuple[str, str], str] = {}

SYSTEM = "http://example.org/fhir/CodeSystem/sample"
UCUM = "http://unitsofmeasure.org"


# -- the sample -------------------------------------------------------------------------------------------


def kind(param: SearchParameter) -> tuple[str, ...]:
    """A parameter's kind: its search type and the data types its expression reaches (token over
    CodeableConcept, quantity over Money, date over Period or Timing...)."""
    return (param.type, *sorted({route.datatype for route in param.routes}))


def sample() -> list[SearchParameter]:
    """The parameters under test, seeded and stratified so reruns are identical: ``_PER_TYPE`` of each
    resource type, every composite, and one of each kind no draw reached."""
    rng = random.Random(_SEED)
    chosen: dict[tuple[str, str], SearchParameter] = {}
    by_kind: dict[tuple[str, ...], list[SearchParameter]] = {}
    for resource_type in sorted(DEFINITIONS):
        rows = DEFINITIONS[resource_type]
        everything = [parameter(resource_type, code) for code, _, _ in rows]
        compiled = [p for p in everything if p is not None]
        assert len(compiled) == len(rows), f"{resource_type}: a parameter of the registry is not compiled"
        others = [p for p in compiled if p.type != "composite"]
        for param in others:
            by_kind.setdefault(kind(param), []).append(param)
        picked = others if _ALL else rng.sample(others, min(_PER_TYPE, len(others)))
        picked += [p for p in compiled if p.type == "composite" or (p.resource_type, p.code) in EXCLUDED]
        chosen.update({(p.resource_type, p.code): p for p in picked})
    covered = {kind(p) for p in chosen.values()}
    for found, params in sorted(by_kind.items()):
        if found not in covered:
            extra = rng.choice(params)
            chosen[(extra.resource_type, extra.code)] = extra
    return sorted(chosen.values(), key=lambda p: (p.resource_type, p.code))


# -- writing a value at a route -----------------------------------------------------------------------------


def _element(owner: str, key: str) -> tuple[bool, str]:
    """(repeats, type) of JSON key ``key`` of ``owner`` in the R4 element table (``valueQuantity`` is
    ``value[x]`` of type Quantity)."""
    for name, repeats, types, _attribute in ELEMENTS[owner]:
        if name == key:
            return repeats, types[0]
        if name.endswith("[x]") and key.startswith(name[:-3]):
            wanted = key[len(name) - 3 :]
            for kind in types:
                if kind[:1].upper() + kind[1:] == wanted:
                    return repeats, kind
    raise LookupError(f"{owner} has no element {key!r} in the R4 element table")


def place(node: dict[str, Any], owner: str, route: Route, leaf: Any) -> tuple[Any, str]:
    """Write ``leaf`` at ``route`` below ``node`` (of type ``owner``), creating the elements on the way.

    A ``where(field='value')`` filter of a step is satisfied by setting that field; a repeating element
    gets one more item. An empty route returns ``node`` itself. Returns the value written and its type."""
    current, current_type = node, owner
    for number, step in enumerate(route.steps):
        repeats, kind = _element(current_type, step.key)
        last = number == len(route.steps) - 1
        child = leaf if last else {}
        if step.where:
            if not isinstance(child, dict):
                raise TypeError(f"where() on {kind} {step.key!r}, which holds no fields")
            child.update(dict(step.where))
        if repeats:
            current.setdefault(step.key, []).append(child)
        else:
            current[step.key] = child
        current, current_type = child, kind
    return current, current_type


# -- values by search type and data type ----------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """What is written (``element``) and what a search sends (``query``), for one variant."""

    element: Any
    query: str


def _text(n: int, variant: str) -> str:
    return f"sample{n}{variant}word"


def _token(datatype: str, n: int, variant: str) -> Value:
    code = f"c{n}{variant}"
    if datatype == "CodeableConcept":
        return Value({"coding": [{"system": SYSTEM, "code": code}]}, f"{SYSTEM}|{code}")
    if datatype == "Coding":
        return Value({"system": SYSTEM, "code": code}, f"{SYSTEM}|{code}")
    if datatype == "Identifier":
        return Value({"system": SYSTEM, "value": code}, f"{SYSTEM}|{code}")
    if datatype == "ContactPoint":
        return Value({"system": "phone", "value": code}, code)
    if datatype == "boolean":
        return Value(variant == "m", "true")
    if datatype in ("code", "id", "string", "uri", "url", "canonical", "oid", "uuid", "markdown"):
        return Value(code, code)
    raise TypeError(f"no token value for {datatype}")


def _string(datatype: str, n: int, variant: str) -> Value:
    text = _text(n, variant)
    if datatype == "HumanName":
        return Value({"family": text.capitalize()}, text)
    if datatype == "Address":
        return Value({"city": text.capitalize()}, text)
    if datatype in ("string", "markdown", "code", "id", "uri", "url"):
        return Value(text.capitalize(), text)
    raise TypeError(f"no string value for {datatype}")


def _date(datatype: str, n: int, variant: str) -> Value:
    day = f"{1000 + n:04d}-03-04" if variant == "m" else f"{1000 + n:04d}-09-10"
    query = f"eq{1000 + n:04d}-03-04"
    if datatype == "date":
        return Value(day, query)
    if datatype in ("dateTime", "instant"):
        return Value(f"{day}T10:00:00Z", query)
    if datatype == "Period":
        return Value({"start": f"{day}T08:00:00Z", "end": f"{day}T09:00:00Z"}, query)
    if datatype == "Timing":
        return Value({"event": [f"{day}T10:00:00Z"]}, query)
    raise TypeError(f"no date value for {datatype}")


def _quantity_of(amount: int) -> dict[str, Any]:
    return {"value": amount, "unit": "mg", "system": UCUM, "code": "mg"}


def _quantity(datatype: str, n: int, variant: str) -> Value:
    amount = 1000 + n if variant == "m" else 7
    query = f"{1000 + n}|{UCUM}|mg"
    if datatype in ("Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity"):
        return Value(_quantity_of(amount), query)
    if datatype == "Range":
        return Value({"low": _quantity_of(amount), "high": _quantity_of(amount)}, query)
    if datatype == "Money":
        return Value({"value": amount, "currency": "USD"}, f"{1000 + n}|urn:iso:std:iso:4217|USD")
    raise TypeError(f"no quantity value for {datatype}")


def _number(datatype: str, n: int, variant: str) -> Value:
    amount = 1000 + n if variant == "m" else 7
    if datatype in ("decimal", "integer", "positiveInt", "unsignedInt"):
        return Value(amount, str(1000 + n))
    if datatype == "Range":
        return Value({"low": _quantity_of(amount), "high": _quantity_of(amount)}, str(1000 + n))
    raise TypeError(f"no number value for {datatype}")


def _uri(datatype: str, n: int, variant: str) -> Value:
    if datatype in ("uri", "url", "canonical", "oid", "uuid"):
        return Value(f"http://example.org/fhir/sample/{n}/{variant}", f"http://example.org/fhir/sample/{n}/m")
    raise TypeError(f"no uri value for {datatype}")


def _reference(route: Route) -> Callable[[str, int, str], Value]:
    target = route.reference_type or next((t for t in route.targets if t != "Resource"), "Patient")

    def value(datatype: str, n: int, variant: str) -> Value:
        if datatype == "Reference":
            return Value({"reference": f"{target}/r{n}{variant}"}, f"{target}/r{n}m")
        return _uri(datatype, n, variant)

    return value


def _builder(kind: str, route: Route) -> Callable[[str, int, str], Value]:
    builders: dict[str, Callable[[str, int, str], Value]] = {
        "token": _token,
        "string": _string,
        "date": _date,
        "quantity": _quantity,
        "number": _number,
        "uri": _uri,
    }
    return _reference(route) if kind == "reference" else builders[kind]


def _leaf_type(owner: str, route: Route) -> str:
    """The R4 type at the end of ``route`` from ``owner`` (written once to an empty node to find it)."""
    return place({}, owner, route, {} if route.steps and route.steps[-1].where else None)[1]


# -- one parameter's pair of resources -------------------------------------------------------------------------


@dataclass
class Case:
    param: SearchParameter
    matching: dict[str, Any]
    other: dict[str, Any]
    query: str


def _writable(kind: str, owner: str, routes: tuple[Route, ...], rng: random.Random) -> Route:
    """One of ``routes`` (drawn) whose element can hold a ``kind`` value: ``Procedure.date`` is
    ``Procedure.performed``, whose ``performedAge`` and ``performedString`` hold no date."""
    shuffled = list(routes)
    rng.shuffle(shuffled)
    for route in shuffled:
        try:
            _builder(kind, route)(_leaf_type(owner, route), 0, "m")
        except TypeError:
            continue
        return route
    raise TypeError(f"no element of {[r.datatype for r in routes]} holds a {kind} value")


def _simple(param: SearchParameter, n: int, rng: random.Random) -> tuple[dict[str, Any], dict[str, Any], str]:
    if param.special:  # Patient.deceased: ``deceased.exists() and deceased != false``
        alive = {"resourceType": param.resource_type, "deceasedBoolean": False}
        return {"resourceType": param.resource_type, "deceasedBoolean": True}, alive, "true"
    route = _writable(param.type, param.resource_type, param.routes, rng)
    build = _builder(param.type, route)
    resources, query = [], ""
    for variant in ("m", "o"):
        resource: dict[str, Any] = {"resourceType": param.resource_type}
        value = build(_leaf_type(param.resource_type, route), n, variant)
        place(resource, param.resource_type, route, value.element)
        resources.append(resource)
        query = query or value.query  # the matching variant's
    return resources[0], resources[1], query


def _component(node: dict[str, Any], owner: str, component: Component, n: int, variant: str, rng: random.Random) -> str:
    route = _writable(component.type, owner, component.routes, rng)
    value = _builder(component.type, route)(_leaf_type(owner, route), n, variant)
    place(node, owner, route, value.element)
    return value.query


def _composite(param: SearchParameter, n: int, rng: random.Random) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Both components in one repetition; the other resource differs in the last component only."""
    repetition = rng.choice(param.repetitions)
    resources: list[dict[str, Any]] = []
    queries: list[str] = []
    state = rng.getstate()
    for variant in ("m", "o"):
        rng.setstate(state)  # the same routes for both resources
        resource: dict[str, Any] = {"resourceType": param.resource_type}
        node, owner = place(resource, param.resource_type, repetition, {})
        parts = []
        for number, component in enumerate(param.components):
            last = number == len(param.components) - 1
            where = (resource, param.resource_type) if component.from_resource else (node, owner)
            parts.append(_component(*where, component, n, variant if last else "m", rng))
        resources.append(resource)
        queries = queries or parts  # the matching variant's
    return resources[0], resources[1], "$".join(queries)


def cases(params: list[SearchParameter]) -> tuple[list[Case], list[tuple[SearchParameter, str]]]:
    rng = random.Random(_SEED)
    built, unbuildable = [], []
    for n, param in enumerate(params):
        try:
            matching, other, query = (_composite if param.type == "composite" else _simple)(param, n, rng)
        except (LookupError, TypeError, IndexError) as error:
            unbuildable.append((param, f"cannot write a value at {param.expression!r}: {error}"))
            continue
        matching["id"], other["id"] = f"p{n}m", f"p{n}o"
        built.append(Case(param, matching, other, query))
    return built, unbuildable


# -- the store ---------------------------------------------------------------------------------------------


def _changes(resources: list[dict[str, Any]]) -> list[Change]:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return [
        Change(
            notification_id=number,
            resource_type=resource["resourceType"],
            resource_id=resource["id"],
            version=1,
            last_updated="2026-01-02T03:04:05Z",
            recorded=now,
            method="PUT",
            body=orjson.dumps(resource),
            compartment=[],
            context={},
        )
        for number, resource in enumerate(resources, start=1)
    ]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    schema = None
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path_factory.mktemp("registry-sample") / "ehr-data", auth=DEV_AUTH)
    else:
        url: str = request.getfixturevalue("postgres_url")
        schema = f"t_{uuid.uuid4().hex[:12]}"
        settings = Settings(database_url=url, postgres_schema=schema, postgres_pool_size=2, auth=DEV_AUTH)
    services = Services.open(settings, follow=False)
    try:
        yield services
    finally:
        services.close()
        if schema is not None:
            drop_schema(settings.postgres_conninfo(), schema)


def test_sample_covers_the_registry() -> None:
    params = sample()
    types = {p.resource_type for p in params}
    composites = {(t, code) for t, rows in DEFINITIONS.items() for code, kind, _ in rows if kind == "composite"}
    assert len(params) >= 300 and len(types) >= 60
    assert composites <= {(p.resource_type, p.code) for p in params}
    assert {p.type for p in params} >= {"token", "string", "date", "reference", "quantity", "number", "uri"}


def test_each_sampled_parameter_finds_its_resource_only(store: Services) -> None:
    params = sample()
    built, failures = cases(params)
    with store.views.write() as tx:
        SearchIndex().apply(tx, _changes([r for case in built for r in (case.matching, case.other)]))
    found_by_excluded = []
    with store.views.read() as tx:
        for case in built:
            param = case.param
            query = [(param.code, case.query), ("_id", f"{case.matching['id']},{case.other['id']}")]
            try:
                got = match(tx, param.resource_type, query, 5, None, store.views.dialect)
            except InvalidResource as error:
                got = [f"400: {error}"]
            key = (param.resource_type, param.code)
            if got == [case.matching["id"]]:
                if key in EXCLUDED:
                    found_by_excluded.append(key)
                continue
            failures.append((param, f"{param.code}={case.query} gave {got}; resources {case.matching} / {case.other}"))
    unexpected = [(p, why) for p, why in failures if (p.resource_type, p.code) not in EXCLUDED]
    report = "\n".join(f"{p.resource_type}.{p.code} ({p.type}, {p.expression}): {why}" for p, why in unexpected)
    assert not unexpected, f"{len(unexpected)} of {len(params)} parameters fail:\n{report}"
    assert not found_by_excluded, f"excluded but searchable (drop them from EXCLUDED): {found_by_excluded}"
