"""Spanish analysis and text extraction of the full-text index (``_text``, ``_content``), no database."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from projections.search.fold import fold
from projections.search.fulltext import content_text, narrative_text
from projections.search.spanish import _WORD, STOP_WORDS, _stem, terms


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


@given(st.text(alphabet=st.sampled_from("aeiouñáéíóúüÁÉÑ ABC\u0301\u00a8\u00a0\tﬁ½_-.,1"), max_size=40))
def test_folding_chunk_by_chunk_equals_folding_the_whole_text(text: str) -> None:
    reference = [_stem(w) for w in _WORD.findall(fold(text)) if w not in STOP_WORDS]
    assert terms(text) == reference


def test_the_c_stemmer_stems_as_the_snowball_reference() -> None:
    """PyStemmer (C) is what ``snowballstemmer`` hands out once installed: a tenth of the memory of the
    36 pure-Python stemmers it otherwise imports. The terms already indexed on SQLite were stemmed by
    either: both must give the same stem for every word the clinical texts and the corpus hold."""
    from snowballstemmer.spanish_stemmer import SpanishStemmer

    from projections.search import spanish

    assert type(spanish._STEMMER).__module__ == "Stemmer", "PyStemmer is not installed"
    reference = SpanishStemmer()
    text = """dolores torácicos niños sanos hipertensión arterial diabéticos embarazadas vacunación consultas
        urgencias hospitalización medicamentos prescripciones alérgicas crónicas corriendo caminaban rápidamente
        organizaciones institucionales derechohabientes"""
    words = text.split()
    words += [fold(word) for word in words]
    assert [_stem.__wrapped__(word) for word in words] == [reference.stemWord(word) for word in words]
