"""R4 §2.24.0.2 "string": characters below U+0020 other than tab, carriage return and line feed, and lone
surrogates, are refused at their path, wherever they are (keys included); everything else passes, a literal
backslash followed by ``u`` (which looks like an escape in JSON text) included."""

from __future__ import annotations

from typing import Any

import pytest

from ehr_core.errors import InvalidResource
from ehr_core.resources.validation import validate


def _patient(family: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Ana"]}]}


@pytest.mark.parametrize("character", ["\x00", "\x07", "\x08", "\x0b", "\x0c", "\x0e", "\x1f", "\ud800", "\udfff"])
def test_a_forbidden_character_is_refused_at_its_path(character: str) -> None:
    with pytest.raises(InvalidResource) as refused:
        validate(_patient(f"Pé{character}rez"))
    (issue,) = refused.value.issues
    assert issue.code == "value" and issue.expression == "Patient.name[0].family"
    assert f"U+{ord(character):04X}" in issue.diagnostics


def test_a_forbidden_character_in_a_key_is_refused() -> None:
    with pytest.raises(InvalidResource) as refused:
        validate({"resourceType": "Patient", "name": [{"fam\x01ily": "x"}]})
    assert refused.value.issues[0].code == "value"


@pytest.mark.parametrize("text", ["tab\there", "lines\r\nand more", "a \\u0000 written out", "back\\b\\f", "ñandú 🦤"])
def test_allowed_text_passes(text: str) -> None:
    assert validate(_patient(text)) == "Patient"
