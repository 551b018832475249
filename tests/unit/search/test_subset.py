"""``_summary`` and ``_elements`` (R4 §3.1.1.5.8.1): what stays, and the SUBSETTED tag."""

from __future__ import annotations

from typing import Any

from projections.search.subset import SUBSETTED, subset

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p",
    "meta": {"versionId": "1"},
    "text": {"status": "generated", "div": "<div xmlns='http://www.w3.org/1999/xhtml'>x</div>"},
    "name": [{"family": "Gómez"}],
    "birthDate": "1956-06-26",
    "_birthDate": {"extension": []},
    "maritalStatus": {"text": "casada"},
    "contact": [{"name": {"family": "López"}}],
    "deceasedBoolean": False,
}


def test_summary_true_keeps_summary_elements() -> None:
    out = subset(PATIENT, "true", None)
    assert out is not None
    assert set(out) == {"resourceType", "id", "meta", "name", "birthDate", "_birthDate", "deceasedBoolean"}
    assert SUBSETTED in out["meta"]["tag"] and out["meta"]["versionId"] == "1"


def test_summary_text_and_data() -> None:
    text = subset(PATIENT, "text", None)
    assert text is not None and set(text) == {"resourceType", "id", "meta", "text"}
    data = subset(PATIENT, "data", None)
    assert data is not None and "text" not in data and "contact" in data
    assert subset(PATIENT, "false", None) is None and subset(PATIENT, None, None) is None


def test_elements_keep_the_named_ones_and_choices() -> None:
    out = subset(PATIENT, None, ["birthDate", "Patient.deceased"])
    assert out is not None
    assert set(out) == {"resourceType", "id", "meta", "birthDate", "_birthDate", "deceasedBoolean"}
