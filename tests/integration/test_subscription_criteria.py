"""A subscription's criteria decided in memory agree with the search engine (R4 subscription.html: the
criteria are a search; projections/subscription_criteria.py), and the matcher then runs no criteria search:
per batch it reads the policy once, and writes outbox rows only for the subscriptions that match."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ehr_core.context import WriteContext
from ehr_core.settings import Settings
from fhir_api.services import Services
from projections import db, subscriptions
from projections.search import match
from projections.search.extract import extract
from projections.subscription_criteria import compile_criteria
from projections.subscriptions import SubscriptionMatcher, events_between

LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
UNREACHABLE = "http://127.0.0.1:9/hook"


def _observation(code: str, system: str | None = LOINC, category: str | None = None, **more: Any) -> dict[str, Any]:
    coding: dict[str, Any] = {"code": code} if system is None else {"system": system, "code": code}
    resource: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"coding": [coding]}}
    if category is not None:
        resource["category"] = [{"coding": [{"system": CATEGORY, "code": category}]}]
    return resource | more


RESOURCES = [
    _observation("718-7", category="laboratory"),
    _observation("718-7", status="preliminary"),
    _observation("4548-4", category="vital-signs"),
    _observation("718-7", system=None),
    _observation("718-7", system="http://example.org/local"),
    _observation("x" * 700, category="laboratory"),  # beyond the index's bounded prefix (projections/indexed.py)
    {"resourceType": "Observation", "status": "final", "code": {"text": "no coding"}},
]

#: Criteria the matcher decides in memory: token parameters without a modifier, ``_id``, AND and OR.
DECIDED = [
    [("code", f"{LOINC}|718-7")],
    [("code", "718-7")],
    [("code", "|718-7")],
    [("code", f"{LOINC}|")],
    [("code", f"{LOINC}|4548-4,{LOINC}|718-7")],
    [("code", f"{LOINC}|718-7"), ("status", "final")],
    [("code", f"{LOINC}|718-7"), ("category", f"{CATEGORY}|laboratory")],
    [("category", "laboratory")],
    [("status", "preliminary,final")],
    [("code", f"{LOINC}|{'x' * 700}")],
    [("code", f"{LOINC}|718-7"), ("_count", "5")],  # a result parameter: ignored by the search as by the matcher
    [],  # a topic with no trigger search and no filter: every resource of its type
    [("_count", "5")],
]
#: Criteria left to the search engine: other types, modifiers, chains.
SEARCHED = [
    [("code:not", f"{LOINC}|718-7")],
    [("code:text", "hemoglobin")],
    [("subject.name", "Perez")],
    [("date", "ge2020-01-01")],
    [("code", f"{LOINC}|718-7"), ("value-quantity", "gt5")],
]


def test_in_memory_criteria_agree_with_the_search_engine(services: Services) -> None:
    context = WriteContext(institution="imss", user="test", purpose="TREAT")
    written = [services.application.create(resource, context) for resource in RESOURCES]
    services.projector.catch_up()
    ids = [w.resource_id for w in written]
    # The stored resources, as the matcher reads them from the events (with their id and meta).
    created = [json.loads(w.body or b"{}") for w in written]
    with services.views.read() as tx:
        for params in DECIDED:
            criteria = compile_criteria("Observation", tuple(params))
            assert criteria.decides, params
            searched = set(match(tx, "Observation", [*params, ("_id", ",".join(ids))], limit=len(ids)))
            in_memory = {i for i, resource in zip(ids, created, strict=True) if criteria.matches(i, extract(resource))}
            assert in_memory == searched, params
            assert searched, params  # each criteria matches some of the sample, and not all of it
        for params in DECIDED[:1]:  # and an _id among the criteria
            criteria = compile_criteria("Observation", (*params, ("_id", ids[0])))
            assert [i for i in ids if criteria.matches(i, extract(created[ids.index(i)]))] == [ids[0]]
    for params in SEARCHED:
        assert not compile_criteria("Observation", tuple(params)).decides, params
    # Criteria the search refuses (an unknown parameter, a malformed value) never match, as before.
    for params in ([("no-such-parameter", "1")], [("code", "")], [("code", "a|b|c")]):
        refused = compile_criteria("Observation", tuple(params))
        assert refused.decides and not refused.matches(ids[0], extract(created[0])), params


def _subscribe(services: Services, context: WriteContext, criteria: str) -> str:
    subscription = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "matched in memory",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": UNREACHABLE},
    }
    return services.application.create(subscription, context).resource_id


def test_the_matcher_runs_no_criteria_search_for_token_criteria(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = Services.open(settings, follow=False)  # no delivery thread: this test alone moves the matcher
    try:
        imss = WriteContext(institution="imss", user="test", purpose="TREAT")
        other = WriteContext(institution="issste", user="test", purpose="TREAT")
        hemoglobin = [_subscribe(opened, imss, f"Observation?code={LOINC}|718-7") for _ in range(3)]
        laboratory = _subscribe(opened, imss, f"Observation?category={CATEGORY}|laboratory&status=final")
        matched = [opened.application.create(_observation("718-7"), imss).resource_id for _ in range(2)]
        opened.application.create(_observation("4548-4"), imss)  # matches no subscription
        hidden = opened.application.create(_observation("718-7"), other).resource_id  # another institution's record
        opened.projector.catch_up()
        matcher = opened.main_projectors["subscriptions"]
        assert isinstance(matcher, SubscriptionMatcher)

        statements: list[str] = []
        for tx_class in (db._SQLiteTx, db._PostgresTx):
            for method in ("execute", "executemany", "insert"):
                original = getattr(tx_class, method)

                def counted(self: Any, *args: Any, _original: Any = original, _method: str = method) -> Any:
                    statements.append(f"{_method} {args[0]}")
                    return _original(self, *args)

                monkeypatch.setattr(tx_class, method, counted)
        searches: list[list[tuple[str, str]]] = []

        def criteria_search(tx: Any, resource_type: str, params: list[tuple[str, str]], **options: Any) -> Any:
            searches.append(params)
            return match(tx, resource_type, params, **options)

        monkeypatch.setattr(subscriptions, "match", criteria_search)
        assert matcher.catch_up_within(60) > 0
        monkeypatch.undo()

        # The criteria were decided against each event's index rows: no criteria search ran, and the read
        # policy was one statement for the batch (the search engine took two per distinct criteria).
        assert searches == []
        assert len([s for s in statements if "FROM resources r" in s]) == 1
        # Outbox rows for the matches only (the 3 subscriptions of one criteria share a stream: a row per
        # matched Observation), written in one statement.
        assert [s for s in statements if "subscription_matches" in s] == ["insert subscription_matches"]
        with opened.views.read_primary() as tx:
            for sid in hemoglobin:
                assert [o.focus_id for o in events_between(tx, sid, 1, None)] == matched
                assert [o.event_number for o in events_between(tx, sid, 1, None)] == [1, 2]
            assert events_between(tx, laboratory, 1, None) == []
            assert hidden not in {o.focus_id for sid in hemoglobin for o in events_between(tx, sid, 1, None)}
    finally:
        opened.close()
