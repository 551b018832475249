"""Hypothesis strategies for hostile FHIR traffic: bodies shaped like FHIR resources but wrong in the ways
real senders get them wrong (wrong types, huge strings, deep nesting, invalid unicode, duplicate keys,
numbers beyond float range, invalid references), invalid search parameters and odd headers.

Each strategy draws a :class:`Sent` — method, path, headers, raw body bytes — so corruption can happen
below the JSON level, where a ``dict`` could not express it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

__all__ = ["Sent", "bodies", "header_sets", "searches", "transactions", "writes"]

TYPES = ["Patient", "Observation", "Encounter", "Condition", "Practitioner", "MedicationRequest", "Basic"]
ELEMENTS = [
    "id",
    "meta",
    "text",
    "extension",
    "modifierExtension",
    "contained",
    "identifier",
    "active",
    "name",
    "telecom",
    "gender",
    "birthDate",
    "deceasedBoolean",
    "address",
    "status",
    "code",
    "subject",
    "encounter",
    "effectiveDateTime",
    "valueQuantity",
    "valueString",
    "component",
    "reference",
    "system",
    "value",
    "url",
    "valueDecimal",
    "_birthDate",
]
NUMBERS = ["1e400", "-1e400", "1e-400", "123456789012345678901234567890", "-0", "0.0000", "1E+308", "4.9e-324"]
REFERENCES = [
    "Patient/",
    "Patient",
    "/Patient/1",
    "Patient/../../etc/passwd",
    "Patient/a b",
    "urn:uuid:not-a-uuid",
    "urn:uuid:00000000-0000-4000-8000-000000000000",
    "Patient?identifier=",
    "Patient?identifier=a|b",
    "#missing",
    "http://elsewhere.example/fhir/Patient/1",
    "Nope/1",
    "Patient/" + "9" * 70,
    "",
]


@dataclass
class Sent:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        body = self.body[:300] if self.body is not None else b""
        return f"{self.method} {self.path} headers={self.headers} body[:300]={body!r}"


# -- JSON values shaped like FHIR -----------------------------------------------------------------------------

texts = st.text(max_size=20) | st.sampled_from(["", " ", "\u0000", "\u202e", "ñandú", "\U0001f600", "\ufeff"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(ELEMENTS) | texts, inner, max_size=4),
    max_leaves=12,
)


def _plausible(kind: str) -> dict[str, Any]:
    """A valid resource of ``kind``, so some writes succeed and the store has something to keep consistent."""
    if kind == "Patient":
        return {"resourceType": kind, "name": [{"family": "Fuzz", "given": ["Ana"]}], "birthDate": "1980-02-29"}
    if kind == "Observation":
        return {
            "resourceType": kind,
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "valueQuantity": {"value": 70.5, "unit": "kg"},
        }
    if kind == "Condition":
        return {"resourceType": kind, "subject": {"reference": "Patient/fuzz-1"}}
    return {"resourceType": kind}


@st.composite
def resources(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from([*TYPES, "patient", "OperationOutcome", "", "Bundle"]))
    resource = _plausible(kind)
    if draw(st.integers(0, 2)) == 0:  # a third stay valid: the store must fill up to be checked
        return resource
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(ELEMENTS))
        resource[name] = draw(
            values
            | st.sampled_from(REFERENCES).map(lambda r: {"reference": r})
            | st.sampled_from(REFERENCES).map(lambda r: [{"reference": r}])
        )
    if draw(st.booleans()):
        resource["subject"] = {"reference": draw(st.sampled_from(REFERENCES))}
    return resource


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def bodies(draw: st.DrawFn, resource: st.SearchStrategy[dict[str, Any]] | None = None) -> bytes:
    """The bytes of a body: a FHIR-shaped resource, then maybe corrupted below the JSON level."""
    value = draw(resource if resource is not None else resources())
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    how = draw(
        st.sampled_from(
            [
                "as-is",
                "as-is",
                "as-is",
                "duplicate-key",
                "invalid-utf8",
                "surrogate",
                "nul",
                "number",
                "nesting",
                "huge",
                "truncated",
            ]
        )
    )
    head = '{"resourceType":' + json.dumps(value.get("resourceType", "Patient"))
    if how == "duplicate-key":
        inner = text[1:-1]
        text = '{"id":"a",' + inner + ("," if inner else "") + '"id":"b"}'
    elif how == "surrogate":
        text = head + ',"text":{"status":"generated","div":"\\ud800\\udfff\\udc00"}}'
    elif how == "nul":
        control = draw(st.sampled_from(["\\u0000", "\\u0001", "\\u001f", "\\u007f"]))
        text = head + ',"name":[{"family":"a' + control + 'b"}],"identifier":[{"value":"' + control + '"}]}'
    elif how == "number":
        text = (
            head
            + f',"valueDecimal":{draw(st.sampled_from(NUMBERS))}'
            + f',"multipleBirthInteger":{draw(st.sampled_from(NUMBERS))}}}'
        )
    elif how == "nesting":
        depth = draw(st.sampled_from([58, 59, 60, 61, 120, 300, 5000, 200_000]))
        text = head + f',"extension":{_nested(depth)}}}'
    elif how == "huge":
        size = draw(st.sampled_from([70_000, 200_000, 300_000]))
        text = head + ',"text":{"status":"generated","div":"<div>' + "x" * size + '</div>"}}'
    elif how == "truncated":
        text = text[: draw(st.integers(0, max(len(text) - 1, 0)))]
    data = text.encode("utf-8")
    if how == "invalid-utf8":
        at = draw(st.integers(0, len(data)))
        data = (
            data[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
            + data[at:]
        )
    return data


# -- headers ---------------------------------------------------------------------------------------------------

_header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)
HEADER_VALUES = {
    "content-type": ["application/fhir+json", "application/json", "text/plain", "application/xml", "", "*/*;;;"],
    "if-match": ['W/"1"', 'W/"0"', 'W/"99999999999999999999999"', '"', "W/", "*", 'W/"-1"', 'W/"²"'],
    "if-none-exist": ["identifier=a|b", "", "name:bogus=x", "_count=abc", "=", "&&"],
    "prefer": ["return=minimal", "return=OperationOutcome", "handling=strict", "respond-async", "return="],
    "accept": ["application/fhir+json", "application/xml", "text/html", "*/*", "application/fhir+json;q=abc"],
    "x-ehr-institution": ["IMSS", "", "ISSSTE" * 30],
    "x-ehr-purpose": ["TREAT", "ETREAT", "", "no-such-purpose"],
    "x-request-id": ["r" * 500, "", "ñ"],
}


@st.composite
def header_sets(draw: st.DrawFn, content_type: bool = True) -> dict[str, str]:
    headers: dict[str, str] = {}
    if content_type:
        headers["content-type"] = "application/fhir+json"
    for name in draw(st.lists(st.sampled_from(sorted(HEADER_VALUES)), max_size=3, unique=True)):
        # Leading or trailing blanks are not part of a field value (RFC 9110 §5.5): h11 refuses to send them.
        headers[name] = draw(st.sampled_from(HEADER_VALUES[name]) | _header_text).strip(" \t")
    return headers


def _ids() -> st.SearchStrategy[str]:
    return st.sampled_from(
        ["fuzz-1", "a", "A.b-1", "x" * 64, "x" * 65, "..", "%2e%2e", "%00", "$everything"]
    ) | st.text(max_size=10).map(lambda text: quote(text, safe=""))


@st.composite
def writes(draw: st.DrawFn) -> Sent:
    """create, update, patch or delete, with a hostile body and headers."""
    method = draw(st.sampled_from(["POST", "PUT", "PATCH", "DELETE"]))
    kind = draw(st.sampled_from(TYPES))
    headers = draw(header_sets())
    if method == "POST":
        if draw(st.integers(0, 2)) == 0:  # a clean create now and then, so the store fills and is checked
            clean = json.dumps(_plausible(kind)).encode()
            return Sent(method, f"/{kind}", clean, {"content-type": "application/fhir+json"})
        return Sent(method, f"/{kind}", draw(bodies()), headers)
    rid = draw(_ids())
    if method == "DELETE":
        return Sent(method, f"/{kind}/{rid}", None, headers)
    if method == "PATCH":
        patch = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "op": st.sampled_from(["add", "replace", "remove", "move", "copy", "test", "bogus"]),
                        "path": st.sampled_from(["/name", "/id", "/", "", "/meta/versionId", "/name/-", "/a~2b"]),
                    },
                    optional={"value": values, "from": st.sampled_from(["/name", "/x"])},
                ),
                max_size=3,
            )
        )
        headers["content-type"] = draw(
            st.sampled_from(["application/json-patch+json", "application/merge-patch+json", "application/fhir+json"])
        )
        body = json.dumps(patch).encode() if draw(st.booleans()) else draw(bodies())
        return Sent(method, f"/{kind}/{rid}", body, headers)
    resource = draw(resources())
    if draw(st.booleans()):
        resource["id"] = rid
    return Sent(method, f"/{kind}/{rid}", draw(bodies(st.just(resource))), headers)


@st.composite
def transactions(draw: st.DrawFn) -> Sent:
    """transaction and batch Bundles: wrong entries, bad fullUrls and references, too many entries."""
    entries = []
    for _ in range(draw(st.sampled_from([0, 1, 2, 3, 41]))):
        method = draw(st.sampled_from(["POST", "PUT", "DELETE", "GET", "PATCH", "HEAD", "BOGUS"]))
        url = draw(st.sampled_from(["Patient", "Patient/fuzz-1", "Observation", "Patient?name=x", "", "Nope/1"]))
        entry: dict[str, Any] = {"request": {"method": method, "url": url}}
        if draw(st.booleans()):
            entry["fullUrl"] = draw(st.sampled_from(REFERENCES))
        if method in ("POST", "PUT"):
            entry["resource"] = draw(resources())
        if draw(st.integers(0, 5)) == 0:
            entry = draw(values)
        entries.append(entry)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": draw(st.sampled_from(["transaction", "batch", "collection", "document", "", None])),
        "entry": entries,
    }
    return Sent("POST", "", draw(bodies(st.just(bundle))), draw(header_sets()))


SEARCH_PARAMETERS = [
    "name",
    "family",
    "birthdate",
    "gender",
    "identifier",
    "_id",
    "_lastUpdated",
    "subject",
    "patient",
    "code",
    "date",
    "value-quantity",
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_summary",
    "_elements",
    "_total",
    "_cursor",
    "_page_before",
    "_since",
    "_at",
    "_format",
    "_has:Observation:subject:code",
    "subject.name",
    "bogus",
]
MODIFIERS = [
    "",
    ":exact",
    ":contains",
    ":missing",
    ":not",
    ":above",
    ":below",
    ":iterate",
    ":Patient",
    ":text",
    ":bogus",
]
SEARCH_VALUES = [
    "",
    "gt2020",
    "le1980-13-45",
    "eq1e400",
    "ap-1",
    "2020-02-30T25:61:00Z",
    "99999999999999999999999",
    "-1",
    "²",
    "http://loinc.org|29463-7",
    "|",
    "||||",
    "Patient/",
    "Patient/fuzz-1",
    "*",
    "Patient:subject",
    "true",
    "5.4|http://unitsofmeasure.org|kg",
    "\u0000",
    "x" * 3000,
]


@st.composite
def searches(draw: st.DrawFn) -> Sent:
    """Type and system searches, history and reads, with invalid parameters, values and headers."""
    kind = draw(st.sampled_from(TYPES))
    pairs = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(SEARCH_PARAMETERS)) + draw(st.sampled_from(MODIFIERS))
        value = draw(st.sampled_from(SEARCH_VALUES) | st.text(max_size=12))
        pairs.append(f"{quote(name, safe=':')}={quote(value, safe='|:,')}")
    query = "&".join(pairs)
    where = draw(
        st.sampled_from(
            [
                f"/{kind}",
                f"/{kind}/_history",
                "/_history",
                f"/{kind}/fuzz-1",
                f"/{kind}/fuzz-1/_history",
                f"/{kind}/fuzz-1/_history/1",
                f"/{kind}/fuzz-1/_history/99999999999999999999",
                "/Patient/fuzz-1/$everything",
                "/",
                "/AuditEvent",
                "/Provenance",
            ]
        )
    )
    if draw(st.integers(0, 4)) == 0:
        return Sent("POST", f"/{kind}/_search", query.encode(), {"content-type": "application/x-www-form-urlencoded"})
    method = draw(st.sampled_from(["GET", "GET", "GET", "HEAD"]))
    return Sent(method, f"{where}?{query}" if query else where, None, draw(header_sets(content_type=False)))
