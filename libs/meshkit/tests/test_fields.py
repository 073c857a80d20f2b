from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from meshkit.fields import StorableStr

STORABLE = TypeAdapter(StorableStr)


@pytest.mark.parametrize("text", ["plain", "émoji 🎉", "tab\tand\nnewline", ""])
def test_storable_text_passes_unchanged(text: str) -> None:
    assert STORABLE.validate_python(text) == text


@pytest.mark.parametrize("text", ["nul\x00inside", "\x00", "lone \ud800 surrogate", "\udfff"])
def test_nul_and_unpaired_surrogates_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        STORABLE.validate_python(text)


def test_a_json_surrogate_pair_is_one_character_and_passes() -> None:
    assert STORABLE.validate_json('"\\ud83c\\udf89"') == "🎉"
