"""Spanish analysis and text extraction of the full-text index (``_text``, ``_content``), no database."""

from __future__ import annotations

from projections.search.fulltext import content_text, narrative_text
from projections.search.spanish import STOP_WORDS, terms


def test_terms_fold_drop_stop_words_and_stem() -> None:
    assert terms("Dolor TORÁCICO en el pecho") == ["dolor", "torac", "pech"]
    assert terms("dolores torácicos") == terms("DOLOR TORACICO") == ["dolor", "torac"]
    assert terms("de la que el en y") == []
    assert terms("TA 120/80 mmHg, niño_sano") == ["ta", "120", "80", "mmhg", "nin", "san"]
    assert "esta" in STOP_WORDS and "está" not in STOP_WORDS  # folded like the text


def test_narrative_is_the_div_without_markup() -> None:
    resource = {
        "resourceType": "Condition",
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml"><b>Dolor</b>&amp;fiebre</div>',
        },
        "note": [{"text": "nota"}],
    }
    assert narrative_text(resource) == "Dolor &fiebre"
    assert narrative_text({"resourceType": "Patient"}) == ""


def test_content_is_every_string_value_but_binary_data() -> None:
    resource = {
        "resourceType": "DocumentReference",
        "status": "current",
        "text": {"status": "generated", "div": "<div><p>resumen</p></div>"},
        "content": [{"attachment": {"data": "aGVsbG8=", "title": "Nota de evolución"}}],
        "extension": [{"url": "http://example.org/x", "valueInteger": 3}],
    }
    text = content_text(resource)
    for expected in ("current", "resumen", "Nota de evolución", "http://example.org/x"):
        assert expected in text
    assert "aGVsbG8" not in text and "DocumentReference" not in text and "<p>" not in text
