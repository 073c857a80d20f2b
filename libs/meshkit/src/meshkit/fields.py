"""Field types for the services' API schemas."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _storable(value: str) -> str:
    # JSON may carry both, but PostgreSQL text and JSONB cannot hold NUL, and a lone surrogate
    # cannot be encoded as UTF-8: refused here as a 422 instead of failing in the database.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no unpaired surrogates)") from None
    return value


StorableStr = Annotated[str, AfterValidator(_storable)]
"""Text that can be stored and hashed: no NUL characters, no unpaired surrogates."""
